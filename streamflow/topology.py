"""The topology as plain data, and the builder that declares it.

Building a topology runs nothing: :class:`Topology` is a frozen description (components,
their parallelism, declared streams and subscriptions) that validation, the local runner,
nimbus's scheduler and workers all read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import orjson

from streamflow.components import BoltBase, Component, SpoutBase
from streamflow.config import validate_config
from streamflow.errors import ConfigError, TopologyError
from streamflow.specs import ComponentSpec, Subscription, acker_count
from streamflow.tuples import DEFAULT_STREAM
from streamflow.validation import validate

ACKER_COMPONENT = "__acker"
CHECKPOINT_COMPONENT = "__checkpoint"
"""The one task that coordinates checkpoints, in topologies with a stateful bolt."""


@dataclass(frozen=True)
class Topology:
    """A validated DAG of components plus its config. Build one with :class:`TopologyBuilder`."""

    name: str
    components: Mapping[str, ComponentSpec]
    config: Mapping[str, Any]

    @property
    def spouts(self) -> list[ComponentSpec]:
        return [c for c in self.components.values() if c.is_spout]

    @property
    def bolts(self) -> list[ComponentSpec]:
        return [c for c in self.components.values() if not c.is_spout]

    @property
    def is_stateful(self) -> bool:
        """Whether a bolt keeps checkpointed state: the topology then checkpoints."""
        return any(spec.is_stateful for spec in self.components.values())

    def subscribers(self, source: str, stream: str) -> list[tuple[ComponentSpec, Subscription]]:
        """The bolts subscribed to ``source``'s ``stream``, with their subscription."""
        return [
            (spec, sub)
            for spec in self.components.values()
            for sub in spec.inputs
            if sub.source == source and sub.stream == stream
        ]

    def with_config(self, overrides: Mapping[str, Any]) -> Topology:
        """A copy whose config has ``overrides`` on top (``-c`` values win), re-validated."""
        return _validated(replace(self, config={**self.config, **overrides}))

    @property
    def tracks_trees(self) -> bool:
        """Whether the trees of spout tuples emitted with a message id are tracked to
        completion (acking on): by the ackers, or in a checkpointed topology by its
        checkpoints (:mod:`streamflow.collector`)."""
        return acker_count(self.config) > 0

    def acker_count(self) -> int:
        """Acker tasks (see :func:`task_layout`)."""
        return len(self.task_layout()[ACKER_COMPONENT])

    def task_layout(self) -> dict[str, tuple[int, ...]]:
        """Task ids per component (see :func:`task_layout`)."""
        return task_layout(
            {name: spec.parallelism for name, spec in self.components.items()}, acker_count(self.config),
            self.is_stateful,
        )

    def with_parallelism(self, parallelism: Mapping[str, int]) -> Topology:
        """A copy with some components' task counts changed (a rebalance), re-validated."""
        for name in parallelism:
            if name not in self.components:
                raise TopologyError(f"topology {self.name!r}: no component {name!r} to rebalance")
        components = {
            name: replace(spec, parallelism=parallelism.get(name, spec.parallelism))
            for name, spec in self.components.items()
        }
        return _validated(replace(self, components=MappingProxyType(components)))

    def describe(self) -> dict[str, Any]:
        """The topology as JSON data: what nimbus stores, schedules and shows.

        Config values that JSON cannot hold are given as their ``repr``.
        """
        components = {
            name: {
                "kind": spec.kind,
                "class": f"{type(spec.component).__module__}.{type(spec.component).__qualname__}",
                "parallelism": spec.parallelism,
                "stateful": spec.is_stateful,
                "outputs": {stream: list(fields) for stream, fields in spec.outputs.items()},
                "inputs": [
                    {"source": s.source, "stream": s.stream, "grouping": s.grouping,
                     "fields": list(s.fields)}
                    for s in spec.inputs
                ],
            }
            for name, spec in self.components.items()
        }
        config = orjson.loads(orjson.dumps(dict(self.config), default=repr))
        layout = {name: list(tasks) for name, tasks in self.task_layout().items()}
        return {"name": self.name, "components": components, "config": config, "tasks": layout}


def task_layout(parallelism: Mapping[str, int], ackers: int, checkpoints: bool = False
                ) -> dict[str, tuple[int, ...]]:
    """Task ids per component, as Storm numbers them: components sorted by name, ids from
    1, the ``ackers``, then the checkpoint coordinator when the topology ``checkpoints``
    (and then no acker: its trees complete at commit). Pure, so nimbus (from a topology's
    description) and every worker (from its code) derive the same layout."""
    if checkpoints:
        ackers = 0
    layout: dict[str, tuple[int, ...]] = {}
    next_id = 1
    for name in sorted(parallelism):
        n = parallelism[name]
        layout[name] = tuple(range(next_id, next_id + n))
        next_id += n
    layout[ACKER_COMPONENT] = tuple(range(next_id, next_id + ackers))
    if checkpoints:
        layout[CHECKPOINT_COMPONENT] = (next_id + ackers,)
    return layout


class BoltDeclarer:
    """Returned by :meth:`TopologyBuilder.set_bolt`: declares the bolt's inputs."""

    def __init__(self, inputs: list[Subscription]) -> None:
        self._inputs = inputs

    def grouping(
        self, source: str, grouping: str, fields: Sequence[str] = (), stream: str = DEFAULT_STREAM
    ) -> BoltDeclarer:
        """Subscribe to ``source``'s ``stream`` with a grouping, by its name in
        :data:`~streamflow.groupings.GROUPINGS`."""
        names = (fields,) if isinstance(fields, str) else tuple(fields)
        self._inputs.append(Subscription(source, stream, grouping, names))
        return self

    def shuffle_grouping(self, source: str, stream: str = DEFAULT_STREAM) -> BoltDeclarer:
        """Tuples are spread evenly, round-robin, over the bolt's tasks."""
        return self.grouping(source, "shuffle", stream=stream)

    def fields_grouping(
        self, source: str, fields: Sequence[str], stream: str = DEFAULT_STREAM
    ) -> BoltDeclarer:
        """Tuples with equal values in ``fields`` go to the same task (stable hash)."""
        return self.grouping(source, "fields", fields, stream)

    def all_grouping(self, source: str, stream: str = DEFAULT_STREAM) -> BoltDeclarer:
        """Every task receives every tuple."""
        return self.grouping(source, "all", stream=stream)

    def global_grouping(self, source: str, stream: str = DEFAULT_STREAM) -> BoltDeclarer:
        """Every tuple goes to the bolt's task with the lowest id."""
        return self.grouping(source, "global", stream=stream)

    def direct_grouping(self, source: str, stream: str = DEFAULT_STREAM) -> BoltDeclarer:
        """The emitter picks the task with ``emit_direct``."""
        return self.grouping(source, "direct", stream=stream)

    def local_or_shuffle_grouping(self, source: str, stream: str = DEFAULT_STREAM) -> BoltDeclarer:
        """Shuffle among the bolt's tasks in the emitter's worker, if any; else among all."""
        return self.grouping(source, "local_or_shuffle", stream=stream)

    def partial_key_grouping(
        self, source: str, fields: Sequence[str], stream: str = DEFAULT_STREAM
    ) -> BoltDeclarer:
        """Each key goes to the less loaded of two tasks chosen by hashing (key splitting)."""
        return self.grouping(source, "partial_key", fields, stream)

    def none_grouping(self, source: str, stream: str = DEFAULT_STREAM) -> BoltDeclarer:
        """No preference: routed as shuffle, as Storm does."""
        return self.grouping(source, "none", stream=stream)


class TopologyBuilder:
    """Declares spouts and bolts, then :meth:`build` validates and freezes them.

    >>> builder = TopologyBuilder("wordcount")
    >>> builder.set_spout("sentences", SentenceSpout(), parallelism=1)
    >>> builder.set_bolt("split", SplitBolt(), parallelism=2).shuffle_grouping("sentences")
    >>> builder.set_bolt("count", CountBolt(), parallelism=2).fields_grouping("split", ["word"])
    >>> topology = builder.build({"topology.workers": 2})
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._declared: list[
            tuple[str, str, Component, int, list[Subscription], Mapping[str, Any] | None]
        ] = []

    def set_spout(
        self, name: str, spout: SpoutBase, parallelism: int = 1, config: Mapping[str, Any] | None = None
    ) -> None:
        """Declare a spout run by ``parallelism`` tasks, with optional per-component config."""
        self._declared.append((name, "spout", spout, parallelism, [], config))

    def set_bolt(
        self, name: str, bolt: BoltBase, parallelism: int = 1, config: Mapping[str, Any] | None = None
    ) -> BoltDeclarer:
        """Declare a bolt; subscribe it to its inputs on the returned declarer."""
        inputs: list[Subscription] = []
        self._declared.append((name, "bolt", bolt, parallelism, inputs, config))
        return BoltDeclarer(inputs)

    def build(self, config: Mapping[str, Any] | None = None) -> Topology:
        """Validate the declarations and return the frozen :class:`Topology`.

        Raises :class:`~streamflow.errors.TopologyError` (or ``ConfigError``) with one
        line that names the component and the problem.
        """
        components: dict[str, ComponentSpec] = {}
        for name, kind, component, parallelism, inputs, comp_config in self._declared:
            if name in components:
                raise TopologyError(f"topology {self.name!r}: component {name!r} is declared twice")
            components[name] = ComponentSpec(
                name, kind, component, parallelism, tuple(inputs),
                MappingProxyType(_mapping(comp_config, name)),
            )
        return _validated(Topology(self.name, MappingProxyType(components), _mapping(config)))


def _mapping(config: Mapping[str, Any] | None, component: str | None = None) -> dict[str, Any]:
    """A copy of a config argument, refusing what is not a mapping with a ConfigError."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        where = f"component {component!r}: " if component is not None else ""
        raise ConfigError(f"{where}config must be a mapping, got {type(config).__name__}")
    return dict(config)


def _validated(topology: Topology) -> Topology:
    """Validate ``topology`` and return it with the config defaults filled in, read-only."""
    validate(topology)
    return replace(topology, config=MappingProxyType(validate_config(topology.config)))
