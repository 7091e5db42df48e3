"""One error hierarchy for the library; the CLI turns each into a one-line message and exit code 1."""


class BottleneckError(Exception):
    """Base class: the message names the bad file or value and says what to do instead."""


class InputError(BottleneckError):
    """Bad user input: missing path, empty folder, CSV without the named columns, duplicate ids."""


class ImageDecodeError(BottleneckError):
    """One image could not be decoded; the message is the reason recorded in the cache."""


class WeightsError(BottleneckError):
    """Backbone weights could not be obtained or do not fit the architecture."""


class CacheError(BottleneckError):
    """A cache is missing, unreadable, of another schema, or would be mixed."""


class CacheMismatchError(CacheError):
    """Extracting into a cache built with another configuration."""


class CacheLockedError(CacheError):
    """Another process is writing the same cache."""


class BottleneckWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints `warning: <message>`."""
