"""The worker's command line, defined once: what the supervisor builds, the CLI and the
search for orphaned workers read back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamflow.worker_command import WorkerCommand

COMMAND = WorkerCommand("zk1:2181,zk2:2181", "/sf", 3.5, "words-17", "sup1", "10.0.0.5", 6701, Path("/data/code"))


def test_the_command_line_parses_back_to_the_same_command() -> None:
    assert WorkerCommand.from_argv(COMMAND.to_argv()) == COMMAND


def test_the_cli_declares_what_the_command_line_carries() -> None:
    parser = argparse.ArgumentParser()
    WorkerCommand.add_arguments(parser)
    assert WorkerCommand.from_args(parser.parse_args(COMMAND.to_argv()[4:])) == COMMAND


def test_the_credential_is_not_on_the_command_line() -> None:
    assert not any("auth" in part for part in COMMAND.to_argv())


def test_other_command_lines_are_no_workers() -> None:
    assert WorkerCommand.from_argv([sys.executable, "-m", "streamflow.cli", "supervisor", "--zk", "z"]) is None
    assert WorkerCommand.from_argv(["bash"]) is None
    assert WorkerCommand.from_argv([sys.executable, "-m", "streamflow.cli", "worker", "--port", "x"]) is None


def test_a_command_line_read_from_proc_with_its_trailing_nul_parses() -> None:
    argv = "\0".join(COMMAND.to_argv()) + "\0"
    assert WorkerCommand.from_argv(argv.split("\0")) == COMMAND
