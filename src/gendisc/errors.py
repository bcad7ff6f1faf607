"""Errors that explain what went wrong and what to do about it."""


class GendiscError(Exception):
    """Base class of all errors gendisc raises on purpose; the message says what to do."""


class ConfigError(GendiscError):
    """A setting is invalid: the message names the setting and a valid alternative."""


class DataError(GendiscError):
    """A dataset is missing, corrupt or unusable: the message names the path and the fix."""
