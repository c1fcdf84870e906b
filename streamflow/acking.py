"""Storm's XOR acking, as pure bookkeeping with no I/O.

Every spout tuple emitted with a message id gets a random 64-bit *root* id; every edge of
its tuple tree (a tuple sent to one task) gets a random 64-bit *edge* id. The acker keeps
one 64-bit value per root: the spout's ``init`` XORs in the edges it sent, and each bolt's
``ack`` of a tuple XORs in that tuple's edge and the edges of the tuples it anchored to
it. Every edge therefore enters the value exactly twice and the value returns to zero
exactly when the whole tree is processed, in whatever order the messages arrive
(the chance of reaching zero early is 2**-64 per update).

:class:`AckerState` is the acker task's side, :class:`PendingTrees` the spout task's side
(message timeouts and max-spout-pending). Both rely on dicts keeping insertion order, so
the oldest entries are at the front and expiry stops at the first entry still young.
"""

from __future__ import annotations

import random
from typing import Any, Collection, Iterable, Iterator, Mapping

from streamflow.inbox import ACK_ACK, ACK_FAIL, ACK_INIT, Message

new_id = random.Random(random.SystemRandom().getrandbits(64)).getrandbits
"""``new_id(64)``: a random 64-bit root or edge id (a fast PRNG seeded from the OS)."""

PENDING, COMPLETED, FAILED = 0, 1, 2
"""What :meth:`AckerState.init` reports about a tree."""

Outcomes = dict[int, list[int]]
"""Spout task -> root ids of its trees that completed (or failed)."""


class AckerState:
    """Root id -> [xor value or None once failed, spout task or None, time first seen].

    An ``ack`` or ``fail`` may arrive before its ``init`` (they travel on different
    paths); the entry then waits for ``init`` to name the spout task to tell.
    """

    __slots__ = ("_trees",)

    def __init__(self) -> None:
        self._trees: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._trees)

    def init(self, root: int, xor: int, spout_task: int, now: float) -> int:
        """The spout emitted ``root`` with edges XORing to ``xor``: PENDING, COMPLETED or FAILED."""
        entry = self._trees.get(root)
        if entry is None:
            self._trees[root] = [xor, spout_task, now]
            return PENDING
        if entry[0] is None:
            del self._trees[root]
            return FAILED
        entry[0] ^= xor
        entry[1] = spout_task
        if entry[0] == 0:
            del self._trees[root]
            return COMPLETED
        return PENDING

    def ack(self, root: int, xor: int, now: float) -> int | None:
        """A bolt acked edges of ``root``. Returns the spout task if the tree completed."""
        done: dict[int, list[int]] = {}
        self.ack_all({root: xor}, now, done)
        return next(iter(done), None)

    def ack_all(self, acks: Mapping[int, int], now: float, done: dict[int, list[int]]) -> None:
        """:meth:`ack` of each root -> xor of a bolt's ack message, in one call; the roots
        of completed trees are added to ``done`` under their spout task."""
        trees = self._trees
        for root, xor in acks.items():
            entry = trees.get(root)
            if entry is None:
                trees[root] = [xor, None, now]
            elif entry[0] is not None:
                entry[0] ^= xor
                if entry[0] == 0 and entry[1] is not None:
                    del trees[root]
                    done.setdefault(entry[1], []).append(root)

    def fail(self, root: int, now: float) -> int | None:
        """A bolt failed a tuple of ``root``. Returns the spout task to tell, if known yet;
        otherwise the tree is marked failed and its ``init`` will report FAILED."""
        entry = self._trees.get(root)
        if entry is not None and entry[1] is not None:
            del self._trees[root]
            return entry[1]  # type: ignore[no-any-return]
        if entry is None:
            self._trees[root] = [None, None, now]
        else:
            entry[0] = None
        return None

    def apply(self, messages: Iterable[Message], now: float) -> tuple[Outcomes, Outcomes]:
        """Take in a batch of the acker's inbox messages (ACK_INIT, ACK_ACK, ACK_FAIL, in
        order) received at ``now``. Returns the trees they completed and the trees they
        failed, by spout task: what to tell each spout task, one message each."""
        done: Outcomes = {}
        failed: Outcomes = {}
        for kind, payload in messages:
            if kind == ACK_ACK:
                self.ack_all(payload, now, done)
            elif kind == ACK_INIT:
                for root, xor, spout in payload:
                    outcome = self.init(root, xor, spout, now)
                    if outcome == COMPLETED:
                        done.setdefault(spout, []).append(root)
                    elif outcome == FAILED:
                        failed.setdefault(spout, []).append(root)
            elif kind == ACK_FAIL:
                for root in payload:
                    spout = self.fail(root, now)
                    if spout is not None:
                        failed.setdefault(spout, []).append(root)
            else:
                raise ValueError(f"an acker cannot take a {kind!r} message")
        return done, failed

    def expire(self, cutoff: float) -> int:
        """Forget trees first seen before ``cutoff`` (the spout has timed them out). Returns how many."""
        old = []
        for root, entry in self._trees.items():
            if entry[2] >= cutoff:
                break
            old.append(root)
        for root in old:
            del self._trees[root]
        return len(old)


class PendingTrees:
    """A spout task's tuple trees in flight: root id -> (message id, emit time).

    ``len()`` is what ``topology.max.spout.pending`` bounds.
    """

    __slots__ = ("_trees",)

    def __init__(self) -> None:
        self._trees: dict[int, tuple[Any, float]] = {}

    def __len__(self) -> int:
        return len(self._trees)

    def add(self, root: int, msg_id: Any, now: float) -> None:
        self._trees[root] = (msg_id, now)

    def __contains__(self, root: int) -> bool:
        return root in self._trees

    def take_all(self) -> list[tuple[int, Any]]:
        """Remove every tree and return (root, message id) of each, oldest first."""
        trees, self._trees = self._trees, {}
        return [(root, msg_id) for root, (msg_id, _) in trees.items()]

    def take_before(self, cutoff: float, keep: Collection[int] = ()) -> list[tuple[Any, float]]:
        """Remove the trees emitted before ``cutoff`` but those in ``keep``; (message id,
        emit time) of each."""
        old = [root for root in self.emitted_before(cutoff) if root not in keep]
        return [self._trees.pop(root) for root in old]

    def emitted_before(self, cutoff: float) -> list[int]:
        """The roots of trees emitted before ``cutoff``, left in place."""
        old = []
        for root, (_, emitted) in self._trees.items():
            if emitted >= cutoff:
                break
            old.append(root)
        return old

    def complete(self, root: int) -> tuple[Any, float] | None:
        """Remove ``root`` and return (message id, emit time), or None if it already timed out."""
        return self._trees.pop(root, None)

    def expired(self, cutoff: float) -> Iterator[Any]:
        """Remove and yield the message ids of trees emitted before ``cutoff``."""
        for root in self.emitted_before(cutoff):
            yield self._trees.pop(root)[0]


class RecentFailures:
    """Message ids of a spout task's failed trees, so that emitting one again counts as
    a replay. Bounded: past ``limit`` ids the oldest are forgotten (a spout may give a
    message up instead of replaying it)."""

    __slots__ = ("_ids", "_limit")

    def __init__(self, limit: int = 65536) -> None:
        self._ids: dict[Any, None] = {}
        self._limit = limit

    def __bool__(self) -> bool:
        return bool(self._ids)

    def add(self, msg_id: Any) -> None:
        try:
            self._ids[msg_id] = None
        except TypeError:  # an unhashable message id: its replays are not counted
            return
        if len(self._ids) > self._limit:
            del self._ids[next(iter(self._ids))]

    def take(self, msg_id: Any) -> bool:
        """Forget ``msg_id`` and say whether it had failed."""
        try:
            return self._ids.pop(msg_id, _ABSENT) is not _ABSENT
        except TypeError:
            return False


_ABSENT = object()
