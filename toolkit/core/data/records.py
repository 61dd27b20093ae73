"""Raw records: what the readers return before a vocabulary or label set turns them into Examples.

A reader checks everything that can be checked within one file (types, shapes, finiteness,
consistency between lines); `encode.py` checks a file against the specs of a trained model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.core.errors import DataError

STREAM_FORMATS = ("text", "csv")


@dataclass
class Record:
    """One raw sequence (or, for text and csv files, one stretch of a stream).

    `tokens`: token strings, or `features`: float64 [T, F]. `target`: classify -> label string;
    tag -> list of tag strings (one per step); regress -> float64 [D] (per sequence) or [T, D]
    (per step); None when the input carries none. `columns`: csv only, the feature column names.
    """

    path: str
    line: int
    tokens: list[str] | None = None
    features: np.ndarray | None = None
    target: Any = None
    columns: list[str] | None = None

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> str:
        return "tokens" if self.tokens is not None else "features"

    def __len__(self) -> int:
        return len(self.tokens) if self.tokens is not None else int(self.features.shape[0])

    def error(self, message: str) -> DataError:
        return DataError(message, path=self.path, line=self.line)


@dataclass
class Records:
    """The records of one file (or directory of text files), in file order.

    `labels`: the class labels a .ts header declares (@classLabel), in its order; else None.
    `skipped_columns`: csv columns left out because they are not numeric (or unnamed).
    `notes`: things the user should know about how the file was read.
    """

    path: str
    format: str
    task: str
    records: list[Record]
    labels: list[str] | None = None
    skipped_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_stream(self) -> bool:
        return self.format in STREAM_FORMATS

    @property
    def kind(self) -> str:
        return self.records[0].kind if self.records else "tokens"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]


def preview(items: list[str], limit: int = 20) -> str:
    """'a, b, c' for an error message; long lists are cut with a count."""
    shown = ", ".join(repr(x) if x == "" else str(x) for x in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"
