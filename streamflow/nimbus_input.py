"""What nimbus's API accepts: each operation's JSON body checked into typed values.

Every check is a pure function that returns the values or raises
:class:`~streamflow.httpapi.ApiError` (400) with one line naming the field and what it
must be, so that no value nimbus stores can later stop a scheduling pass. Loading a
submitted package's topology (:func:`describe`) runs the user's code, in a child process.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from streamflow.errors import StreamflowError
from streamflow.httpapi import ApiError
from streamflow.package import check, unpack
from streamflow.records import TopologyRecord
from streamflow.sandbox import Limits, Timeout, run_limited

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DESCRIBE_TIMEOUT_SECS = 60
DESCRIBE_LIMITS = Limits(memory_mb=2048, cpu_secs=DESCRIBE_TIMEOUT_SECS)
"""What loading a submitted topology may use: a module that allocates without end or spins
is stopped by the kernel, not left to slow nimbus's machine."""
MAX_PARALLELISM = 1024
"""The most tasks a rebalance gives one component."""
MAX_TASKS = 8192
"""The most tasks a rebalance gives a topology, over all its components."""
MAX_WAIT_SECS = 86400.0
"""The longest ``kill --wait``."""


def _refuse(message: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message)


@dataclass(frozen=True)
class Submission:
    name: str
    file: str
    config: dict[str, Any]
    package: bytes


def parse_submission(body: dict[str, Any]) -> Submission:
    """A submit body: ``name``, ``file`` (the entry file in the package), ``package``
    (a base64 zip), ``config`` (an object) and ``workers`` (which sets
    ``topology.workers``)."""
    name = body.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _refuse(f"invalid topology name {name!r} (letters, digits, '_', '.', '-'; at most 64)")
    file, config = body.get("file"), body.get("config")
    config = {} if config is None else config
    if not isinstance(file, str) or not isinstance(body.get("package"), str) or not isinstance(config, dict):
        raise _refuse("submit needs file (text), package (base64) and config (an object)")
    workers = body.get("workers")
    if workers is not None:
        config["topology.workers"] = workers
    try:
        package = base64.b64decode(body["package"], validate=True)
    except ValueError:
        raise _refuse("package is not base64") from None
    return Submission(name, file, config, package)


def describe(package: bytes, file: str, config: dict[str, Any]) -> dict[str, Any]:
    """Load the submitted code in a child process (user code never runs in nimbus) and
    return its description, or refuse it with the same one line as the CLI.

    The child runs under :data:`DESCRIBE_LIMITS`, with a clean environment (nimbus's
    credentials stay in nimbus) and its own process group, killed whole after
    :data:`DESCRIBE_TIMEOUT_SECS`."""
    try:
        check(package, file)
    except StreamflowError as exc:
        raise _refuse(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="streamflow-submit-") as tmp:
        try:
            unpack(package, Path(tmp))
        except (StreamflowError, OSError) as exc:
            raise _refuse(f"package cannot be unpacked: {exc}") from None
        args = [x for k, v in config.items() for x in ("-c", f"{k}={json.dumps(v)}")]
        try:
            command = [sys.executable, "-m", "streamflow.cli", "describe", str(Path(tmp) / file), *args]
            result = run_limited(command, DESCRIBE_LIMITS, DESCRIBE_TIMEOUT_SECS, Path(tmp))
        except Timeout:
            raise _refuse(f"loading {file} took over {DESCRIBE_TIMEOUT_SECS} s") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"cannot load the topology (exit {result.returncode})"]
        reason = lines[-1]
        raise _refuse(reason.removeprefix("streamflow: error: "))
    try:
        return json.loads(result.stdout)  # type: ignore[no-any-return]
    except ValueError:
        raise _refuse(f"loading {file} printed no description") from None


def kill_wait(body: dict[str, Any], record: TopologyRecord) -> float:
    """Seconds a kill lets tuples in flight finish: ``wait``, else the message timeout.
    A finite number from 0 to :data:`MAX_WAIT_SECS` (NaN, infinity or a negative number
    would make the topology's removal time meaningless)."""
    wait = body.get("wait")
    if wait is None:
        wait = record.setting("topology.message.timeout.secs", 30)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not math.isfinite(wait) \
            or not 0 <= wait <= MAX_WAIT_SECS:
        raise _refuse(f"wait must be a number of seconds from 0 to {MAX_WAIT_SECS:g}, got {wait!r}")
    return float(wait)


@dataclass(frozen=True)
class Rebalance:
    workers: int | None
    parallelism: dict[str, int]


def parse_rebalance(body: dict[str, Any], record: TopologyRecord) -> Rebalance:
    """A rebalance body: ``workers`` (an integer >= 1) and ``parallelism`` (component ->
    tasks, each from 1 to :data:`MAX_PARALLELISM`, the topology's tasks then at most
    :data:`MAX_TASKS`), checked against the topology's components and state."""
    workers = body.get("workers")
    parallelism = body.get("parallelism") or {}
    if workers is not None and (not _is_int(workers) or not 1 <= workers <= MAX_TASKS):
        raise _refuse(f"workers must be an integer from 1 to {MAX_TASKS}, got {workers!r}")
    if not isinstance(parallelism, dict):
        raise _refuse("parallelism must be an object of component: tasks")
    components = record.components
    for component, n in parallelism.items():
        if component not in components:
            raise _refuse(f"topology {record.name!r} has no component {component!r}")
        if not _is_int(n) or not 1 <= n <= MAX_PARALLELISM:
            raise _refuse(f"component {component!r}: parallelism must be an integer from 1 to "
                          f"{MAX_PARALLELISM}, got {n!r}")
    total = _total_tasks(record, parallelism)
    if total > MAX_TASKS:
        raise _refuse(f"topology {record.name!r} would have {total} tasks, over the {MAX_TASKS} allowed")
    _check_state_rebalance(record, parallelism)
    return Rebalance(workers, parallelism)


def _total_tasks(record: TopologyRecord, parallelism: dict[str, int]) -> int:
    """The topology's tasks over all its components once ``parallelism`` applies."""
    counts = {c: spec["parallelism"] for c, spec in record.components.items()}
    return sum({**counts, **record.parallelism, **parallelism}.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_state_rebalance(record: TopologyRecord, parallelism: dict[str, int]) -> None:
    """A rebalance restarts workers: refuse one that would lose state kept in their memory,
    or give a stateful component more tasks than its key groups."""
    stateful = sorted(c for c, spec in record.components.items() if spec.get("stateful"))
    if not stateful:
        return
    if record.setting("topology.state.provider", "memory") == "memory":
        raise _refuse(f"topology {record.name!r} keeps the state of {', '.join(stateful)} in its workers' memory "
                      "(topology.state.provider=memory), which a rebalance would lose: submit it with "
                      "a durable provider (-c topology.state.provider=redis)")
    groups = record.setting("topology.state.key.groups", 128)
    for component, n in parallelism.items():
        if component in stateful and n > groups:
            raise _refuse(f"component {component!r}: parallelism {n} exceeds its {groups} key groups "
                          "(topology.state.key.groups)")
