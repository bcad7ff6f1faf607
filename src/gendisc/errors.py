"""Errors that explain what went wrong and what to do about it."""

from __future__ import annotations


class GendiscError(Exception):
    """Base class of all errors gendisc raises on purpose; the message says what to do."""


class ConfigError(GendiscError):
    """A setting is invalid: the message names the setting and a valid alternative."""


class DataError(GendiscError):
    """A dataset is missing, corrupt or unusable: the message names the path and the fix."""


def gendisc_cause(error: BaseException) -> GendiscError | None:
    """The GendiscError behind ``error`` (Hydra wraps errors raised while instantiating)."""
    while error is not None:
        if isinstance(error, GendiscError):
            return error
        error = error.__cause__ or error.__context__
    return None
