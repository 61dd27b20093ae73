"""One JSON decoding policy for everything rnnkit reads from outside: stream messages (`rnnkit
stream`, `rnnkit serve`), HTTP bodies and JSON Lines data files.

orjson decides what is JSON. It refuses what the standard library lets through and a reply could
not carry or a reader could not bound: NaN and Infinity literals, lone surrogates (`"\\ud800"`,
which no UTF-8 reply can encode), nesting deeper than 1024 and numbers beyond float64. Big
integers within float64's range arrive as floats and are range-checked by the reader. Torch-free.
"""

from __future__ import annotations

import orjson

NON_FINITE = ("NaN", "-Infinity", "Infinity")


class JSONTextError(ValueError):
    """Text that is not JSON under the policy; the message says what and at which column."""

    def __init__(self, message: str, number: bool = False):
        super().__init__(message)
        self.number = number  # the text is JSON-like, but a number in it is not finite


def parse(text: str | bytes):
    """JSON text -> object, or JSONTextError naming the problem and its column."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        near = _text(text, max(e.pos - 1, 0), e.pos + 9)
        literal = next((w for w in NON_FINITE if w in near), None)
        beyond = "infinity when parsed" in e.msg
        if literal:
            what = f"{literal} is not a JSON number; only finite numbers are accepted"
        elif beyond:
            what = "a number beyond float64's range; only finite numbers are accepted"
        else:
            what = e.msg
        raise JSONTextError(f"{what} (at column {e.colno})", bool(literal or beyond)) from None


def check_format(doc, where: str, fmt: str, version: int, what: str, error: type[Exception]) -> dict:
    """A versioned rnnkit document (bundle manifest, checkpoint spec): a JSON object whose "format"
    is `fmt` and "format_version" is `version`, or `error` saying which it is not."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise error(f"{where}: not an rnnkit {what} (format {got!r})")
    if doc.get("format_version") != version:
        raise error(
            f"{where}: {what} format version {doc.get('format_version')!r}; this rnnkit reads version {version}"
        )
    return doc


def _text(text: str | bytes, start: int, end: int) -> str:
    return text[start:end] if isinstance(text, str) else text[start:end].decode("latin-1")
