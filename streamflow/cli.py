"""The ``streamflow`` command.

Exit codes: 0 success, 1 a run that failed (a component could not start), 2 bad input
(one line on stderr, never a traceback), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from streamflow import __version__
from streamflow.config import parse_overrides
from streamflow.errors import StreamflowError
from streamflow.executor import TaskFailed
from streamflow.loader import load_topology
from streamflow.local import run_local

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamflow",
        description="Real-time stream processing in the model of Apache Storm.",
    )
    parser.add_argument("--version", action="version", version=f"streamflow {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="level of the log lines written to stderr (default WARNING)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    local = commands.add_parser(
        "local", help="run a topology in this process, with no servers",
        description="Run the topology that FILE defines (a function build(config) returning "
                    "a Topology) in one process. Ends when every spout is exhausted and every "
                    "tuple tree is done, after --timeout, or on Ctrl-C; then prints a summary "
                    "per component on stderr.",
    )
    local.add_argument("file", metavar="FILE", help="Python file defining build(config)")
    local.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                       help="config value, given to build() and laid over the topology's config; "
                            "VALUE is read as JSON when it parses (4, true, null), else as a string")
    local.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                       help="stop after this many seconds (default: run until finished)")
    local.set_defaults(handler=_local)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _local(args: argparse.Namespace) -> int:
    topology = load_topology(args.file, parse_overrides(args.config))
    result = run_local(topology, timeout=args.timeout)
    print(result.summary(), file=sys.stderr)
    return EXIT_INTERRUPTED if result.outcome == "interrupted" else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except StreamflowError as exc:
        print(f"streamflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskFailed as exc:
        print(f"streamflow: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
