"""Checks a topology before anything runs; each problem is one line naming the component.

Pure: reads the :class:`~streamflow.topology.Topology` data only. The builder, the CLI
(before upload) and nimbus (on submit) all call :func:`validate`, so a topology is refused
with the same reason wherever it is checked.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol

from streamflow.components import AsyncBolt, BasicBolt, Bolt, BoltBase, SpoutBase, Stateful
from streamflow.config import validate_config
from streamflow.errors import ConfigError, TopologyError
from streamflow.groupings import GROUPINGS, KEYED_GROUPINGS
from streamflow.specs import ComponentSpec, acker_count

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "1 to 128 letters, digits, '_', '-' or '.', not starting with '.' or '-'"
"""Names become znode paths, file names, metric labels and CLI arguments: a name like
``a/b`` or ``..`` would escape its directory, so only this alphabet is accepted."""


class TopologyData(Protocol):
    """What validation reads of a :class:`~streamflow.topology.Topology`."""

    @property
    def name(self) -> str: ...
    @property
    def components(self) -> Mapping[str, ComponentSpec]: ...
    @property
    def config(self) -> Mapping[str, Any]: ...


def validate(topology: TopologyData) -> None:
    """Raise :class:`TopologyError` or :class:`ConfigError` for the first problem found."""
    name = topology.name
    if not _valid_name(name):
        raise TopologyError(f"topology name {name!r} is invalid ({NAME_RULE})")
    prefix = f"topology {name!r}: "
    try:
        validate_config(topology.config)
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None
    if not any(spec.is_spout for spec in topology.components.values()):
        raise TopologyError(prefix + "it declares no spout")
    outputs = {spec.name: _check_component(spec, prefix) for spec in topology.components.values()}
    for spec in _bolts(topology):
        _check_inputs(spec, outputs, prefix)
    _check_acyclic(topology, prefix)
    _check_state(topology, prefix)


def _bolts(topology: TopologyData) -> list[ComponentSpec]:
    return [spec for spec in topology.components.values() if not spec.is_spout]


def _check_state(topology: TopologyData, prefix: str) -> None:
    """A stateful bolt needs acking, and no more tasks than its key groups."""
    for spec in _bolts(topology):
        if not isinstance(spec.component, Stateful):
            continue
        where = f"{prefix}component {spec.name!r}: "
        if acker_count(topology.config) == 0:
            raise TopologyError(where + "a stateful bolt needs acking (topology.acker.executors > 0)")
        groups = {**topology.config, **spec.config}.get("topology.state.key.groups", 128)
        if spec.parallelism > groups:
            raise TopologyError(f"{where}parallelism {spec.parallelism} exceeds its {groups} key groups "
                                "(topology.state.key.groups)")


def _check_component(spec: ComponentSpec, prefix: str) -> dict[str, tuple[str, ...]]:
    """Check name, kind, parallelism, config and outputs; return the declared streams."""
    where = f"{prefix}component {spec.name!r}: "
    if not _valid_name(spec.name) or spec.name.startswith("__"):
        raise TopologyError(f"{prefix}component name {spec.name!r} is invalid "
                            f"({NAME_RULE}, not starting with '__')")
    expected, kind = (SpoutBase, "Spout") if spec.is_spout else (BoltBase, "Bolt")
    if not isinstance(spec.component, expected):
        raise TopologyError(f"{where}expected a {kind} instance, got {type(spec.component).__name__}")
    if isinstance(spec.component, AsyncBolt) and hasattr(spec.component, "process_batch"):
        raise TopologyError(f"{where}an AsyncBolt awaits process per tuple and never calls process_batch: "
                            "handle batches in a Bolt or BasicBolt")
    if isinstance(spec.component, AsyncBolt) and hasattr(spec.component, "process_columns"):
        raise TopologyError(f"{where}an AsyncBolt awaits process per tuple and never calls process_columns: "
                            "take columns in a Bolt")
    if isinstance(spec.component, BasicBolt) and type(spec.component).process_columns is not Bolt.process_columns:
        raise TopologyError(f"{where}a BasicBolt acks the tuples it processed, and process_columns builds "
                            "none: take columns in a Bolt, which acks them with ack_rows")
    p = spec.parallelism
    if not isinstance(p, int) or isinstance(p, bool) or p < 1:
        raise TopologyError(f"{where}parallelism must be an integer >= 1, got {p!r}")
    try:
        validate_config(spec.config)
    except ConfigError as exc:
        raise ConfigError(where + str(exc)) from None
    return _check_outputs(spec.component.outputs, where)


def _check_outputs(declared: Any, where: str) -> dict[str, tuple[str, ...]]:
    if isinstance(declared, Mapping):
        streams = dict(declared)
    elif isinstance(declared, (list, tuple)):
        streams = {"default": declared}
    else:
        raise TopologyError(f"{where}outputs must be a list of field names or a dict "
                            f"{{stream: [fields]}}, got {declared!r}")
    for stream, fields in streams.items():
        if not _valid_name(stream) or stream.startswith("__"):
            raise TopologyError(f"{where}stream name {stream!r} is invalid "
                                f"({NAME_RULE}, not starting with '__')")
        if not isinstance(fields, (list, tuple)) or not all(_valid_name(f) for f in fields):
            raise TopologyError(f"{where}fields of stream {stream!r} must be a list of names "
                                f"({NAME_RULE}), got {fields!r}")
        if len(set(fields)) != len(fields):
            raise TopologyError(f"{where}stream {stream!r} declares a field twice: {list(fields)}")
    return {stream: tuple(fields) for stream, fields in streams.items()}


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and NAME.fullmatch(name) is not None


def _check_inputs(
    spec: ComponentSpec, outputs: dict[str, dict[str, tuple[str, ...]]], prefix: str
) -> None:
    where = f"{prefix}component {spec.name!r}: "
    if not spec.inputs:
        raise TopologyError(f"{where}bolt subscribes to no input")
    for sub in spec.inputs:
        if sub.source not in outputs:
            raise TopologyError(f"{where}subscribes to unknown component {sub.source!r}")
        if sub.stream not in outputs[sub.source]:
            declared = ", ".join(sorted(outputs[sub.source])) or "none"
            raise TopologyError(f"{where}subscribes to unknown stream {sub.stream!r} of "
                                f"{sub.source!r} (declared: {declared})")
        if sub.grouping not in GROUPINGS:
            raise TopologyError(f"{where}unknown grouping {sub.grouping!r} on input "
                                f"{sub.source!r} (known: {', '.join(GROUPINGS)})")
        declared_fields = outputs[sub.source][sub.stream]
        if sub.grouping in KEYED_GROUPINGS:
            if not sub.fields:
                raise TopologyError(f"{where}{sub.grouping} grouping on {sub.source!r} names no field")
            for f in sub.fields:
                if f not in declared_fields:
                    raise TopologyError(
                        f"{where}{sub.grouping} grouping on undeclared field {f!r} of "
                        f"{sub.source}:{sub.stream} (declared: {', '.join(declared_fields)})")
        elif sub.fields:
            raise TopologyError(f"{where}{sub.grouping} grouping on {sub.source!r} takes no fields")


def _check_acyclic(topology: TopologyData, prefix: str) -> None:
    """Depth-first search for a cycle; report it as ``a -> b -> a``."""
    downstream: dict[str, list[str]] = {name: [] for name in topology.components}
    for spec in _bolts(topology):
        for sub in spec.inputs:
            downstream[sub.source].append(spec.name)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in downstream[node]:
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise TopologyError(f"{prefix}component {nxt!r}: cycle {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(topology.components):
        if name not in state:
            visit(name)
