"""The base of every error a user can act on (a bad config, input, path or option).

The CLI prints such an error as its message alone (one or two lines naming the table, column,
key or path and the fix) and exits non-zero; anything else is a bug and keeps its traceback.
Each layer's own errors subclass ``UserError`` (``ConfigError``, ``ContractError``,
``StageError``, ...), so the CLI catches one class.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave us; the message says what and how to fix it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder a command needs is not there (a half-written or wrong folder, a step not
    run yet); the message names the path and the command that makes it."""
