"""Per-class loss weights for classify and tag (`train.class_weight`).

- `none`: every class weighs 1.
- `balanced`: class c weighs n / (K * n_c) over the training targets (scikit-learn's
  "balanced"), so a rare class counts as much in the loss as a frequent one.
- a JSON file `{"label": weight, ...}`: the labels named get those weights, the others 1.

Weights are scaled so that their mean over the training targets is 1: the loss keeps its scale
(and the learning rate its meaning), and a summed loss divided by the number of targets is
still the weighted mean over the epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from toolkit.core.data.types import PAD_TARGET, SequenceDataset
from toolkit.core.errors import ConfigError

MAX_FILE_BYTES = 1 << 20


def class_weights(setting: str, task: str, labels: list[str] | None, train) -> np.ndarray | None:
    """float32 [K] weights for the task's classes, or None for `none`."""
    if setting == "none":
        return None
    if task not in ("classify", "tag") or not labels or not isinstance(train, SequenceDataset):
        raise ConfigError(
            f"train.class_weight {setting!r}: class weights apply to classify and tag only (task is {task}); "
            "use --class-weight none"
        )
    counts = _counts(task, len(labels), train)
    if setting == "balanced":
        weights = np.ones(len(labels))
        seen = counts > 0  # a class absent from training adds nothing to the loss anyway
        weights[seen] = counts.sum() / (seen.sum() * counts[seen])
    else:
        weights = _from_file(Path(setting), labels)
    mean = float((weights * counts).sum() / max(counts.sum(), 1))
    return (weights / mean).astype(np.float32)


def _counts(task: str, k: int, train: SequenceDataset) -> np.ndarray:
    if task == "classify":
        ids = np.array([ex.target for ex in train.examples], dtype=np.int64)
    else:
        ids = np.concatenate([np.asarray(ex.target, dtype=np.int64) for ex in train.examples])
        ids = ids[ids != PAD_TARGET]
    return np.bincount(ids, minlength=k).astype(np.float64)


def _from_file(path: Path, labels: list[str]) -> np.ndarray:
    where = f"train.class_weight {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file; give none, balanced, or a JSON file {{label: weight}}")
    with path.open("rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_FILE_BYTES} bytes; expected a JSON object {{label: weight}}")
    try:
        given = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: not valid UTF-8 JSON ({e}); expected {{label: weight}}") from None
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: expected a JSON object {{label: weight}}, got {type(given).__name__}")
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise ConfigError(f"{where}: unknown label(s) {', '.join(map(repr, unknown[:10]))}; known: {', '.join(labels)}")
    weights = np.ones(len(labels))
    for label, value in given.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise ConfigError(f"{where}: weight of {label!r} must be a positive finite number, got {value!r}")
        weights[labels.index(label)] = float(value)
    return weights


def describe(weights: np.ndarray | None, labels: list[str] | None) -> str | None:
    """One log line naming the weights (None when there are none)."""
    if weights is None or not labels:
        return None
    shown = ", ".join(f"{label} {w:.3g}" for label, w in zip(labels[:12], weights[:12], strict=False))
    more = f", ... ({len(labels)} classes)" if len(labels) > 12 else ""
    return f"class weights (mean 1 over the training targets): {shown}{more}"
