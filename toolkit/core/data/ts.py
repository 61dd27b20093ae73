"""UCR/UEA `.ts` time-series files (format "ts") for classify and regress; our own parser.

Header lines start with "@" (keys are case-insensitive): @problemName, @timeStamps, @missing,
@univariate, @dimensions, @equalLength, @seriesLength, @classLabel true <labels...>,
@targetLabel true, then @data. Lines starting with "#" (or "%", as some archive files have) are
comments. Each data line is `dim1_values:dim2_values:...:label` with comma-separated values; a
case becomes features [T, dims]. With @classLabel the label must be one the header declares (the
declared order is the label order); with @targetLabel it is a float regression target.

Not supported (a DataError says so): "?" missing values and @timeStamps true. Trailing NaN values
are taken as padding (the archive's convention for unequal lengths) and dropped; NaN inside a
series is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from toolkit.core.data.files import lines, read_text
from toolkit.core.data.records import Record, Records, preview
from toolkit.core.errors import DataError

TRUE, FALSE = "true", "false"


@dataclass
class _Header:
    """What the header lines declare (the number of dimensions may come from the first case)."""

    labels: list[str] | None = None
    class_label: bool = False
    target_label: bool = False
    dims: int | None = None
    dims_from: str = ""  # where the number of dimensions was fixed, for messages
    univariate: bool = False

    def read(self, text: str, lineno: int, fail) -> bool:
        """Take one header line; True when it is @data (the cases follow)."""
        if not text.startswith("@"):
            raise fail("expected a header line starting with '@' (or @data before the data lines)")
        parts = text[1:].split()
        key = parts[0].lower() if parts else ""
        args = parts[1:]
        flag = args[0].lower() if args else ""
        if key == "data":
            return True
        if key == "timestamps" and flag == TRUE:
            raise fail("@timeStamps true is not supported: write the values without time stamps")
        if key == "classlabel":
            self._class_label(flag, args, fail)
        elif key == "targetlabel":
            if flag not in (TRUE, FALSE):
                raise fail(f"@targetLabel must be followed by true or false, got {flag!r}")
            self.target_label = flag == TRUE
        elif key == "dimensions":
            if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
                raise fail("@dimensions must be followed by a positive integer")
            self.dims, self.dims_from = int(args[0]), f"as @dimensions declares on line {lineno}"
        elif key == "univariate":
            self.univariate = flag == TRUE
        return False

    def _class_label(self, flag: str, args: list[str], fail) -> None:
        if flag == TRUE:
            if len(args) < 2:
                raise fail("@classLabel true must list the class labels, e.g. @classLabel true a b c")
            self.class_label, self.labels = True, args[1:]
            if len(set(self.labels)) != len(self.labels):
                raise fail("@classLabel lists a label twice")
        elif flag != FALSE:
            raise fail(f"@classLabel must be followed by true or false, got {flag!r}")

    def check_task(self, task: str, require_target: bool, fail) -> None:
        if task == "classify" and self.target_label:
            raise fail("this file declares @targetLabel true (a numeric regression target); use task regress")
        if task == "regress" and self.class_label:
            raise fail("this file declares @classLabel true (class labels); use task classify")
        if require_target and not (self.class_label or self.target_label):
            need = "@classLabel true <labels...>" if task == "classify" else "@targetLabel true"
            raise fail(f"the header declares no labels: {task} training data needs {need} and a label on every case")


def read_ts(path: str, task: str, require_target: bool = True) -> Records:
    if task not in ("classify", "regress"):
        raise DataError(f".ts files are for classify or regress, not {task}", path=str(path))
    header = _Header()
    in_data = False
    records: list[Record] = []
    for lineno, raw in enumerate(lines(read_text(path)), 1):
        text = raw.strip()
        if not text or text[0] in "#%":
            continue

        def fail(message: str, lineno: int = lineno) -> DataError:
            return DataError(message, path=str(path), line=lineno)

        if not in_data:
            in_data = header.read(text, lineno, fail)
            if in_data:
                header.check_task(task, require_target, fail)
            continue
        features, target = _case(text, lineno, header, require_target, fail)
        records.append(Record(path=str(path), line=lineno, features=features, target=target))
    if not in_data:
        raise DataError("no @data line: a .ts file needs header lines, then @data, then one case per line", str(path))
    if not records:
        raise DataError("no cases: nothing follows @data", str(path))
    return Records(path=str(path), format="ts", task=task, records=records, labels=header.labels, notes=[])


def _case(text: str, lineno: int, header: _Header, require_target: bool, fail):
    """One data line -> (features float64 [T, dims], target or None)."""
    if header.dims is None and header.univariate:
        header.dims, header.dims_from = 1, "as @univariate true declares"
    fields = text.split(":")
    dims = header.dims
    has_label = header.class_label or header.target_label
    if dims is not None and has_label and len(fields) == dims:
        if require_target:
            raise fail(
                f"expected {dims} dimension(s) and a label separated by ':', got {len(fields)} fields "
                "(is the label missing?)"
            )
        has_label = False
    series_fields = fields[:-1] if has_label else fields
    if dims is None:
        dims = header.dims = len(series_fields)
        header.dims_from = f"as in line {lineno}"
    if len(series_fields) != dims:
        label = " and a label" if has_label else ""
        raise fail(
            f"expected {dims} dimension(s){label} separated by ':' ({header.dims_from}), got {len(fields)} fields"
        )
    series = [_series(f, d, fail) for d, f in enumerate(series_fields, 1)]
    length = len(series[0])
    for d, s in enumerate(series[1:], 2):
        if len(s) != length:
            raise fail(
                f"dimension {d} has {len(s)} values but dimension 1 has {length}; "
                "every dimension of a case must have the same length"
            )
    return np.stack(series, axis=1), (_label(fields[-1].strip(), header, fail) if has_label else None)


def _label(value: str, header: _Header, fail):
    """A case's class label (one the header declares) or its finite regression target."""
    if header.class_label:
        if value not in header.labels:
            raise fail(f"class label {value!r} is not declared by @classLabel (declared: {preview(header.labels)})")
        return value
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise fail(f"target {value!r} is not a finite number (@targetLabel true needs a number last)")
    return np.array([number], dtype=np.float64)


def _series(field: str, d: int, fail) -> np.ndarray:
    """One dimension's comma-separated values as float64 [T], trailing NaN padding dropped."""
    if not field.strip():
        raise fail(f"dimension {d} is empty; expected comma-separated numbers")
    parts = field.split(",")
    try:
        values = np.array(parts, dtype=np.float64)
    except ValueError:
        values = None
    if values is None:
        for i, p in enumerate(parts, 1):
            if p.strip() == "?":
                raise fail(f"missing values ('?') are not supported: dimension {d}, value {i}; fill or drop them first")
            try:
                float(p)
            except ValueError:
                raise fail(f"dimension {d}, value {i}: {p.strip()!r} is not a number") from None
        values = np.array([float(p) for p in parts], dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        end = len(values)
        while end and np.isnan(values[end - 1]):
            end -= 1
        values = values[:end]
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise fail(f"dimension {d}, value {i + 1} is {values[i]}; missing or infinite values are not supported")
        if not end:
            raise fail(f"dimension {d} holds only NaN values")
    return values
