"""The state provider interface: where checkpointed state lives between checkpoints.

One small interface (Storm's ``StateProvider``), so that a store is one module and the
executors never know which it is: :mod:`streamflow.state.memory` for local mode and
tests, :mod:`streamflow.state.redis` for durable state; another (a Kafka changelog topic,
say) implements these methods and registers its name in
:data:`streamflow.state.providers.PROVIDERS`.

Checkpoints are two-phase, as in Storm 2. Every stateful task *prepares* checkpoint
``(epoch, txid)``: it writes the changes it made since the last committed checkpoint as
its key groups' *pending* changes, durably. Once every task has prepared, the
checkpoint coordinator *commits* it with one atomic write of the checkpoint record (txid,
time, the spouts' positions): that write is the decision. Tasks then fold their pending
changes into their data; one that dies first has them folded when its key groups are
restored, since pending changes of a checkpoint at or below the committed one are
folded, and later ones (a checkpoint that never committed) are discarded.

``epoch`` fences coordinators: each coordinator that starts (after a restart, or a
rebalance that moves it) begins a new epoch, and a prepare or a checkpoint record of an
older epoch is refused with :class:`Fenced`, so a coordinator that is going away can
commit nothing that the new one's tasks have not restored.

Calls block (network I/O); executors make them on a thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable, Mapping

from streamflow.errors import StreamflowError

CheckpointId = tuple[int, int]
"""``(epoch, txid)``: checkpoints order by epoch, then txid."""

Changes = Mapping[int, Mapping[bytes, bytes | None]]
"""Key group -> encoded key -> encoded value, or None where the key was deleted."""


class Fenced(StreamflowError):
    """A newer coordinator epoch has begun: this checkpoint's writes are refused."""


class StateStore(ABC):
    """One component's state, as key groups of encoded keys and values."""

    @abstractmethod
    def restore(self, upto: CheckpointId | None, groups: Iterable[int]) -> dict[bytes, bytes]:
        """The data of ``groups`` as checkpoint ``upto`` committed it: pending changes of
        a checkpoint at or below ``upto`` are folded in first, later ones discarded (all
        are discarded when ``upto`` is None: nothing was ever committed)."""

    @abstractmethod
    def prepare(self, at: CheckpointId, changes: Changes, committed: CheckpointId | None) -> None:
        """Keep ``changes`` durably as the pending changes of checkpoint ``at`` of their key
        groups. Pending changes a group still holds of a checkpoint at or below
        ``committed`` are folded in first; others are replaced. Raises :class:`Fenced`
        when an epoch newer than ``at``'s has begun."""

    @abstractmethod
    def commit(self, at: CheckpointId, groups: Iterable[int]) -> None:
        """Checkpoint ``at`` committed: fold ``groups``' pending changes of ``at`` or an
        earlier checkpoint into their data."""


class StateProvider(ABC):
    """A topology's state stores and its checkpoint record."""

    @abstractmethod
    def store(self, component: str) -> StateStore:
        """The store of ``component``'s state."""

    @abstractmethod
    def begin_epoch(self) -> int:
        """Start a new coordinator epoch (higher than any before) and return it."""

    @abstractmethod
    def read_checkpoint(self) -> dict[str, Any] | None:
        """The last committed checkpoint's record, or None."""

    @abstractmethod
    def write_checkpoint(self, record: Mapping[str, Any]) -> None:
        """Commit: make ``record`` (``epoch``, ``txid``, ``time``, ``positions``) the last
        committed checkpoint, atomically. Raises :class:`Fenced` when an epoch newer
        than ``record["epoch"]`` has begun."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


def fold(data: dict[bytes, bytes], changes: Mapping[bytes, bytes | None]) -> None:
    """Apply ``changes`` to ``data``: a value sets its key, None deletes it."""
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
