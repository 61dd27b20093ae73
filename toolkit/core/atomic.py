"""Atomic file writes: a temporary file in the same directory, fsynced, then renamed into place,
so a reader (or an interrupted writer) never sees half a file; and an atomic swap of two
directories. Standard library only."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes | Iterable[bytes]) -> None:
    """`data` (bytes, or an iterable of chunks written as they come) at `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in [data] if isinstance(data, bytes) else data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


AT_FDCWD, RENAME_EXCHANGE = -100, 2


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`): at every
    moment each name holds one complete tree. False where the system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the filesystem does not support it
        return False
    raise OSError(code, os.strerror(code), str(b))


def fsync_directory(path: str | Path) -> None:
    """Make renames inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_tree(out: Path, files: dict[str, bytes], marker: str) -> bool:
    """Write `files` (relative path -> bytes) as the directory `out`, replacing the tree that was
    there in one step; False (nothing written) where `out` holds files but not `marker`, the file
    that marks a tree this writer made (so a mistyped --out never replaces someone's directory).

    The new tree is written and fsynced in a temporary sibling, then swapped with the old one in a
    single rename (`exchange`). Where the filesystem cannot swap, the old tree is renamed to
    `.OUT.old` first; a crash between that rename and the next leaves it there, and `recover_tree`
    (called by every reader and writer) puts it back."""
    recover_tree(out, marker)
    shutil.rmtree(_old(out), ignore_errors=True)  # left by a replace stopped after its second rename
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for folder in {(tmp / name).parent for name in files}:
            fsync_directory(folder)
        if not out.exists():
            os.replace(tmp, out)
        elif exchange(tmp, out):  # tmp now holds the old tree
            pass
        else:
            old = _old(out)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            tmp = old
        fsync_directory(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def recover_tree(out: Path, marker: str) -> None:
    """Put back the tree a replace without atomic swap left at `.OUT.old` when it was stopped
    between its two renames (OUT missing)."""
    old = _old(out)
    if not out.exists() and (old / marker).is_file():
        os.replace(old, out)


def _old(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")
