"""Errors that one line says all about: bad input, or a server that cannot be reached.

The CLI prints ``str(error)`` of one on stderr and exits with code 2; a task that raises
one has it logged as that line, with no traceback. Anything else that escapes is a bug,
in streamflow or in a user's component, and its traceback is what shows where.
"""


class StreamflowError(Exception):
    """Base class of the errors reported as one line."""


class ConfigError(StreamflowError):
    """A config value has the wrong type or range, or a ``-c`` option is malformed."""


class TopologyError(StreamflowError):
    """A topology is malformed: the message names the component and the problem."""


class LoadError(StreamflowError):
    """A topology file is missing, does not parse, raises at import, or defines no topology."""
