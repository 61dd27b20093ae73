"""CSV time series for regress (suffix .csv): a header row, then one time step per row.

Columns with an empty header name (a pandas index) are skipped, and so are columns whose value
on the first data row is not a number (dates, timestamps, quarters); a note names them. The other
columns are the features, and every later value in them must be a finite number.
Forecasting (`target_columns`, `horizon`) happens in encode.py.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from toolkit.core.data.files import read_text
from toolkit.core.data.records import Record, Records, preview
from toolkit.core.errors import DataError


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_csv_series(path: str) -> Records:
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header, header_line = [c.strip() for c in row], reader.line_num
                continue
            if len(row) != len(header):
                raise DataError(
                    f"expected {len(header)} comma-separated values (as in the header, line {header_line}), "
                    f"got {len(row)}",
                    str(path),
                    reader.line_num,
                )
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", str(path), reader.line_num) from None
    if header is None:
        raise DataError("empty file: expected a header row of column names, then one row per time step", str(path))
    if not rows:
        raise DataError("no data rows: the file has a header but no time steps", str(path), header_line)

    first_line, first = rows[0]
    keep: list[int] = []
    skipped: list[str] = []
    notes: list[str] = []
    for j, name in enumerate(header):
        if not name:
            notes.append(f"skipped the unnamed column {j + 1} of {Path(path).name} (an index)")
        elif _number(first[j]) is None:
            skipped.append(name)
            value = first[j].strip()
            shown = f"'{value}'" if value else "empty"
            notes.append(f"skipped column '{name}' of {Path(path).name}: its first value ({shown}) is not a number")
        else:
            keep.append(j)
    if not keep:
        raise DataError(
            f"no numeric columns: every column's first value (line {first_line}) is not a number; "
            "feature columns must hold numbers",
            str(path),
        )
    names = [header[j] for j in keep]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(
            f"duplicate column name(s) {preview(dupes)}; column names must be unique", str(path), header_line
        )

    values = np.empty((len(rows), len(keep)), dtype=np.float64)
    for i, (lineno, row) in enumerate(rows):
        for k, j in enumerate(keep):
            x = _number(row[j])
            if x is None or not math.isfinite(x):
                cell = row[j].strip()
                what = "is empty" if not cell else f"is {cell!r}, not a finite number"
                raise DataError(
                    f"column '{header[j]}' {what}; values of a numeric column must all be finite numbers "
                    "(missing values are not supported)",
                    str(path),
                    lineno,
                )
            values[i, k] = x
    record = Record(path=str(path), line=first_line, features=values, columns=names)
    return Records(path=str(path), format="csv", task="regress", records=[record], skipped_columns=skipped, notes=notes)
