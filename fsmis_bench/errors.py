"""User-facing errors: one clear line naming the file or option and the problem."""

from __future__ import annotations


class FsmisError(Exception):
    """Base class of errors caused by bad input; the CLI prints the message and exits with status 2."""


class DataError(FsmisError):
    """A data file is missing, corrupt or inconsistent."""


class ConfigError(FsmisError):
    """An option or configuration value is invalid (unknown method, fold out of range, ...)."""
