"""The command line a supervisor starts a worker with, defined once.

The supervisor builds it (:meth:`WorkerCommand.to_argv`), the ``streamflow worker``
command declares and reads it (:meth:`WorkerCommand.add_arguments`,
:meth:`WorkerCommand.from_args`), and a supervisor that replaces a killed one finds the
workers it left by parsing their command lines back (:meth:`WorkerCommand.from_argv`).
The ZooKeeper credential is not on it (``ps`` shows command lines): the worker reads it
from its environment.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from streamflow.records import slot_key

MODULE = "streamflow.cli"
COMMAND = "worker"


@dataclass(frozen=True)
class WorkerCommand:
    """What a supervisor tells a worker: where ZooKeeper is, and which slot of which
    topology it runs, with its code unpacked in ``code_dir``."""

    zk: str
    zk_root: str
    zk_session_timeout: float
    topology_id: str
    supervisor: str
    host: str
    port: int
    code_dir: Path

    @property
    def slot(self) -> str:
        return slot_key(self.supervisor, self.port)

    def to_argv(self, python: str = sys.executable) -> list[str]:
        """The worker's whole command line."""
        return [
            python, "-m", MODULE, COMMAND,
            "--zk", self.zk, "--zk-root", self.zk_root, "--zk-session-timeout", repr(self.zk_session_timeout),
            "--topology", self.topology_id, "--supervisor", self.supervisor,
            "--host", self.host, "--port", str(self.port), "--code-dir", str(self.code_dir),
        ]

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Declare the options of :meth:`to_argv` (after ``worker``) on ``parser``."""
        for option in ("--zk", "--topology", "--supervisor", "--host", "--code-dir"):
            parser.add_argument(option, required=True)
        parser.add_argument("--zk-root", default="/streamflow")
        parser.add_argument("--zk-session-timeout", type=float, default=10.0)
        parser.add_argument("--port", type=int, required=True)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerCommand:
        """The command from the options :meth:`add_arguments` declared, once parsed."""
        return cls(args.zk, args.zk_root, args.zk_session_timeout, args.topology, args.supervisor,
                   args.host, args.port, Path(args.code_dir))

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> WorkerCommand | None:
        """The command a process's command line (``/proc/PID/cmdline``, split) runs, or
        None if it is no worker's."""
        if list(argv[1:4]) != ["-m", MODULE, COMMAND]:
            return None
        parser = _Parser(add_help=False)
        cls.add_arguments(parser)
        try:
            args, _ = parser.parse_known_args(argv[4:])
        except ValueError:
            return None
        return cls.from_args(args)


class _Parser(argparse.ArgumentParser):
    """A parser that raises ValueError where argparse would exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)
