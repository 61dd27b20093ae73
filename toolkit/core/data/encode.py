"""Raw records -> specs (vocabulary, labels, normalisation) and encoded Examples / streams.

`build_specs` derives the specs from the training records only. `encode_examples` and
`encode_stream` apply given specs, so the runtime encodes inference input with a saved
vocabulary and label set: unknown tokens become <unk> (counted), and a label or tag the model
never saw is a DataError naming the known ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from toolkit.core.data.records import Record, Records, preview
from toolkit.core.data.types import PAD_TARGET, Example, InputSpec, OutputSpec, StreamDataset
from toolkit.core.data.vocab import EOS_ID, UNK_ID, Vocabulary
from toolkit.core.errors import DataError


class Encoded(list):
    """A list[Example] that also counts the input tokens and how many became <unk>."""

    def __init__(self, examples: Iterable[Example] = (), unknown_tokens: int = 0, total_tokens: int = 0):
        super().__init__(examples)
        self.unknown_tokens = unknown_tokens
        self.total_tokens = total_tokens

    @property
    def unknown_rate(self) -> float:
        return self.unknown_tokens / self.total_tokens if self.total_tokens else 0.0


# ----------------------------------------------------------------------------------------------- labels


FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_float32(values: np.ndarray, fail, what: str, axes: tuple[str, ...]) -> np.ndarray:
    """float64 values -> float32, refusing one beyond float32's range: the model computes in
    float32, where it would be infinity (and every loss NaN). `fail(message)` makes the error,
    `axes` name the positions, e.g. ("step", "feature")."""
    big = np.abs(values) > FLOAT32_MAX
    if big.any():
        first = np.argwhere(big)[0]
        at = ", ".join(f"{axis} {i + 1}" for axis, i in zip(axes, first, strict=False))
        raise fail(
            f"{what} {values[tuple(first)]:.6g} at {at} is beyond float32's range (±{FLOAT32_MAX:.4g}), in which "
            "the model computes; rescale it (e.g. to other units or a log scale)"
        )
    return values.astype(np.float32)


def _as_number(label: str) -> float | None:
    try:
        x = float(label)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def order_labels(labels: Iterable[str]) -> list[str]:
    """Distinct class labels, sorted numerically when all parse as numbers, else as strings."""
    distinct = set(labels)
    numbers = {label: _as_number(label) for label in distinct}
    if distinct and all(v is not None for v in numbers.values()):
        return sorted(distinct, key=lambda label: (numbers[label], label))
    return sorted(distinct)


def order_tags(tags: Iterable[str]) -> list[str]:
    """Distinct tags sorted, with "O" (outside) first when present."""
    distinct = set(tags)
    rest = sorted(distinct - {"O"})
    return ["O", *rest] if "O" in distinct else rest


def label_universe(records: Records) -> list[str]:
    """The label set of classify/tag records: the .ts header's declared order, else sorted."""
    if records.labels is not None:
        return list(records.labels)
    if records.task == "classify":
        return order_labels(r.target for r in records if r.target is not None)
    return order_tags(t for r in records if r.target is not None for t in r.target)


# ----------------------------------------------------------------------------------------------- columns


def resolve_columns(
    records: Records | Sequence[Record], target_columns: Sequence[str] | None, columns: Sequence[str] | None = None
) -> list[int]:
    """Indices of the csv target columns among the feature columns (`columns`, default the
    file's own; all of them when no target columns are named)."""
    record = records[0]
    columns = list(columns if columns is not None else record.columns or [])
    if not target_columns:
        return list(range(len(columns)))
    skipped = getattr(records, "skipped_columns", [])
    out = []
    for name in target_columns:
        if name not in columns:
            why = f" ('{name}' was skipped: its values are not numbers)" if name in skipped else ""
            raise DataError(
                f"unknown target column '{name}'{why}; available numeric columns: {preview(columns)}",
                path=record.path,
            )
        out.append(columns.index(name))
    return out


# ----------------------------------------------------------------------------------------------- specs


def _mean_std(values: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-column mean and (population) std of float [N, D]; a constant column gets std 1.0."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return [float(x) for x in mean], [float(x) for x in std]


def build_specs(
    train: Records,
    *,
    min_freq: int = 1,
    max_vocab: int | None = None,
    labels: Sequence[str] | None = None,
    target_columns: Sequence[str] | None = None,
    horizon: int = 1,
) -> tuple[InputSpec, OutputSpec]:
    """InputSpec and OutputSpec from the training records only.

    Tokens: a vocabulary (min_freq, max_vocab). Features: per-feature mean/std over all training
    steps. classify/tag: `labels` if given (e.g. from the whole training file before a split),
    else the declared .ts order or sorted labels ("O" first for tags). regress: per-target-dim
    mean/std; csv series are per step (a target at every position of the stream).
    """
    task = train.task
    records = train.records
    if not records:
        raise DataError("no training examples", path=train.path)
    if train.kind == "tokens":
        vocab = Vocabulary.build((r.tokens for r in records), min_freq=min_freq, max_size=max_vocab)
        input_spec = InputSpec(kind="tokens", vocab=vocab)
    else:
        steps = np.concatenate([r.features for r in records], axis=0)
        mean, std = _mean_std(steps)
        columns = records[0].columns if train.format == "csv" else None
        input_spec = InputSpec(kind="features", num_features=int(steps.shape[1]), mean=mean, std=std, columns=columns)

    if task in ("classify", "tag"):
        output = OutputSpec(task=task, labels=list(labels) if labels is not None else label_universe(train))
    elif task == "lm":
        output = OutputSpec(task="lm")
    elif task == "seq2seq":  # the target side's own vocabulary (same min_freq and max_vocab)
        targets = (r.target for r in records if r.target is not None)
        target_vocab = Vocabulary.build(targets, min_freq=min_freq, max_size=max_vocab)
        output = OutputSpec(task="seq2seq", target_vocab=target_vocab)
    elif train.format == "csv":
        cols = resolve_columns(train, target_columns)
        values = np.concatenate([r.features[horizon:, cols] for r in records], axis=0)
        if not len(values):
            values = np.concatenate([r.features[:, cols] for r in records], axis=0)
        mean, std = _mean_std(values)
        output = OutputSpec(task="regress", num_targets=len(cols), per_step=True, target_mean=mean, target_std=std)
    else:
        targets = [r.target for r in records if r.target is not None]
        if not targets:
            raise DataError("no regression targets in the training data", path=train.path)
        per_step = targets[0].ndim == 2
        values = np.concatenate(targets, axis=0) if per_step else np.stack(targets)
        mean, std = _mean_std(values)
        output = OutputSpec(
            task="regress", num_targets=int(values.shape[1]), per_step=per_step, target_mean=mean, target_std=std
        )
    return input_spec, output


# ----------------------------------------------------------------------------------------------- examples


def _inputs(record: Record, spec: InputSpec, stats: Encoded) -> np.ndarray:
    if record.tokens is not None:
        if spec.kind != "tokens":
            raise record.error(f"this model reads {spec.num_features} features per step, but the input has tokens")
        ids = spec.vocab.encode(record.tokens)
        stats.total_tokens += len(ids)
        stats.unknown_tokens += int(np.count_nonzero(ids == UNK_ID))
        return ids
    if spec.kind != "features":
        raise record.error("this model reads tokens, but the input has features")
    width = record.features.shape[1]
    if width != spec.num_features:
        raise record.error(
            f"expected {spec.num_features} features per step (as in the training data), got {width} at step 1"
        )
    return as_float32(record.features, record.error, "feature", ("step", "feature"))


def _target(record: Record, output: OutputSpec, index: dict[str, int] | None):
    target = record.target
    if target is None:
        return None
    if output.task == "seq2seq":  # target ids and <eos> (unknown units -> <unk>)
        return np.append(output.target_vocab.encode(target), EOS_ID).astype(np.int64)
    if output.task == "classify":
        if target not in index:
            raise record.error(
                f"label {target!r} does not occur in the training data, so the model cannot predict it; "
                f"known labels: {preview(output.labels)}"
            )
        return index[target]
    if output.task == "tag":
        ids = np.empty(len(target), dtype=np.int64)
        for t, tag in enumerate(target):
            i = index.get(tag)
            if i is None:
                raise record.error(
                    f"tag {tag!r} at step {t + 1} does not occur in the training data, so the model cannot predict "
                    f"it; known tags: {preview(output.labels)}"
                )
            ids[t] = i
        return ids
    per_step = target.ndim == 2
    if per_step != output.per_step:
        want = "per-step (one list per step)" if output.per_step else "per-sequence (a number or flat list)"
        raise record.error(f"expected a {want} target, as in the training data")
    if target.shape[-1] != output.num_targets:
        raise record.error(
            f"expected {output.num_targets} target values (as in the training data), got {target.shape[-1]}"
        )
    return as_float32(target, record.error, "target", ("step", "value") if per_step else ("value",))


def encode_examples(records: Iterable[Record], input_spec: InputSpec, output_spec: OutputSpec) -> Encoded:
    """Records -> Examples with the given specs (training, validation or inference input).

    Inputs: token ids (unknown -> <unk>, counted in the result's `unknown_tokens`) or float32
    features (raw: the model normalises). Targets: label id, tag ids, or raw float32 values
    (not normalised); None where the record has none.
    """
    index = {label: i for i, label in enumerate(output_spec.labels)} if output_spec.labels is not None else None
    out = Encoded()
    for record in records:
        inputs = _inputs(record, input_spec, out)
        out.append(Example(inputs=inputs, target=_target(record, output_spec, index), source=record.source))
    return out


# ----------------------------------------------------------------------------------------------- streams


def encode_stream(
    records: Records,
    input_spec: InputSpec,
    output_spec: OutputSpec,
    *,
    target_columns: Sequence[str] | None = None,
    horizon: int = 1,
    require_target: bool = True,
) -> StreamDataset:
    """Text or csv records -> one StreamDataset.

    lm: the files' tokens concatenated; inputs = ids[:-1], targets = ids[1:]. csv: inputs =
    rows[:-horizon] (all feature columns), targets = rows[horizon:, target columns]. With
    require_target=False every position is kept as input; positions whose target lies past the
    end get PAD_TARGET (lm) or NaN (csv).
    """
    if records.format == "text":
        if input_spec.kind != "tokens":
            raise DataError("this model reads features, but the input is text", path=records.path)
        ids = np.concatenate([input_spec.vocab.encode(r.tokens) for r in records]) if len(records) else np.zeros(0)
        ids = ids.astype(np.int64)
        if not require_target:
            return StreamDataset(inputs=ids, targets=np.append(ids[1:], PAD_TARGET).astype(np.int64))
        if len(ids) < 2:
            raise DataError(f"too short: {len(ids)} token(s); a language model needs at least 2", path=records.path)
        return StreamDataset(inputs=ids[:-1], targets=ids[1:])

    if records.format != "csv":
        raise DataError(f"{records.format} data is not a stream (expected text or csv)", path=records.path)
    record = records[0]
    values, columns = _by_name(record, input_spec.columns)
    if values.shape[1] != input_spec.num_features:
        raise DataError(
            f"expected {input_spec.num_features} numeric columns (as in the training data), got {values.shape[1]}: "
            f"{preview(record.columns)}",
            path=record.path,
        )
    cols = resolve_columns(records, target_columns, columns)
    if output_spec.num_targets is not None and len(cols) != output_spec.num_targets:
        raise DataError(
            f"expected {output_spec.num_targets} target columns (as in the training data), got {len(cols)}",
            path=record.path,
        )
    values = as_float32(values, lambda m: DataError(m, path=record.path), "value", ("data row", "column"))
    if not require_target:
        targets = np.full((len(values), len(cols)), np.nan, dtype=np.float32)
        known = max(0, len(values) - horizon)
        targets[:known] = values[horizon:, cols]
        return StreamDataset(inputs=values.astype(np.float32), targets=targets)
    if len(values) <= horizon:
        raise DataError(
            f"too short: {len(values)} row(s); forecasting {horizon} step(s) ahead needs at least {horizon + 1}",
            path=record.path,
        )
    return StreamDataset(inputs=values[:-horizon].astype(np.float32), targets=values[horizon:, cols].astype(np.float32))


def _by_name(record: Record, names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """A csv series' values with its columns in the model's order (`names`, as trained), so a file
    whose columns come in another order is read right; without names (a model from before they
    were recorded), the file's own order."""
    columns = list(record.columns or [])
    if names is None:
        return record.features, columns
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataError(
            f"no column(s) {preview(missing)}: the model reads the numeric columns {preview(list(names))} "
            f"(by name, in any order); this file has {preview(columns)}",
            path=record.path,
        )
    return record.features[:, [columns.index(n) for n in names]], list(names)
