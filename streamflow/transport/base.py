"""The interface between an executor and the inboxes of the tasks it sends to."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from streamflow.errors import StreamflowError
from streamflow.load import LoadSource
from streamflow.tuples import Anchors, Origin


class UnencodableValue(StreamflowError, TypeError):
    """Values of a batch that cannot be encoded to cross to another worker (see
    :mod:`streamflow.transport.codec`). ``rows``: their indexes in the batch; ``part``:
    the encoded message of the batch's other rows, None if none."""

    def __init__(self, message: str, rows: list[int], part: bytes | None) -> None:
        super().__init__(message)
        self.rows = rows
        self.part = part


class Transport(Protocol):
    """Delivers batches to tasks by task id, wherever the task runs."""

    @property
    def loads(self) -> LoadSource | None:
        """The workers' loads, where tasks run in several workers (for load-aware shuffle)."""

    async def send_tuples(self, task: int, origin: Origin, values: list[Sequence[Any]],
                          anchors: list[Anchors]) -> None:
        """Deliver a batch of tuples of one origin, as columns of values and anchors;
        waits while the receiver is full (backpressure). Raises :class:`UnencodableValue`
        for rows that cannot reach a task in another worker, once the others are sent."""

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        """Deliver an acker or timer message; never waits (see :mod:`streamflow.inbox`)."""
