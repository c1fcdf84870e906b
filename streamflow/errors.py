"""Errors a user can cause, each rendered by the CLI as one line.

Every class here means "bad input": the CLI prints ``str(error)`` on stderr and exits
with code 2, never a traceback. Anything else that escapes is a bug in streamflow.
"""


class StreamflowError(Exception):
    """Base class of the errors the CLI reports as one line."""


class ConfigError(StreamflowError):
    """A config value has the wrong type or range, or a ``-c`` option is malformed."""


class TopologyError(StreamflowError):
    """A topology is malformed: the message names the component and the problem."""


class LoadError(StreamflowError):
    """A topology file is missing, does not parse, raises at import, or defines no topology."""
