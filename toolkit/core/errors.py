"""Errors a user can act on: each says what was wrong, where, and what is accepted.

The CLI turns these into one line on stderr and a non-zero exit code (see cli/main.py);
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class RnnkitError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""

    exit_code = 1


class ConfigError(RnnkitError):
    """A configuration value is missing, unknown or out of range."""

    exit_code = 2


class DataError(RnnkitError):
    """A data file is malformed. Carries the file and (1-based) line where it went wrong."""

    exit_code = 2

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class CheckpointError(RnnkitError):
    """A checkpoint directory is missing files, is corrupt or comes from another version."""

    exit_code = 2


class RegistryError(RnnkitError):
    """The MLflow tracking store or Model Registry refused a request or could not be reached
    (says which model, which store, and what to do)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (MLflow's `.message` when it has one), at most
    `limit` characters; the exception's type name when the message is empty. For one-line reports
    of errors that come from libraries."""
    text = (getattr(error, "message", None) or str(error)).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
