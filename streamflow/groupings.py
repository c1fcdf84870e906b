"""Groupings: which task(s) of a subscribed bolt receive each emitted tuple.

Pure routing logic, no I/O. A *router* is built once per (emitting task, subscription)
and called per emitted tuple with the tuple's values; it returns the target task ids as a
tuple that it owns (never allocated per call on the common paths). Routers are closures,
which cost less to call than an object's ``__call__``: an emit calls one per subscribed
stream, on the hottest path there is.

Shuffle grouping to tasks in several workers is load-aware, as Storm's default
shuffle: :class:`LoadAwareShuffleRouter` sends fewer tuples to the tasks of busier workers.

Fields grouping hashes with :func:`stable_hash` (CRC-32 of a canonical encoding), never
Python's ``hash()``, so a key lands on the same task in every process and after restarts.
"""

from __future__ import annotations

import math
import random
from itertools import cycle
from typing import Any, Callable, Collection, Sequence
from zlib import crc32

import orjson

from streamflow.load import LoadSource

GROUPINGS = (
    "shuffle", "fields", "all", "global", "direct", "local_or_shuffle", "partial_key", "none",
)
"""Storm's groupings, by the names ``BoltDeclarer.grouping`` accepts."""
KEYED_GROUPINGS = ("fields", "partial_key")
"""Groupings that take a list of fields."""

Router = Callable[[Sequence[Any]], tuple[int, ...]]


def key_bytes(key: Any) -> bytes:
    """Canonical bytes of one grouping value: UTF-8 for a str, as-is for bytes, decimal
    digits for an int (of any size), the values' bytes for a list or tuple, else JSON with
    sorted keys (so equal dicts agree).

    Raises ``TypeError`` for values JSON cannot encode: their identity would differ
    between processes, so they cannot be grouped on.
    """
    kind = type(key)
    if kind is str:
        return key.encode("utf-8", "surrogatepass")  # type: ignore[no-any-return]
    if kind is bytes:
        return key  # type: ignore[no-any-return]
    if kind is int:
        return b"%d" % key
    if kind is list or kind is tuple:
        return b"[" + fields_key_bytes(key)
    try:
        return orjson.dumps(key, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        raise TypeError(
            f"cannot group on a {type(key).__name__} value: grouping keys must be str, "
            "bytes, numbers, booleans, None, or lists and dicts of them"
        ) from None


def fields_key_bytes(values: Sequence[Any]) -> bytes:
    """Canonical bytes of a key of several fields: each value's :func:`key_bytes`,
    length-prefixed so that ("ab", "c") and ("a", "bc") differ."""
    return b"".join(len(b).to_bytes(4, "big") + b for b in map(key_bytes, values))


def stable_hash(key: Any) -> int:
    """A 32-bit hash of one value that is the same in every process (see :func:`key_bytes`)."""
    return crc32(key_bytes(key))


def _key_hash(indexes: tuple[int, ...]) -> Callable[[Sequence[Any]], int]:
    """The stable hash of a tuple's grouping key: its one grouped value, or several,
    hashed as the tuple of them (so that keyed state keyed by that tuple finds its key
    group: :func:`streamflow.state.keygroups.key_group`)."""
    if len(indexes) == 1:
        (i,) = indexes
        return lambda values: crc32(key_bytes(values[i]))
    return lambda values: crc32(b"[" + fields_key_bytes([values[i] for i in indexes]))


def shuffle_router(targets: Sequence[int], rng: random.Random) -> Router:
    """Round robin over the targets in a random order: even load, one task per tuple.
    Over one target (local-or-shuffle to the one local task, say), the target itself:
    a constant costs less than a cycle's step, once per tuple."""
    if len(targets) == 1:
        return constant_router(targets)
    order = [(t,) for t in targets]
    rng.shuffle(order)
    next_target = cycle(order).__next__
    return lambda values: next_target()


class LoadAwareShuffleRouter:
    """Shuffle over tasks that run in different workers, weighted so that the workers'
    loads (:mod:`streamflow.load`) even out.

    Each time the loads are measured anew, every target's weight is multiplied by
    ``exp(GAIN * (mean load - its worker's load))``: a feedback loop that moves tuples
    from busier workers to idler ones until their loads match, or until a target is down
    to :data:`MIN_SHARE` of an even share (every task keeps receiving, so its load stays
    known and it can take more again). The emitter's own worker is one of the loads:
    with one spout task, its worker also spends a core's share on the spout and its
    acker, and an even split would leave the other workers waiting on it. Targets of
    unknown load count as average. The weights become a shuffled cycle of
    :data:`SLOTS` picks, so between two measurements routing is as cheap as shuffle's.
    """

    __slots__ = ("_targets", "_loads", "_version", "_weights", "_next", "_rng")

    GAIN = 2.0
    MIN_SHARE = 0.2
    SLOTS = 64

    def __init__(self, targets: Sequence[int], loads: LoadSource, rng: random.Random) -> None:
        self._targets = list(targets)
        self._loads = loads
        self._version = loads.load_version
        self._weights = [1.0 / len(targets)] * len(targets)
        self._rng = rng
        self._next = self._cycle()

    def __call__(self, values: Sequence[Any]) -> tuple[int, ...]:
        if self._loads.load_version != self._version:
            self._version = self._loads.load_version
            self._reweigh()
        return self._next()

    @property
    def shares(self) -> dict[int, float]:
        """Each target's share of the tuples now."""
        return dict(zip(self._targets, self._weights, strict=True))

    def _reweigh(self) -> None:
        known = [self._loads.load_of(t) for t in self._targets]
        measured = [x for x in known if x is not None]
        if not measured:
            return
        mean = sum(measured) / len(measured)
        weights = [w * math.exp(self.GAIN * (mean - (mean if x is None else x)))
                   for w, x in zip(self._weights, known, strict=True)]
        self._weights = _floored(weights, self.MIN_SHARE / len(weights))
        self._next = self._cycle()

    def _cycle(self) -> Callable[[], tuple[int, ...]]:
        order = [(t,) for t, w in zip(self._targets, self._weights, strict=True)
                 for _ in range(max(1, round(w * self.SLOTS)))]
        self._rng.shuffle(order)
        return cycle(order).__next__


def _floored(weights: list[float], floor: float) -> list[float]:
    """Weights as shares summing to 1, none below ``floor`` (the others scaled to make room)."""
    total = sum(weights)
    shares = [w / total for w in weights]
    pinned: set[int] = set()
    while True:
        low = {i for i, share in enumerate(shares) if share < floor and i not in pinned}
        if not low:
            return shares
        pinned |= low
        free = sum(share for i, share in enumerate(shares) if i not in pinned)
        room = 1.0 - floor * len(pinned)
        shares = [floor if i in pinned else share * room / free for i, share in enumerate(shares)]


FIELDS_MEMO = 16384
"""Text keys whose task a fields router remembers (per emitting task and subscription):
a dict lookup costs less than hashing the key again. The memo holds at most this many
entries and keeps its keys alive (about 2 MB with keys of 50 characters)."""


def fields_router(targets: Sequence[int], indexes: tuple[int, ...], key_groups: int = 0) -> Router:
    """Equal keys go to the same task: the key's group ``stable_hash(key) % groups`` and
    the task that owns that group, in contiguous ranges of groups
    (:mod:`streamflow.state.keygroups`), so that keyed state moves with its key groups
    when the task count changes. ``groups`` is ``key_groups`` or the task count, whichever
    is higher: as many groups as tasks is plain ``hash % tasks``. The task of each of the
    first :data:`FIELDS_MEMO` text keys is remembered: words, user ids and the like
    recur."""
    n, key_hash = len(targets), _key_hash(indexes)
    groups = max(key_groups, n)
    choices = [(targets[g * n // groups],) for g in range(groups)]
    n = groups
    if len(indexes) > 1:
        return lambda values: choices[key_hash(values) % n]
    (i,) = indexes
    memo: dict[str, tuple[int, ...]] = {}

    def route(values: Sequence[Any]) -> tuple[int, ...]:
        key = values[i]
        if type(key) is str:  # the common case, inlined (same bytes as key_bytes)
            target = memo.get(key)
            if target is None:
                target = choices[crc32(key.encode("utf-8", "surrogatepass")) % n]
                if len(memo) < FIELDS_MEMO:
                    memo[key] = target
            return target
        return choices[key_hash(values) % n]

    return route


_MIX = 0x9E3779B97F4A7C15
"""Fibonacci hashing: partial key grouping's second, independent choice from the first hash."""


def partial_key_router(targets: Sequence[int], indexes: tuple[int, ...]) -> Router:
    """Partial key grouping (Nasir et al., "The power of both choices"): a key has two
    candidate tasks from two hashes and goes to the one this emitter has sent less to,
    which splits hot keys over two tasks while keeping every key on at most two."""
    choices, n, key_hash = [(t,) for t in targets], len(targets), _key_hash(indexes)
    load = [0] * n

    def route(values: Sequence[Any]) -> tuple[int, ...]:
        h = key_hash(values)
        first, second = h % n, (((h * _MIX) & 0xFFFFFFFFFFFFFFFF) >> 32) % n
        choice = first if load[first] <= load[second] else second
        load[choice] += 1
        return choices[choice]

    return route


def constant_router(targets: Sequence[int]) -> Router:
    """Always the same targets: all grouping (every task) and global grouping (lowest id)."""
    chosen = tuple(targets)
    return lambda values: chosen


def union_router(routers: Sequence[Router]) -> Router:
    """The targets of all of a stream's subscriptions, one subscription after the other:
    one router per stream, so an emit makes one call whatever the subscriptions, and the
    common case of one is that subscription's router itself."""
    if len(routers) == 1:
        return routers[0]
    if not routers:
        return constant_router(())
    return lambda values: tuple([task for route in routers for task in route(values)])


def make_router(
    grouping: str,
    targets: Sequence[int],
    stream_fields: Sequence[str],
    grouped_fields: Sequence[str] = (),
    local_tasks: Collection[int] = (),
    rng: random.Random | None = None,
    loads: LoadSource | None = None,
    key_groups: int = 0,
) -> Router:
    """The router of one subscription for one emitting task.

    ``targets`` are the subscribed bolt's task ids, ``stream_fields`` the stream's declared
    fields, ``local_tasks`` the tasks running in the emitter's worker (for
    local-or-shuffle), ``loads`` the workers' loads where tasks run in several (for a
    load-aware shuffle), ``key_groups`` the key groups a fields grouping spreads keys over.
    Direct grouping has no router: the emitter names the task.
    """
    rng = rng or random.Random()
    targets = sorted(targets)
    if grouping in ("shuffle", "none"):
        if loads is not None and len(targets) > 1 and not set(targets) <= set(local_tasks):
            return LoadAwareShuffleRouter(targets, loads, rng)
        return shuffle_router(targets, rng)
    if grouping == "local_or_shuffle":
        local = [t for t in targets if t in local_tasks]
        return shuffle_router(local or targets, rng)
    if grouping == "all":
        return constant_router(targets)
    if grouping == "global":
        return constant_router(targets[:1])
    indexes = tuple(list(stream_fields).index(f) for f in grouped_fields)
    if grouping == "fields":
        return fields_router(targets, indexes, key_groups)
    if grouping == "partial_key":
        return partial_key_router(targets, indexes)
    raise ValueError(f"grouping {grouping!r} has no router")
