"""The command line a supervisor starts a worker with, defined once.

The supervisor builds it (:meth:`WorkerCommand.to_argv`), the ``streamflow worker``
command declares and reads it (:meth:`WorkerCommand.add_arguments`,
:meth:`WorkerCommand.from_args`), and a supervisor that replaces a killed one finds the
workers it left by parsing their command lines back (:meth:`WorkerCommand.from_argv`).
Secrets are not on it (``ps`` shows command lines), nor in the worker's environment
(user code reads ``os.environ``): the supervisor writes them to the worker's stdin as one
JSON line (:class:`WorkerSecrets`), which the worker reads before it loads user code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

from streamflow.errors import StreamflowError
from streamflow.records import slot_key

MODULE = "streamflow.cli"
COMMAND = "worker"


class TlsFiles(NamedTuple):
    """The PEM files of a worker's TLS links (paths, not secrets: the key file's
    permissions guard the key): its certificate chain, its key, the CA of its peers."""

    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class WorkerSecrets:
    """What a worker must know and user code must not read: the ZooKeeper credential
    (``user:password``) and the API token that its ``/metrics`` then needs."""

    zk_auth: str | None = None
    token: str | None = None

    def encode(self) -> bytes:
        """The one line a supervisor writes to a worker's stdin."""
        return json.dumps({"zk_auth": self.zk_auth, "token": self.token}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> WorkerSecrets:
        """The secrets of :meth:`encode`'s line; none from an empty one (stdin at its end).
        Raises :class:`StreamflowError` for anything else."""
        if not line.strip():
            return cls()
        try:
            fields = json.loads(line)
            if not isinstance(fields, dict) or set(fields) != {"zk_auth", "token"} or not all(
                    value is None or isinstance(value, str) for value in fields.values()):
                raise ValueError("expected zk_auth and token")
        except ValueError as exc:
            raise StreamflowError(f"the secrets line on stdin is malformed: {exc}") from None
        return cls(fields["zk_auth"], fields["token"])

    @classmethod
    def read_stdin(cls) -> WorkerSecrets:
        """Read the secrets line from stdin, then put ``/dev/null`` in stdin's place, so
        that nothing the worker runs later can read what its supervisor wrote there. The
        line is read a byte at a time, past ``sys.stdin``'s buffer, which keeps nothing."""
        line = b""
        while not line.endswith(b"\n") and (byte := os.read(0, 1)):
            line += byte
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        return cls.decode(line)


@dataclass(frozen=True)
class WorkerCommand:
    """What a supervisor tells a worker: where ZooKeeper is, and which slot of which
    topology it runs, with its code unpacked in ``code_dir``; the files of its TLS links,
    if any; whether its ``/metrics`` is open without the API token."""

    zk: str
    zk_root: str
    zk_session_timeout: float
    topology_id: str
    supervisor: str
    host: str
    port: int
    code_dir: Path
    tls: TlsFiles | None = None
    metrics_open: bool = False

    @property
    def slot(self) -> str:
        return slot_key(self.supervisor, self.port)

    def to_argv(self, python: str = sys.executable) -> list[str]:
        """The worker's whole command line."""
        tls = ["--tls-cert", self.tls.cert, "--tls-key", self.tls.key, "--tls-ca", self.tls.ca] if self.tls else []
        return [
            python, "-m", MODULE, COMMAND,
            "--zk", self.zk, "--zk-root", self.zk_root, "--zk-session-timeout", repr(self.zk_session_timeout),
            "--topology", self.topology_id, "--supervisor", self.supervisor,
            "--host", self.host, "--port", str(self.port), "--code-dir", str(self.code_dir),
            *tls,
            *(["--metrics-open"] if self.metrics_open else []),
        ]

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Declare the options of :meth:`to_argv` (after ``worker``) on ``parser``."""
        for option in ("--zk", "--topology", "--supervisor", "--host", "--code-dir"):
            parser.add_argument(option, required=True)
        parser.add_argument("--zk-root", default="/streamflow")
        parser.add_argument("--zk-session-timeout", type=float, default=10.0)
        parser.add_argument("--port", type=int, required=True)
        for option in ("--tls-cert", "--tls-key", "--tls-ca"):
            parser.add_argument(option)
        parser.add_argument("--metrics-open", action="store_true")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WorkerCommand:
        """The command from the options :meth:`add_arguments` declared, once parsed."""
        files = (args.tls_cert, args.tls_key, args.tls_ca)
        tls = TlsFiles(*files) if all(files) else None
        return cls(args.zk, args.zk_root, args.zk_session_timeout, args.topology, args.supervisor,
                   args.host, args.port, Path(args.code_dir), tls, args.metrics_open)

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
