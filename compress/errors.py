"""The exception every user-facing error in compress-lm derives from.

A ``CompressError`` message is one sentence naming what was wrong and how to
fix it; the CLI prints it without a traceback.  It subclasses ValueError so
callers that catch ValueError keep working.
"""


class CompressError(ValueError):
    """Bad input: unsupported model, missing path, empty text, invalid config."""


class ConfigError(CompressError):
    """A config dataclass got a value it cannot use."""
