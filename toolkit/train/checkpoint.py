"""The run directory a training run writes, and reading it back.

    config.json    the full run configuration (re-used by --resume)
    spec.json      format version, task, model config, input spec (features: mean/std), output spec
    vocab.json     token inputs only: the vocabulary, id = position
    labels.json    classify/tag only: label names, id = position
    target_vocab.json  seq2seq only: the target vocabulary, id = position
    model.pt       weights of the best epoch so far (what export takes)
    state.pt       everything needed to resume exactly: weights, optimizer, scheduler, scaler,
                   RNG states, epoch, early-stopping counters, history
    metrics.json   per-epoch history and the final summary

Every file is written to a temporary name and renamed into place, so an interrupted run never
leaves a half-written file; the directory always holds the last completed epoch.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from toolkit.core.atomic import atomic_write_bytes, atomic_write_json
from toolkit.core.config import Config
from toolkit.core.data.types import InputSpec, OutputSpec
from toolkit.core.data.vocab import Vocabulary
from toolkit.core.errors import CheckpointError, ConfigError
from toolkit.core.jsontext import check_format
from toolkit.models.model import build_model

FORMAT = "rnnkit-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("config.json", "spec.json", "model.pt")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def fingerprint(path: str | Path | None) -> str | None:
    """sha256 over a data file, or over every file of a directory (names and contents)."""
    if path is None:
        return None
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_run_files(out: Path, config: Config, input_spec: InputSpec, output_spec: OutputSpec) -> None:
    """The files that do not change during a run: config, spec, vocabulary, labels."""
    atomic_write_json(out / "config.json", config.to_dict())
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "task": config.task,
        "level": config.data.level,
        "model": config.to_dict()["model"],
        "input": input_spec.to_dict(),
        "output": output_spec.to_dict(),
    }
    atomic_write_json(out / "spec.json", spec)
    if input_spec.vocab is not None:
        atomic_write_json(out / "vocab.json", input_spec.vocab.to_json())
    if output_spec.labels is not None:
        atomic_write_json(out / "labels.json", list(output_spec.labels))
    if output_spec.target_vocab is not None:
        atomic_write_json(out / "target_vocab.json", output_spec.target_vocab.to_json())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def read_specs(run_dir: str | Path) -> tuple[Config, InputSpec, OutputSpec]:
    """Read config, input and output specs of a run directory, checking format and version."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: not a directory (expected a run directory written by `rnnkit train`)")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{run_dir}: not a complete rnnkit run directory; missing {', '.join(missing)} "
            f"(a run directory holds {', '.join(REQUIRED)})"
        )
    spec = read_json(run_dir / "spec.json")
    check_format(spec, str(run_dir / "spec.json"), FORMAT, FORMAT_VERSION, "checkpoint spec", CheckpointError)
    try:
        config = Config.from_dict(read_json(run_dir / "config.json"), where=str(run_dir / "config.json")).validate()
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    inp = dict(spec["input"])
    vocab = None
    if inp["kind"] == "tokens":
        vocab = Vocabulary(read_json(run_dir / "vocab.json"))
    fields = ("num_features", "mean", "std", "columns")
    input_spec = InputSpec(kind=inp["kind"], vocab=vocab, **{k: inp.get(k) for k in fields})
    out = dict(spec["output"])
    if out.get("labels") is not None or (run_dir / "labels.json").is_file():
        out["labels"] = read_json(run_dir / "labels.json")
    if out.pop("target_vocab_size", None) is not None:
        out["target_vocab"] = Vocabulary(read_json(run_dir / "target_vocab.json"))
    output_spec = OutputSpec(**out)
    return config, input_spec, output_spec


def load_model(run_dir: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, Config, InputSpec, OutputSpec]:
    """Rebuild the best model of a run directory (eval mode)."""
    run_dir = Path(run_dir)
    config, input_spec, output_spec = read_specs(run_dir)
    model = build_model(config.model, input_spec, output_spec)
    try:
        weights = torch.load(run_dir / "model.pt", map_location=map_location, weights_only=True)
        model.load_state_dict(weights)
    except Exception as e:  # unpickling and shape errors come in many types
        raise CheckpointError(f"{run_dir / 'model.pt'}: cannot load weights ({e})") from None
    return model.eval(), config, input_spec, output_spec
