"""The tuple: values on a stream, plus the ids that tie it into a spout tuple's tree."""

from __future__ import annotations

from typing import Any, Sequence

DEFAULT_STREAM = "default"
TICK_STREAM = "__tick"
SYSTEM_COMPONENT = "__system"


class Tuple:
    """One tuple as a bolt receives it.

    ``values`` are positional, named by ``fields`` (the declaration of ``stream`` by
    ``source``). ``anchors`` maps each spout-tuple root id this tuple descends from to the
    edge id of this tuple in that tree (Storm's ``MessageId``); it is ``None`` for an
    unanchored tuple. ``ack_val`` accumulates the edge ids of the tuples anchored to this
    one, so that acking it tells the acker "this edge is done, these edges are new" in one
    XOR. Slots, not a dataclass: one is built per emitted tuple per destination.
    """

    __slots__ = ("values", "stream", "source", "source_task", "fields", "anchors", "ack_val")

    def __init__(
        self,
        values: Sequence[Any],
        stream: str,
        source: str,
        source_task: int,
        fields: tuple[str, ...],
        anchors: dict[int, int] | None,
    ) -> None:
        self.values = values
        self.stream = stream
        self.source = source
        self.source_task = source_task
        self.fields = fields
        self.anchors = anchors
        self.ack_val = 0

    def __getitem__(self, key: int | str) -> Any:
        """``tup[0]`` by position or ``tup["word"]`` by declared field name."""
        if isinstance(key, str):
            try:
                return self.values[self.fields.index(key)]
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
        return self.stream == TICK_STREAM

    def as_dict(self) -> dict[str, Any]:
        """The values keyed by field name."""
        return dict(zip(self.fields, self.values))

    def __repr__(self) -> str:
        return f"Tuple({self.source}:{self.stream} task={self.source_task} values={list(self.values)!r})"
