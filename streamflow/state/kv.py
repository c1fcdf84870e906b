"""KeyValueState: what a stateful bolt reads and writes, and what checkpoints save.

The state a task holds is a plain dict of live Python objects, so ``get`` and ``put``
cost a dict lookup. A value the codec cannot hold fails the tuple that put it, with one
line naming its type: a scalar (a count, a name) is checked by its type at ``put`` and
encoded once per checkpoint, at ``prepare``, however often it was put; any other value is
encoded at ``put``, as it is then. What changed since the last committed checkpoint is
kept encoded, per key, and a checkpoint writes only that.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterator

from streamflow.state.codec import decode_key, decode_value, encode_key, encode_value, encodes_as_is
from streamflow.state.keygroups import groups_of_task, key_group, task_of_group
from streamflow.state.store import Changes

_ABSENT = object()
_INT_BOUND, _UINT_BOUND = 1 << 63, 1 << 64
"""The ints the codec encodes: 64 bits, signed or not (as ``encodes_as_is``)."""
_LAZY = b""
"""In ``_dirty``: changed, to be encoded at the next prepare (no encoded value is empty)."""


class KeyValueState:
    """A task's keyed state (Storm's ``KeyValueState``): ``get``, ``put``, ``delete``,
    ``in``, ``len`` and iteration over keys or ``items()``.

    Keys belong to key groups (see :mod:`streamflow.state.keygroups`) and a task may hold
    only the keys of the groups it owns: key the state by the value the bolt's fields
    grouping routes on (the word a count bolt receives by ``fields_grouping(..., ["word"])``;
    a tuple of the values for several fields), and a key always meets its state. A put of
    a key that belongs to another task's key group raises ``KeyError``.

    A value changed in place is saved only when ``put`` again: ``put`` takes its value as
    it is then.
    """

    def __init__(self, component: str, task_index: int, tasks: int, groups: int,
                 group_of: Callable[[Hashable], int] | None = None) -> None:
        self._component = component
        self._index, self._tasks, self._groups = task_index, tasks, groups
        self._group_of = group_of or (lambda key: key_group(key, groups))
        """The key group that holds a key: the key's own hash, unless the bolt says
        otherwise (a windowed bolt keeps its windows in the group of their key)."""
        self._data: dict[Hashable, Any] = {}
        """The live values: the same dict for the state's life (``get`` is its ``get``)."""
        self.get: Callable[..., Any] = self._data.get
        """``get(key, default=None)``: the value of ``key``. The live dict's own ``get``,
        with no Python call around it: a stateful bolt calls it per tuple."""
        self._dirty: dict[Hashable, bytes | None] = {}
        """Encoded values (None: deleted; ``_LAZY``: to encode) changed since the last prepare."""
        self._prepared: list[tuple[tuple[int, int], dict[Hashable, bytes | None]]] = []
        """Changes of prepared checkpoints that have not committed yet, oldest first."""
        self._sizes: dict[Hashable, int] = {}
        self.bytes = 0
        """Encoded size of the state's keys and values, as of the last checkpoint."""

    # -- what bolts call ---------------------------------------------------------------

    def put(self, key: Hashable, value: Any) -> None:
        kind = value.__class__  # encodes_as_is for the common int and str, inlined
        if kind is int:
            data = _LAZY if -_INT_BOUND <= value < _UINT_BOUND else encode_value(value)
        else:
            data = _LAZY if kind is str or encodes_as_is(value) else encode_value(value)
        if key not in self._data:
            self._check_owned(key)
        self._data[key] = value
        self._dirty[key] = data

    def put_lazily(self, key: Hashable, value: Any) -> None:
        """``put`` for a value that grows in place (a window's tuples): encoded only at
        the next checkpoint, and again at each checkpoint after a ``put_lazily``. The
        caller makes sure it encodes (``orjson.Fragment`` parts are taken as they are)."""
        if key not in self._data:
            self._check_owned(key)
        self._data[key] = value
        self._dirty[key] = _LAZY

    def delete(self, key: Hashable) -> None:
        if self._data.pop(key, _ABSENT) is not _ABSENT:
            self._dirty[key] = None

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._data)

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        return iter(self._data.items())

    def _check_owned(self, key: Hashable) -> None:
        encode_key(key)  # a key the codec refuses fails here, naming its type
        group = self._group_of(key)
        owner = task_of_group(group, self._groups, self._tasks)
        if owner != self._index:
            raise KeyError(
                f"state key {key!r} of component {self._component!r} is in key group {group}, "
                f"which task {owner} owns, not this task ({self._index}): key state by the "
                "fields grouping's value")

    # -- what the executor calls ---------------------------------------------------------

    def prepare(self, at: tuple[int, int]) -> Changes:
        """Seal the changes made so far into checkpoint ``at`` and return, by key group,
        every change since the last committed checkpoint (those of prepared checkpoints
        that did not commit included: their writes are replaced)."""
        dirty = self._dirty
        for key, value in dirty.items():
            if value is not None and not value:  # _LAZY
                dirty[key] = encode_value(self._data[key]) if key in self._data else None
        self._prepared.append((at, dirty))
        self._dirty = {}
        merged: dict[Hashable, bytes | None] = {}
        for _, changes in self._prepared:
            merged.update(changes)
        by_group: dict[int, dict[bytes, bytes | None]] = {}
        group_of, sizes = self._group_of, self._sizes
        for key, value in merged.items():
            encoded = encode_key(key)
            by_group.setdefault(group_of(key), {})[encoded] = value
            size = 0 if value is None else len(encoded) + len(value)
            self.bytes += size - sizes.pop(key, 0)
            if size:
                sizes[key] = size
        return by_group

    def committed(self, at: tuple[int, int]) -> None:
        """Checkpoint ``at`` committed: its changes and earlier ones are durable."""
        self._prepared = [(p, c) for p, c in self._prepared if p > at]

    def load(self, data: dict[bytes, bytes]) -> None:
        """Replace the state with ``data`` (a restore): every change since is dropped."""
        self._data.clear()
        self._sizes = {}
        for k, v in data.items():
            key = decode_key(k)
            self._data[key] = decode_value(v)
            self._sizes[key] = len(k) + len(v)
        self.bytes = sum(self._sizes.values())
        self._dirty, self._prepared = {}, []

    def owned_groups(self) -> range:
        """The key groups this task holds."""
        return groups_of_task(self._index, self._groups, self._tasks)
