"""`load_data`: a config's data section -> train/val splits plus the specs a model is built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.core import normalize, tasks
from toolkit.core.config import Config
from toolkit.core.data.encode import build_specs, encode_examples, encode_stream, label_universe
from toolkit.core.data.formats import read_records
from toolkit.core.data.records import Records, preview
from toolkit.core.data.split import split_sequences, split_stream
from toolkit.core.data.types import InputSpec, OutputSpec, Prepared, SequenceDataset, StreamDataset
from toolkit.core.data.vocab import UNK_ID
from toolkit.core.errors import ConfigError, DataError


def encode_records(
    records: Records, config: Config, input_spec: InputSpec, output_spec: OutputSpec, require_target: bool = True
) -> SequenceDataset | StreamDataset:
    """Encode records of any format with given specs: a StreamDataset for text/csv, else a SequenceDataset."""
    if records.is_stream:
        return encode_stream(
            records,
            input_spec,
            output_spec,
            target_columns=config.data.target_columns,
            horizon=config.data.horizon,
            require_target=require_target,
        )
    return SequenceDataset(encode_examples(records, input_spec, output_spec))


def load_file(
    path: str | Path, config: Config, input_spec: InputSpec, output_spec: OutputSpec, require_target: bool = True
) -> SequenceDataset | StreamDataset:
    """Read and encode one more file (validation, test or inference input) with a trained model's specs.

    Uses the config's task, data.format, level, lowercase, target_columns and horizon. With
    require_target=False labels/targets are optional (Example.target None where absent).
    """
    d = config.data
    records = read_records(path, config.task, d.format, require_target, **_reading(config))
    return encode_records(records, config, input_spec, output_spec, require_target)


def validation_data(
    config: Config, input_spec: InputSpec, output_spec: OutputSpec
) -> tuple[SequenceDataset | StreamDataset, str]:
    """The validation data a run was trained with, encoded with its specs, and its description:
    the `data.val` file, or the `val_fraction` held out of `data.data` exactly as training held
    it out (same seed). DataError when the run had none or its files cannot be read."""
    d = config.data
    if d.val:
        return load_file(d.val, config, input_spec, output_spec), f"the run's validation file {d.val}"
    if not d.data:
        raise DataError("the run names no training data to take its validation split from")
    records = read_records(d.data, config.task, d.format, True, **_reading(config))
    if records.is_stream:
        _, val, note = split_stream(records, d.val_fraction, d.horizon)
    else:
        _, val, note = split_sequences(records, d.val_fraction, config.train.seed)
    if val is None:
        raise DataError(f"the run has no validation data ({note})", path=d.data)
    return encode_records(val, config, input_spec, output_spec), f"the run's validation split ({note})"


def _reading(config: Config) -> dict:
    """How the config reads text: read_records' keyword arguments."""
    d = config.data
    return {"level": d.level, "lowercase": d.lowercase, "target_level": d.target_level}


def load_data(config: Config) -> Prepared:
    """Read the training data (and validation data) a config names; build specs from the training split.

    Validation: the `data.val` file if given, read with the training specs; else `val_fraction`
    held out (a seeded shuffle of sequences, or the end of a stream). Raises DataError / ConfigError.
    """
    d = config.data
    task = config.task
    if not d.data:
        raise ConfigError("data.data is not set: give the training file (for lm, a text file or a directory)")
    read = _reading(config)
    records = read_records(d.data, task, d.format, True, **read)
    notes = list(records.notes)
    labels = label_universe(records) if tasks.of(task).predicts == "labels" else None

    if d.val:
        val_records = read_records(d.val, task, d.format, True, **read)
        notes += [n for n in val_records.notes if n not in notes]
        if records.format == "csv" and val_records.format == "csv" and val_records[0].columns != records[0].columns:
            raise DataError(
                f"the numeric columns differ from the training file's: expected {preview(records[0].columns)}; "
                f"got {preview(val_records[0].columns)}",
                path=val_records.path,
            )
        if records.is_stream != val_records.is_stream:
            raise DataError(
                f"the validation file is {val_records.format} data but the training file is {records.format}",
                path=val_records.path,
            )
        train_part, val_part = records, val_records
        notes.append(f"validation data: {d.val}")
    elif records.is_stream:
        train_part, val_part, note = split_stream(records, d.val_fraction, d.horizon)
        notes.append(note)
    else:
        train_part, val_part, note = split_sequences(records, d.val_fraction, config.train.seed)
        notes.append(note)

    input_spec, output_spec = build_specs(
        train_part,
        min_freq=d.min_freq,
        max_vocab=d.max_vocab,
        labels=labels,
        target_columns=d.target_columns,
        horizon=d.horizon,
    )
    normalize.check(config.model.normalize, task, input_spec.kind, records.is_stream, d.data)
    train = encode_records(train_part, config, input_spec, output_spec)
    val = encode_records(val_part, config, input_spec, output_spec) if val_part is not None else None

    if input_spec.kind == "tokens":
        notes.append(f"vocabulary: {len(input_spec.vocab)} entries from the training split (4 specials included)")
        if isinstance(val, SequenceDataset) and val.examples:
            unknown = sum(int(np.count_nonzero(ex.inputs == UNK_ID)) for ex in val.examples)
            total = sum(len(ex) for ex in val.examples)
            if total:
                notes.append(f"{unknown} of {total} validation tokens ({100 * unknown / total:.1f}%) map to <unk>")
        elif isinstance(val, StreamDataset) and len(val):
            unknown = int(np.count_nonzero(val.inputs == UNK_ID))
            notes.append(f"{unknown} of {len(val)} validation tokens ({100 * unknown / len(val):.1f}%) map to <unk>")
    return Prepared(train=train, val=val, input=input_spec, output=output_spec, notes=notes)
