"""The parts a topology is made of, as plain data: components and their subscriptions.

Validation reads these, and the :class:`~streamflow.topology.Topology` holds them; keeping
them here lets validation check a topology without importing the module that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from streamflow.components import Component, Stateful
from streamflow.tuples import DEFAULT_STREAM


@dataclass(frozen=True)
class Subscription:
    """A bolt's input: a stream of a source component, routed by a grouping."""

    source: str
    stream: str
    grouping: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ComponentSpec:
    """One spout or bolt: its prototype instance, task count, inputs and own config."""

    name: str
    kind: str  # "spout" or "bolt", as declared
    component: Component
    parallelism: int
    inputs: tuple[Subscription, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_spout(self) -> bool:
        return self.kind == "spout"

    @property
    def is_stateful(self) -> bool:
        return isinstance(self.component, Stateful)

    @property
    def outputs(self) -> dict[str, tuple[str, ...]]:
        """Declared output streams, normalised to ``{stream: fields}``.

        Assumes a validated topology; validation reports malformed declarations.
        """
        declared = self.component.outputs
        if isinstance(declared, Mapping):
            return {stream: tuple(fields) for stream, fields in declared.items()}
        return {DEFAULT_STREAM: tuple(declared)}


def acker_count(config: Mapping[str, Any]) -> int:
    """Acker tasks: ``topology.acker.executors``, or one per worker when unset."""
    configured = config.get("topology.acker.executors")
    if configured is None:
        return int(config.get("topology.workers") or 1)
    return int(configured)
