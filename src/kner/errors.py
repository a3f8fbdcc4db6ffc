"""User-facing errors.

Every error a user can cause with bad input or settings is a ``KnerError``; the
CLI prints its message on one line and exits non-zero, without a traceback.
Anything else escaping is a bug in kner.
"""

from __future__ import annotations

from pathlib import Path


class KnerError(Exception):
    """An error caused by input or settings; its message is meant for the user."""


class DataError(KnerError):
    """Malformed data. Carries the file and line so the user can go and fix it."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class ConfigError(KnerError):
    """An invalid setting in a config file or on the command line."""
