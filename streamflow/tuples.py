"""The tuple: values on a stream, plus the ids that tie it into a spout tuple's tree."""

from __future__ import annotations

from itertools import repeat
from typing import Any, Sequence

DEFAULT_STREAM = "default"
TICK_STREAM = "__tick"
SYSTEM_COMPONENT = "__system"


class Origin:
    """Where tuples come from: the emitting component and task, the stream and its
    declared fields. One per (emitting task, stream), shared by all its tuples."""

    __slots__ = ("source", "source_task", "stream", "fields")

    def __init__(self, source: str, source_task: int, stream: str, fields: tuple[str, ...]) -> None:
        self.source = source
        self.source_task = source_task
        self.stream = stream
        self.fields = fields


TICK_ORIGIN = Origin(SYSTEM_COMPONENT, 0, TICK_STREAM, ())

Anchors = tuple[int, ...] | None
"""A tuple's ``(root, edge, root, edge, ...)`` ids, or None when it is unanchored."""


class Tuple:
    """One tuple as a bolt receives it.

    ``values`` are positional, named by the fields that the source declared for the
    stream. ``anchors`` pairs each spout-tuple root id this tuple descends from with the
    edge id of this tuple in that tree (Storm's ``MessageId``), flattened as
    ``(root, edge, root, edge, ...)``: one pair is by far the common case and a tuple is
    cheaper to build than a dict. It is ``None`` for an unanchored tuple. ``ack_val``
    accumulates the edge ids of the tuples anchored to this one, so that acking it tells
    the acker "this edge is done, these edges are new" in one XOR.

    Slots, and the stream's description shared through :class:`Origin`: one tuple is built
    per emitted tuple per destination, so every field set here costs on the hot path.
    """

    __slots__ = ("values", "origin", "anchors", "ack_val")

    def __init__(self, values: Sequence[Any], origin: Origin, anchors: Anchors) -> None:
        self.values = values
        self.origin = origin
        self.anchors = anchors
        self.ack_val = 0

    @property
    def source(self) -> str:
        """The component that emitted this tuple."""
        return self.origin.source

    @property
    def source_task(self) -> int:
        """The task that emitted this tuple."""
        return self.origin.source_task

    @property
    def stream(self) -> str:
        """The stream it was emitted on."""
        return self.origin.stream

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of ``values``, as the source declared them for the stream."""
        return self.origin.fields

    def __getitem__(self, key: int | str) -> Any:
        """``tup[0]`` by position or ``tup["word"]`` by declared field name."""
        if isinstance(key, str):
            try:
                return self.values[self.origin.fields.index(key)]
            except ValueError:
                raise KeyError(
                    f"stream {self.source}:{self.stream} has no field {key!r} "
                    f"(fields: {', '.join(self.fields)})"
                ) from None
        return self.values[key]

    def __len__(self) -> int:
        return len(self.values)

    def is_tick(self) -> bool:
        """True for the periodic tick tuples that ``topology.tick.tuple.freq.secs`` sends."""
        return self.origin is TICK_ORIGIN

    def as_dict(self) -> dict[str, Any]:
        """The values keyed by field name."""
        return dict(zip(self.origin.fields, self.values, strict=False))

    def __repr__(self) -> str:
        return f"Tuple({self.source}:{self.stream} task={self.source_task} values={list(self.values)!r})"


class Batch:
    """A batch of tuples of one origin as columns: the values of each tuple, and its
    anchors. Batches travel between tasks so, in a worker or over TCP, and a task's inbox
    holds them so; each becomes :class:`Tuple` objects only at the bolt that reads them
    (:meth:`tuples`), and not at all for a bolt that takes columns
    (``Bolt.process_columns``): a sink reads each tuple's values once, and building and
    freeing a Tuple per row cost it more than that."""

    __slots__ = ("origin", "values", "anchors")

    def __init__(self, origin: Origin, values: list[Sequence[Any]], anchors: list[Anchors]) -> None:
        self.origin = origin
        self.values = values
        self.anchors = anchors

    def __len__(self) -> int:
        return len(self.values)

    def is_tick(self) -> bool:
        """True for a tick (a batch of one tick tuple)."""
        return self.origin is TICK_ORIGIN

    def tuples(self) -> list[Tuple]:
        """The batch's tuples, built in one call."""
        return list(map(Tuple, self.values, repeat(self.origin), self.anchors))

    def __repr__(self) -> str:
        return f"Batch({self.origin.source}:{self.origin.stream} task={self.origin.source_task} rows={len(self)})"
