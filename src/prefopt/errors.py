"""Errors that mean the user must change something; run.py reports them as one message, no traceback."""


class ConfigError(ValueError, TypeError):
    """A bad config: an unknown key, a wrong type or a value out of range. The message names the key,
    the value and what is allowed. Also a TypeError, like Python's own unknown-keyword error."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the message names the step and where the last good weights are."""
