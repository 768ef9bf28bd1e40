"""Errors that mean the user must change something; run.py reports them as one message, no traceback.

Used across the package; `prefopt.run.runner.user_errors` lists the ones reported without a traceback.
`first_line(err)` is how an underlying library's error is quoted inside one of them.
"""


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message, or its type's name when the message is empty."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class ConfigError(ValueError, TypeError):
    """A bad config: an unknown key, a wrong type or a value out of range. The message names the key,
    the value and what is allowed. Also a TypeError, like Python's own unknown-keyword error."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the message names the step and where the last good weights are."""


class CacheError(RuntimeError):
    """A cached artifact that cannot be used or rebuilt (a read-only cache, a build lock held too long):
    the message names the file or folder and what to do."""


class ModelLoadError(RuntimeError):
    """A policy could not be loaded; the message says what to set instead (raised by prefopt.models)."""


class ResumeMismatch(ConfigError):
    """`ckpt_path` names a checkpoint saved by a different run (config, data or tokenizer), or none
    exists: the message names what differs."""
