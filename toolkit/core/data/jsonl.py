"""JSON Lines reader for classify, tag and regress: one JSON object per line.

    classify: {"tokens": ["a", "b"], "label": "pos"}      or {"features": [[0.1, 2.0], ...], "label": 3}
    tag:      {"tokens": ["John", "runs"], "tags": ["B-PER", "O"]}   ("features" also accepted)
    regress:  {"features": [[...], ...], "target": 1.5 | [1.5, 2.0] | [[1.5], [2.0], ...]}

An optional "id" field is ignored; any other field is an error naming the accepted ones. Blank
lines are skipped. Steps and positions in messages count from 1.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.core.data.files import lines, read_text
from toolkit.core.data.records import Record, Records
from toolkit.core.errors import DataError
from toolkit.core.jsontext import JSONTextError, parse

TARGET_FIELD = {"classify": "label", "tag": "tags", "regress": "target"}
EXAMPLE_LINE = {
    "classify": '{"tokens": ["a", "b"], "label": "pos"}',
    "tag": '{"tokens": ["John", "runs"], "tags": ["B-PER", "O"]}',
    "regress": '{"features": [[0.5, 1.0], [0.7, 0.9]], "target": 2.5}',
}


def json_type(value: Any) -> str:
    """JSON's name for a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nonfinite(x: float) -> str:
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


@dataclass
class _Seen:
    """What the first lines of a file fixed, so later lines can be checked against it."""

    kind: str | None = None
    kind_line: int = 0
    width: int | None = None
    width_line: int = 0
    per_step: bool | None = None
    target_dim: int | None = None
    target_line: int = 0


def read_jsonl(path: str, task: str, require_target: bool = True, lowercase: bool = False) -> Records:
    if task not in TARGET_FIELD:
        raise DataError(f"JSON Lines input is for classify, tag or regress, not {task}", path=str(path))
    seen = _Seen()
    records: list[Record] = []
    for lineno, raw in enumerate(lines(read_text(path)), 1):
        text = raw.strip()
        if not text:
            continue

        def fail(message: str, lineno: int = lineno) -> DataError:
            return DataError(message, path=str(path), line=lineno)

        obj = _object(text, task, fail)
        tokens, features, length, kind = _inputs(obj, text, lineno, seen, lowercase, EXAMPLE_LINE[task], fail)
        target = _target(obj, task, length, kind, seen, lineno, require_target, fail)
        records.append(Record(path=str(path), line=lineno, tokens=tokens, features=features, target=target))
    if not records:
        raise DataError(
            f"no examples: the file is empty or has only blank lines; expected lines like {EXAMPLE_LINE[task]}",
            str(path),
        )
    return Records(path=str(path), format="jsonl", task=task, records=records)


def _object(text: str, task: str, fail) -> dict:
    """One line parsed: a JSON object with only the fields `task` accepts."""
    example = EXAMPLE_LINE[task]
    try:
        obj = parse(text)
    except JSONTextError as e:
        if e.number:
            raise fail(f"malformed JSON: {e}") from None
        hint = " (a JSON array of records is not supported: write one object per line)" if text == "[" else ""
        raise fail(f"malformed JSON: {e}{hint}; each line must be one JSON object, e.g. {example}") from None
    if not isinstance(obj, dict):
        hint = (
            " (a JSON array of records is not supported: write one object per line)"
            if obj and isinstance(obj, list) and isinstance(obj[0], dict)
            else ""
        )
        raise fail(f"expected a JSON object, got a JSON {json_type(obj)}{hint}; each line must be like {example}")
    accepted = ("tokens", "features", TARGET_FIELD[task], "id")
    for key in obj:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            did = f" (did you mean '{close[0]}'?)" if close else ""
            raise fail(f"unknown field '{key}'{did}; accepted fields for {task}: {', '.join(accepted)}")
    return obj


def _inputs(obj: dict, text: str, lineno: int, seen: _Seen, lowercase: bool, example: str, fail):
    """Exactly one of tokens / features, of the kind (and width) the file's first lines fixed.
    Returns (tokens, features, length, kind)."""
    has_tokens, has_features = "tokens" in obj, "features" in obj
    if has_tokens and has_features:
        raise fail("has both 'tokens' and 'features'; give one of them")
    if not has_tokens and not has_features:
        raise fail(f"missing field 'tokens' or 'features'; each line needs one of them, e.g. {example}")
    kind = "tokens" if has_tokens else "features"
    if seen.kind is None:
        seen.kind, seen.kind_line = kind, lineno
    elif kind != seen.kind:
        raise fail(f"uses '{kind}' but line {seen.kind_line} uses '{seen.kind}'; all lines of a file must use one")
    if kind == "tokens":
        tokens = _tokens(obj["tokens"], fail)
        tokens = [t.lower() for t in tokens] if lowercase else tokens
        return tokens, None, len(tokens), kind
    expected = (seen.width, f"line {seen.width_line}") if seen.width is not None else None
    features = _features(obj["features"], text, fail, expected)
    if seen.width is None:
        seen.width, seen.width_line = features.shape[1], lineno
    return None, features, features.shape[0], kind


def _target(obj: dict, task: str, length: int, kind: str, seen: _Seen, lineno: int, require_target: bool, fail):
    """The task's target field checked against the input, or None when it may be left out."""
    field_name = TARGET_FIELD[task]
    value = obj.get(field_name)
    if value is None:
        if require_target:
            what = "null" if field_name in obj else "missing"
            raise fail(
                f"{what} field '{field_name}': {task} data needs one on every line (only inference input may "
                f"leave it out), e.g. {EXAMPLE_LINE[task]}"
            )
        return None
    if task == "classify":
        return _label(value, fail)
    if task == "tag":
        return _tags(value, length, kind, fail)
    return _regress_target(value, length, seen, lineno, fail)


def _tokens(value: Any, fail) -> list[str]:
    if not isinstance(value, list):
        raise fail(f"'tokens' must be a list of strings, got a JSON {json_type(value)}")
    if not value:
        raise fail("empty sequence: 'tokens' is an empty list; a sequence needs at least one step")
    for i, t in enumerate(value, 1):
        if not isinstance(t, str):
            raise fail(f"'tokens' must be a list of strings; item {i} is a JSON {json_type(t)} ({json.dumps(t)})")
    return value


def _features(value: Any, text: str, fail, expected: tuple[int, str] | None = None) -> np.ndarray:
    """A list of steps, each a list of numbers, as float64 [T, F]; checked for shape and finiteness.

    `expected`: the width fixed earlier and where, e.g. (12, "line 1"); else step 1 fixes it.
    """
    if not isinstance(value, list):
        raise fail(f"'features' must be a list of steps, each a list of numbers; got a JSON {json_type(value)}")
    if not value:
        raise fail("empty sequence: 'features' is an empty list; a sequence needs at least one step")
    arr = None
    # Fast path: numpy parses a well-formed line; JSON booleans would pass as 0/1, so take the slow path then.
    if "true" not in text and "false" not in text:
        try:
            candidate = np.array(value)
        except (ValueError, OverflowError):
            candidate = None
        ok = candidate is not None and candidate.ndim == 2 and candidate.dtype.kind in "fi" and candidate.shape[1] > 0
        if ok and (expected is None or candidate.shape[1] == expected[0]):
            arr = candidate.astype(np.float64)
    if arr is None:
        width, where = expected if expected is not None else (None, "step 1")
        for t, step in enumerate(value, 1):
            if is_number(step):
                raise fail(
                    f"'features' must be a list of steps, each a list of numbers; step {t} is a bare number "
                    "(for one feature per step write [[1.0], [2.0], ...])"
                )
            if not isinstance(step, list):
                raise fail(f"'features' step {t} must be a list of numbers, got a JSON {json_type(step)}")
            if not step:
                raise fail(f"'features' step {t} is empty; every step needs at least one number")
            for f, x in enumerate(step, 1):
                if not is_number(x):
                    raise fail(
                        f"'features' step {t}, feature {f} is a JSON {json_type(x)} ({json.dumps(x)}); "
                        "expected a number"
                    )
            if width is None:
                width = len(step)
            elif len(step) != width:
                raise fail(f"expected {width} features per step (as in {where}), got {len(step)} at step {t}")
        arr = np.array(value, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        t, f = np.argwhere(bad)[0]
        raise fail(
            f"'features' has {_nonfinite(arr[t, f])} at step {t + 1}, feature {f + 1}; only finite numbers are accepted"
        )
    return arr


def _label(value: Any, fail) -> str:
    if isinstance(value, str):
        return value
    if is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(f"'label' is {_nonfinite(value)}; a label must be a string or a finite number")
        return str(value)
    raise fail(f"'label' must be a string or a number, got a JSON {json_type(value)}")


def _tags(value: Any, length: int, kind: str, fail) -> list[str]:
    if not isinstance(value, list):
        raise fail(f"'tags' must be a list of strings (one per step), got a JSON {json_type(value)}")
    tags = []
    for i, t in enumerate(value, 1):
        if isinstance(t, str):
            tags.append(t)
        elif is_number(t):
            tags.append(str(t))
        else:
            raise fail(f"'tags' item {i} is a JSON {json_type(t)}; tags must be strings")
    if len(tags) != length:
        unit = "tokens" if kind == "tokens" else "steps"
        raise fail(f"'tags' has {len(tags)} items but '{kind}' has {length} {unit}; give one tag per step")
    return tags


def _regress_target(value: Any, length: int, seen: _Seen, lineno: int, fail) -> np.ndarray:
    """A number or flat list -> float64 [D] per sequence; a list of lists -> float64 [T, D] per step."""
    accepted = "a number, a list of numbers (per sequence) or a list of lists of numbers (one list per step)"
    if is_number(value):
        arr = np.array([value], dtype=np.float64)
    elif isinstance(value, list):
        if not value:
            raise fail(f"'target' is an empty list; expected {accepted}")
        if all(is_number(x) for x in value):
            arr = np.array(value, dtype=np.float64)
        elif all(isinstance(x, list) for x in value):
            dim = len(value[0])
            for t, step in enumerate(value, 1):
                if not step:
                    raise fail(f"'target' step {t} is an empty list; expected at least one number per step")
                for j, x in enumerate(step, 1):
                    if not is_number(x):
                        raise fail(f"'target' step {t}, value {j} is a JSON {json_type(x)}; expected a number")
                if len(step) != dim:
                    raise fail(f"'target' has {dim} values at step 1 but {len(step)} at step {t}; use one width")
            arr = np.array(value, dtype=np.float64)
            if arr.shape[0] != length:
                raise fail(
                    f"per-step 'target' has {arr.shape[0]} steps but the sequence has {length}; "
                    "give one target list per step"
                )
        else:
            bad = next(i for i, x in enumerate(value, 1) if not is_number(x))
            raise fail(f"'target' item {bad} is a JSON {json_type(value[bad - 1])}; expected {accepted}")
    else:
        raise fail(f"'target' must be {accepted}; got a JSON {json_type(value)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        pos = np.argwhere(bad)[0]
        where = f"step {pos[0] + 1}, value {pos[1] + 1}" if arr.ndim == 2 else f"position {pos[0] + 1}"
        raise fail(f"'target' has {_nonfinite(arr[tuple(pos)])} at {where}; only finite numbers are accepted")
    per_step = arr.ndim == 2
    dim = arr.shape[-1]
    if seen.per_step is None:
        seen.per_step, seen.target_dim, seen.target_line = per_step, dim, lineno
    elif per_step != seen.per_step:
        this = "per-step (a list of lists)" if per_step else "per-sequence (a number or flat list)"
        that = "per-step" if seen.per_step else "per-sequence"
        raise fail(f"'target' is {this} but line {seen.target_line} has a {that} target; all lines must agree")
    elif dim != seen.target_dim:
        unit = "per step" if per_step else "per sequence"
        raise fail(f"expected {seen.target_dim} target values {unit} (as in line {seen.target_line}), got {dim}")
    return arr
