"""Plain UTF-8 text for lm: one file, or every *.txt / *.md file under a directory (sorted by path).

level "char": every character is a token (newlines included; "\\r\\n" counts as "\\n") and <eos>
ends each file. level "word": whitespace-separated words, with <eos> after each non-empty line
(the Penn Treebank convention). `lowercase` lowercases the text first. Empty files are skipped.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.core.data.files import read_text, text_files
from toolkit.core.data.records import Record, Records
from toolkit.core.data.vocab import EOS
from toolkit.core.errors import DataError

LEVELS = ("char", "word")


def tokenize(text: str, level: str, lowercase: bool = False) -> list[str]:
    """The tokens of one file's text, <eos> markers included (see the module docstring)."""
    if level not in LEVELS:
        raise DataError(f"unknown text level {level!r}; accepted: {', '.join(LEVELS)}")
    text = text.replace("\r\n", "\n")
    if lowercase:
        text = text.lower()
    if level == "char":
        return [*text, EOS] if text else []
    tokens: list[str] = []
    for line in text.split("\n"):
        words = line.split()
        if words:
            tokens.extend(words)
            tokens.append(EOS)
    return tokens


def prompt_tokens(prompt: str, level: str, lowercase: bool = False) -> list[str]:
    """A generation prompt as the model reads text: like `tokenize`, without the final <eos> (the
    prompt goes on)."""
    tokens = tokenize(prompt, level, lowercase)
    return tokens[:-1] if tokens and tokens[-1] == EOS else tokens


def read_text_records(path: str, level: str = "char", lowercase: bool = False) -> Records:
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or directory", path=str(path))
    files = text_files(p) if p.is_dir() else [p]
    records = []
    for f in files:
        tokens = tokenize(read_text(f), level, lowercase)
        if tokens:
            records.append(Record(path=str(f), line=1, tokens=tokens))
    if not records:
        what = "every file under it is empty" if p.is_dir() else "the file is empty"
        raise DataError(f"no text: {what}", path=str(path))
    notes = [f"read {len(records)} text files under {path}"] if p.is_dir() else []
    return Records(path=str(path), format="text", task="lm", records=records, notes=notes)
