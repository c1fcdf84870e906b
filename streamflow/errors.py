"""Errors that one line says all about: bad input, or a server that cannot be reached.

The CLI prints ``str(error)`` of one on stderr and exits with code 2; a task that raises
one has it logged as that line, with no traceback even at DEBUG. Anything else a task
raises is a bug in a component: its line says where it was raised, and the log adds its
traceback at DEBUG. Anything else that reaches the CLI is a bug in streamflow.
"""


class StreamflowError(Exception):
    """Base class of the errors reported as one line."""


class ConfigError(StreamflowError):
    """A config value has the wrong type or range, or a ``-c`` option is malformed."""


class TopologyError(StreamflowError):
    """A topology is malformed: the message names the component and the problem."""


class LoadError(StreamflowError):
    """A topology file is missing, does not parse, raises at import, or defines no topology."""


PLACEHOLDER = "REPLACE-ME"
"""What the example secrets of the deploy manifests hold: never a real credential."""


def refuse_placeholder(secret: str, what: str) -> None:
    """Refuse a credential still holding the manifests' placeholder: a cluster that
    started with it would run with a password anyone reading the repository knows."""
    if PLACEHOLDER in secret:
        raise StreamflowError(f"{what} still holds the placeholder {PLACEHOLDER}: set a real secret")
