"""The state providers a topology can name in ``topology.state.provider``.

Kept apart from :mod:`streamflow.state.store`, the interface each provider implements,
so that the interface imports no provider. Another store registers its name here, in
:data:`PROVIDERS`, with a factory taking the namespace and the topology's config.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from streamflow.state.memory import MemoryProvider
from streamflow.state.store import StateProvider

ProviderFactory = Callable[[str, Mapping[str, Any]], StateProvider]


def _memory(namespace: str, config: Mapping[str, Any]) -> StateProvider:
    return MemoryProvider()


def _redis(namespace: str, config: Mapping[str, Any]) -> StateProvider:
    # Imported here: redis-py takes about 85 ms to import, in every process that starts a
    # topology (the CLI, nimbus's describe child, each worker), and most keep state in memory.
    from streamflow.state.redis import RedisProvider

    return RedisProvider(str(config["topology.state.redis.url"]), namespace)


PROVIDERS: dict[str, ProviderFactory] = {"memory": _memory, "redis": _redis}
"""``topology.state.provider`` names and how each opens a topology's provider."""


def open_provider(topology: str, config: Mapping[str, Any]) -> StateProvider:
    """The provider ``config`` names, for ``topology``: its state is kept under
    ``topology.state.namespace``, or the topology's name."""
    namespace = config.get("topology.state.namespace") or topology
    return PROVIDERS[str(config["topology.state.provider"])](namespace, config)
