"""Hand-off between tasks of one process: a batch goes straight into the target inbox."""

from __future__ import annotations

from typing import Any, Mapping

from streamflow.inbox import Inbox
from streamflow.load import LoadSource
from streamflow.tuples import Tuple


class InProcessTransport:
    """The transport of local mode, and of tasks that share a worker in cluster mode.

    Batches are handed over by reference: the sender builds a fresh list per flush and
    never touches it again, so nothing is copied.
    """

    loads: LoadSource | None = None
    """Every task is local: shuffle needs no loads."""

    def __init__(self, inboxes: Mapping[int, Inbox]) -> None:
        self._inboxes = inboxes

    async def send_tuples(self, task: int, tuples: list[Tuple]) -> None:
        await self._inboxes[task].put_tuples(tuples)

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        self._inboxes[task].put_control(kind, payload)
