"""The interface between an executor and the inboxes of the tasks it sends to."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from streamflow.load import LoadSource
from streamflow.tuples import Anchors, Origin


class Transport(Protocol):
    """Delivers batches to tasks by task id, wherever the task runs."""

    @property
    def loads(self) -> LoadSource | None:
        """The workers' loads, where tasks run in several workers (for load-aware shuffle)."""

    async def send_tuples(self, task: int, origin: Origin, values: list[Sequence[Any]],
                          anchors: list[Anchors]) -> None:
        """Deliver a batch of tuples of one origin, as columns of values and anchors;
        waits while the receiver is full (backpressure)."""

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        """Deliver an acker or timer message; never waits (see :mod:`streamflow.inbox`)."""
