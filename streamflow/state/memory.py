"""The memory state provider: state kept in the worker's own memory.

The default in local mode and for tests. It is not durable: state lives as long as the
process, so it survives rollbacks within a run (a failed tuple, a timed-out tree) but not
a worker's restart. In a cluster, use ``redis``.
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Mapping

import orjson

from streamflow.state.store import Changes, CheckpointId, Fenced, StateProvider, StateStore, fold


class _Group:
    __slots__ = ("data", "pending", "pending_at")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.pending: dict[bytes, bytes | None] = {}
        self.pending_at: CheckpointId | None = None

    def settle(self, upto: CheckpointId | None) -> None:
        """Fold pending changes at or below ``upto``; discard later ones."""
        if self.pending_at is not None:
            if upto is not None and self.pending_at <= upto:
                fold(self.data, self.pending)
            self.pending, self.pending_at = {}, None


class MemoryStore(StateStore):
    def __init__(self, provider: MemoryProvider) -> None:
        self._provider = provider
        self._groups: dict[int, _Group] = {}

    def _group(self, group: int) -> _Group:
        found = self._groups.get(group)
        if found is None:
            found = self._groups[group] = _Group()
        return found

    def restore(self, upto: CheckpointId | None, groups: Iterable[int]) -> dict[bytes, bytes]:
        data: dict[bytes, bytes] = {}
        with self._provider.lock:
            for g in groups:
                group = self._group(g)
                group.settle(upto)
                data.update(group.data)
        return data

    def prepare(self, at: CheckpointId, changes: Changes, committed: CheckpointId | None) -> None:
        with self._provider.lock:
            self._provider.check_epoch(at[0])
            for g, group_changes in changes.items():
                group = self._group(g)
                group.settle(committed)
                group.pending, group.pending_at = dict(group_changes), at

    def commit(self, at: CheckpointId, groups: Iterable[int]) -> None:
        with self._provider.lock:
            for g in groups:
                group = self._groups.get(g)
                if group is not None and group.pending_at is not None and group.pending_at <= at:
                    group.settle(at)


class MemoryProvider(StateProvider):
    """One run's state, shared by the tasks of this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._stores: dict[str, MemoryStore] = {}
        self._epoch = 0
        self._checkpoint: bytes | None = None
        """The record as JSON, as a durable store keeps it: what JSON cannot hold fails here too."""

    def store(self, component: str) -> StateStore:
        with self.lock:
            found = self._stores.get(component)
            if found is None:
                found = self._stores[component] = MemoryStore(self)
            return found

    def check_epoch(self, epoch: int) -> None:
        if epoch < self._epoch:
            raise Fenced(f"checkpoint of epoch {epoch} refused: epoch {self._epoch} has begun")

    def begin_epoch(self) -> int:
        with self.lock:
            self._epoch += 1
            return self._epoch

    def read_checkpoint(self) -> dict[str, Any] | None:
        with self.lock:
            return None if self._checkpoint is None else orjson.loads(self._checkpoint)  # type: ignore[no-any-return]

    def write_checkpoint(self, record: Mapping[str, Any]) -> None:
        with self.lock:
            self.check_epoch(int(record["epoch"]))
            self._checkpoint = orjson.dumps(record)

    def close(self) -> None:
        """Nothing to release: the state goes with the provider."""
