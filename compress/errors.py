"""The exception every user-facing error in compress-lm derives from.

A ``CompressError`` message is one sentence naming what was wrong and how to
fix it; the CLI prints it without a traceback.  It subclasses ValueError so
callers that catch ValueError keep working.
"""


class CompressError(ValueError):
    """Bad input: unsupported model, missing path, empty text, invalid config."""


class ConfigError(CompressError):
    """A config dataclass got a value it cannot use."""


def quote(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters, built without the whole repr of a huge or deeply nested value."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxtuple = r.maxset = r.maxdict = 8
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(message: str, limit: int = 600) -> str:
    """``message`` with its middle elided past ``limit`` characters: the start says what, the end how to fix it."""
    message = str(message)
    if len(message) <= limit:
        return message
    keep = (limit - 7) // 2
    return message[:keep] + " [...] " + message[-keep:]
