"""An acker task's executor: a loop around :meth:`~streamflow.acking.AckerState.apply`
that tells spout tasks when their trees complete or fail."""

from __future__ import annotations

import asyncio
import time

from streamflow.acking import AckerState
from streamflow.executor.base import Executor
from streamflow.inbox import TREE_DONE, TREE_FAILED, Inbox, Message
from streamflow.transport.base import Transport


class AckerExecutor(Executor):
    """Runs :class:`~streamflow.acking.AckerState` for the trees whose root ids map to
    this acker task. Each turn takes every queued message, and sends each spout task one
    TREE_DONE and one TREE_FAILED message at most. Trees not complete within the message
    timeout are forgotten (their spouts fail them on their own clocks)."""

    def __init__(self, component: str, task: int, inbox: Inbox, transport: Transport,
                 timeout: float) -> None:
        super().__init__(component, task, inbox)
        self.state = AckerState()
        self._transport = transport
        self._timeout = timeout

    async def run(self) -> None:
        state, inbox, stats, transport = self.state, self.inbox, self.stats, self._transport
        loop_time, clock = time.monotonic, time.perf_counter
        next_expiry = loop_time() + self._timeout
        while True:
            if not len(inbox):
                self.idle = True
                await inbox.wait(max(next_expiry - loop_time(), 0.0))
                self.idle = False
            started = clock()
            now = loop_time()
            if now >= next_expiry:
                state.expire(now - self._timeout)
                next_expiry = now + self._timeout / 2
            messages: list[Message] = []
            while (message := inbox.get_nowait()) is not None:
                messages.append(message)
                stats.executed += len(message[1])
            done, failed = state.apply(messages, now)
            for spout, roots in done.items():
                stats.acked += len(roots)
                transport.send_control(spout, TREE_DONE, roots)
            for spout, roots in failed.items():
                stats.failed += len(roots)
                transport.send_control(spout, TREE_FAILED, roots)
            stats.busy += clock() - started
            await asyncio.sleep(0)
