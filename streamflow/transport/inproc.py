"""Hand-off between tasks of one process: a batch goes straight into the target inbox."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from streamflow.inbox import Inbox
from streamflow.load import LoadSource
from streamflow.tuples import Anchors, Batch, Origin


class InProcessTransport:
    """The transport of local mode, and of tasks that share a worker in cluster mode.

    A batch goes as the columns the sender filled: the receiving task builds its tuples.
    """

    loads: LoadSource | None = None
    """Every task is local: shuffle needs no loads."""

    def __init__(self, inboxes: Mapping[int, Inbox]) -> None:
        self._inboxes = inboxes

    async def send_tuples(self, task: int, origin: Origin, values: list[Sequence[Any]],
                          anchors: list[Anchors]) -> None:
        await self._inboxes[task].put_tuples(Batch(origin, values, anchors))

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        self._inboxes[task].put_control(kind, payload)
