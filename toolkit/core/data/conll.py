"""CoNLL-style column files for tag (suffix .conll, .bio, .iob, or format "conll").

One token per line, whitespace-separated columns: the first is the token, the last its tag (any
columns between are ignored). A blank line ends a sentence; "-DOCSTART-" lines are skipped; a
line starting with "#" before the first token of a sentence is a comment (inside a sentence it
is a token, so a "#" token keeps working). Every line must have as many columns as the first.
A file of one column holds tokens only, accepted when no tags are required (inference).
"""

from __future__ import annotations

from toolkit.core.data.files import lines, read_text
from toolkit.core.data.records import Record, Records
from toolkit.core.errors import DataError

EXAMPLE = "'John B-PER' (token, then tag; columns separated by whitespace)"


def read_conll(path: str, require_target: bool = True, lowercase: bool = False) -> Records:
    records: list[Record] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    ncols = None
    ncols_line = 0

    def flush() -> None:
        nonlocal tokens, tags
        if tokens:
            target = tags if ncols is not None and ncols > 1 else None
            records.append(Record(path=str(path), line=start, tokens=tokens, target=target))
        tokens, tags = [], []

    for lineno, raw in enumerate(lines(read_text(path)), 1):
        text = raw.strip()
        if not text:
            flush()
            continue
        if text.startswith("-DOCSTART-"):
            flush()
            continue
        if text.startswith("#") and not tokens:
            continue
        cols = text.split()
        if ncols is None:
            ncols, ncols_line = len(cols), lineno
            if ncols == 1 and require_target:
                raise DataError(
                    f"only one column: expected a token and a tag per line, e.g. {EXAMPLE}", str(path), lineno
                )
        elif len(cols) != ncols:
            raise DataError(
                f"expected {ncols} columns (as in line {ncols_line}), got {len(cols)}; each line is {EXAMPLE}",
                str(path),
                lineno,
            )
        if not tokens:
            start = lineno
        tokens.append(cols[0].lower() if lowercase else cols[0])
        tags.append(cols[-1])
    flush()
    if not records:
        raise DataError(f"no sentences: the file has no token lines; expected lines like {EXAMPLE}", str(path))
    return Records(path=str(path), format="conll", task="tag", records=records)
