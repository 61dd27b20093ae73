"""Holding out validation data when no `val` file is given.

Sequences: a seeded shuffle picks `fraction` of them (at least one when fraction > 0 and there
are two or more); both parts keep file order. Streams (text, csv): the last `fraction` of the
stream, so validation follows training in time and never overlaps it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from toolkit.core.data.records import Record, Records
from toolkit.core.errors import DataError


def _replace(records: Records, items: list[Record]) -> Records:
    return dataclasses.replace(records, records=items, notes=[])


def split_sequences(records: Records, fraction: float, seed: int) -> tuple[Records, Records | None, str]:
    n = len(records)
    n_val = int(round(n * fraction))
    n_val = min(max(n_val, 1), n - 1) if fraction > 0 and n >= 2 else 0
    if n_val == 0:
        why = "val_fraction is 0" if fraction <= 0 else f"{records.path} has a single sequence"
        return records, None, f"no validation data: {why} and no val file was given"
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:n_val])
    is_val = np.zeros(n, dtype=bool)
    is_val[val_idx] = True
    train = [r for r, v in zip(records.records, is_val, strict=True) if not v]
    val = [r for r, v in zip(records.records, is_val, strict=True) if v]
    note = (
        f"held out {n_val} of {n} sequences of {records.path} for validation "
        f"(val_fraction {fraction:g}, shuffled with seed {seed})"
    )
    return _replace(records, train), _replace(records, val), note


def split_stream(records: Records, fraction: float, horizon: int = 1) -> tuple[Records, Records | None, str]:
    """Cut text tokens or csv rows at (1 - fraction) of the stream; each part stands alone."""
    if fraction <= 0:
        return records, None, "no validation data: val_fraction is 0 and no val file was given"
    if records.format == "csv":
        rows = records[0].features
        n = len(rows)
        need = horizon + 1  # rows for one (input, target) pair
        n_val = max(int(round(n * fraction)), need)
        if n - n_val < need:
            raise DataError(
                f"too short to hold out validation data: {n} rows; each part needs more than horizon={horizon} rows. "
                "Give a val file, or set val_fraction to 0",
                path=records.path,
            )
        k = n - n_val
        head, tail = records[0], records[0]
        train = dataclasses.replace(head, features=rows[:k])
        val = dataclasses.replace(tail, features=rows[k:], line=head.line + k)
        note = f"held out the last {n_val} of {n} rows of {records.path} for validation (val_fraction {fraction:g})"
        return _replace(records, [train]), _replace(records, [val]), note

    total = sum(len(r) for r in records)
    n_val = max(int(round(total * fraction)), 2)
    if total - n_val < 2:
        raise DataError(
            f"too short to hold out validation data: {total} tokens. Give a val file, or set val_fraction to 0",
            path=records.path,
        )
    k = total - n_val
    train: list[Record] = []
    val: list[Record] = []
    seen = 0
    for r in records:
        if seen + len(r) <= k:
            train.append(r)
        elif seen >= k:
            val.append(r)
        else:
            cut = k - seen
            train.append(dataclasses.replace(r, tokens=r.tokens[:cut]))
            val.append(dataclasses.replace(r, tokens=r.tokens[cut:]))
        seen += len(r)
    note = f"held out the last {n_val} of {total} tokens of {records.path} for validation (val_fraction {fraction:g})"
    return _replace(records, train), _replace(records, val), note
