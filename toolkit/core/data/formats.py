"""Choosing a reader: `format` "auto" goes by suffix; each task reads only some formats."""

from __future__ import annotations

from pathlib import Path

from toolkit.core.data.conll import read_conll
from toolkit.core.data.csv_series import read_csv_series
from toolkit.core.data.jsonl import read_jsonl
from toolkit.core.data.pairs import read_pairs
from toolkit.core.data.records import Records
from toolkit.core.data.text import read_text_records
from toolkit.core.data.ts import read_ts
from toolkit.core.errors import ConfigError, DataError
from toolkit.core.tasks import FORMATS, TASKS

SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".conll": "conll",
    ".bio": "conll",
    ".iob": "conll",
    ".txt": "text",
    ".md": "text",
    ".csv": "csv",
    ".ts": "ts",
    ".tsv": "tsv",
}
ACCEPTED_SUFFIXES = (
    ".jsonl/.json (jsonl), .conll/.bio/.iob (conll), .txt/.md or a directory (text), .csv (csv), .ts (ts), .tsv (tsv)"
)


def resolve_format(path: str | Path, fmt: str = "auto", task: str | None = None) -> str:
    """The reader for `path`: `fmt` itself, or by suffix when "auto"; checked against `task`."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of auto, {', '.join(FORMATS)}; got {fmt!r}")
    p = Path(path)
    if fmt == "auto":
        if p.is_dir():
            fmt = "text"
        else:
            fmt = SUFFIX_FORMATS.get(p.suffix.lower())
            if fmt is None:
                if not p.exists():
                    raise DataError("no such file or directory", path=str(path))
                shown = f"its suffix '{p.suffix}'" if p.suffix else "a name without a suffix"
                raise DataError(
                    f"cannot tell the format from {shown}; accepted suffixes: {ACCEPTED_SUFFIXES}; "
                    f"or set data.format (format: ...) to one of {', '.join(FORMATS)}",
                    path=str(path),
                )
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        if fmt not in TASKS[task].formats:
            raise ConfigError(
                f"{path}: task {task} cannot read {fmt} data; it reads {', '.join(TASKS[task].formats)} "
                f"(accepted suffixes: {ACCEPTED_SUFFIXES})"
            )
    return fmt


def read_records(
    path: str | Path,
    task: str,
    fmt: str = "auto",
    require_target: bool = True,
    *,
    level: str = "char",
    lowercase: bool = False,
    target_level: str = "char",
) -> Records:
    """Read one file (or, for lm, a directory of text files) into raw records.

    require_target=False makes the label/tags/target optional (inference on unlabeled input);
    when present it is still checked. `level` (char | word) applies to text; `lowercase` to
    every token input; seq2seq reads the source at `level` and the target at `target_level`.
    Raises DataError (file, line, what is wrong) or ConfigError.
    """
    fmt = resolve_format(path, fmt, task)
    path = str(path)
    if TASKS[task].predicts == "sequences":
        return read_pairs(path, fmt, require_target, level=level, target_level=target_level, lowercase=lowercase)
    if fmt == "jsonl":
        return read_jsonl(path, task, require_target=require_target, lowercase=lowercase)
    if fmt == "conll":
        return read_conll(path, require_target=require_target, lowercase=lowercase)
    if fmt == "text":
        return read_text_records(path, level=level, lowercase=lowercase)
    if fmt == "csv":
        return read_csv_series(path)
    return read_ts(path, task, require_target=require_target)
