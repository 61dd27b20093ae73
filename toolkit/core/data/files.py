"""Reading input files: existence checks and strict UTF-8 decoding with a usable error location."""

from __future__ import annotations

from pathlib import Path

from toolkit.core.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")


def check_file(path: str | Path) -> Path:
    """The path as a Path, or a DataError naming it when it is missing or not a regular file."""
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or directory", path=str(path))
    if p.is_dir():
        raise DataError("is a directory; expected a file", path=str(path))
    return p


def read_text(path: str | Path) -> str:
    """The whole file decoded as UTF-8 (a leading byte-order mark is dropped).

    Invalid UTF-8 is a DataError giving the line and the byte offset of the first bad byte.
    """
    p = check_file(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", path=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"not valid UTF-8: byte 0x{data[e.start]:02x} at byte offset {e.start}; save the file as UTF-8",
            path=str(path),
            line=line,
        ) from None


def lines(text: str) -> list[str]:
    """Split on "\\n" only (JSON strings may hold other line separators) and drop a trailing "\\r"."""
    return [s[:-1] if s.endswith("\r") else s for s in text.split("\n")]


def text_files(directory: str | Path) -> list[Path]:
    """Every *.txt and *.md file under `directory` (recursively), sorted by path."""
    d = Path(directory)
    found = [p for p in d.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()]
    if not found:
        raise DataError(f"no {' or '.join(TEXT_SUFFIXES)} files under this directory", path=str(directory))
    return sorted(found, key=lambda p: p.relative_to(d).as_posix())
