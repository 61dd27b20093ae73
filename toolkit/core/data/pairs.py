"""Sequence pairs for seq2seq: JSON Lines or tab-separated lines, one pair per line.

    {"source": "cat", "target": "K AE T"}                        texts, split by each side's level
    {"source": ["c", "a", "t"], "target": ["K", "AE", "T"]}      token lists, taken as given
    cat<TAB>K AE T                                               .tsv: source, tab, target

Each side has its own level: "char" (every character a token; spaces too) or "word" (split on
whitespace). An optional "id" field is ignored. Inference input may leave the target out (a
JSON line without "target", a TSV line without a tab). Blank lines are skipped. Errors name the
file and line, what was wrong and what is accepted.

`Record.tokens` holds the source tokens and `Record.target` the target tokens (or None).
"""

from __future__ import annotations

import json
from typing import Any

from toolkit.core.data.files import lines, read_text
from toolkit.core.data.jsonl import json_type
from toolkit.core.data.records import Record, Records
from toolkit.core.data.text import LEVELS
from toolkit.core.errors import DataError
from toolkit.core.jsontext import JSONTextError, parse

EXAMPLE = {"jsonl": '{"source": "cat", "target": "K AE T"}', "tsv": "cat<TAB>K AE T"}
FIELDS = ("source", "target", "id")


def split(text: str, level: str, lowercase: bool) -> list[str]:
    """A text side as tokens: its characters, or its whitespace-separated words."""
    text = text.lower() if lowercase else text
    return list(text) if level == "char" else text.split()


def read_pairs(
    path: str,
    fmt: str,
    require_target: bool = True,
    level: str = "char",
    target_level: str = "char",
    lowercase: bool = False,
) -> Records:
    """The pairs of a .jsonl or .tsv file (`fmt` "jsonl" | "tsv")."""
    for name, value in (("data.level", level), ("data.target_level", target_level)):
        if value not in LEVELS:
            raise DataError(f"{name} must be one of {', '.join(LEVELS)}; got {value!r}")
    records = []
    for lineno, raw in enumerate(lines(read_text(path)), 1):
        if not raw.strip():
            continue

        def fail(message: str, lineno: int = lineno) -> DataError:
            return DataError(message, path=str(path), line=lineno)

        if fmt == "jsonl":
            source, target = _json_pair(raw, fail)
        else:
            source, target = _tsv_pair(raw, fail)
        tokens = _side(source, "source", level, lowercase, fail)
        if target is None:
            if require_target:
                where = "field 'target'" if fmt == "jsonl" else "target after a tab"
                raise fail(f"missing the {where}; each training line needs one, e.g. {EXAMPLE[fmt]}")
        else:
            target = _side(target, "target", target_level, lowercase, fail)
        records.append(Record(path=str(path), line=lineno, tokens=tokens, target=target))
    if not records:
        expected = f"expected lines like {EXAMPLE[fmt]}"
        raise DataError(f"no pairs: the file is empty or has only blank lines; {expected}", path=str(path))
    return Records(path=str(path), format=fmt, task="seq2seq", records=records)


def _json_pair(text: str, fail) -> tuple[Any, Any]:
    try:
        obj = parse(text)
    except JSONTextError as e:
        raise fail(f"not valid JSON: {e}; expected an object like {EXAMPLE['jsonl']}") from None
    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object like {EXAMPLE['jsonl']}, got a JSON {json_type(obj)}")
    unknown = [k for k in obj if k not in FIELDS]
    if unknown:
        raise fail(f"unknown field {unknown[0]!r}; a pair has 'source', 'target' and optionally 'id'")
    if "source" not in obj:
        raise fail(f"missing field 'source', e.g. {EXAMPLE['jsonl']}")
    return obj["source"], obj.get("target")


def _tsv_pair(text: str, fail) -> tuple[str, str | None]:
    columns = text.split("\t")
    if len(columns) > 2:
        raise fail(f"{len(columns)} tab-separated columns; a pair has two (source, target), e.g. {EXAMPLE['tsv']}")
    return columns[0], (columns[1] if len(columns) == 2 else None)


def _side(value: Any, name: str, level: str, lowercase: bool, fail) -> list[str]:
    if isinstance(value, str):
        tokens = split(value, level, lowercase)
    elif isinstance(value, list):
        for i, t in enumerate(value):
            if not isinstance(t, str) or not t:
                shown = json.dumps(t) if not isinstance(t, str) else '""'
                raise fail(f"'{name}' must be a text or a list of non-empty strings; item {i + 1} is {shown}")
        tokens = [t.lower() for t in value] if lowercase else list(value)
    else:
        raise fail(f"'{name}' must be a text or a list of strings, got a JSON {json_type(value)}")
    if not tokens:
        raise fail(f"empty {name}: it needs at least one token")
    return tokens
