"""A task's inbox, and the messages that travel between tasks.

Every message is ``(kind, payload)`` and carries a batch: tuples as columns, or a batch of
acker bookkeeping. That pair is the whole task-to-task protocol, whether it crosses a
function call (local mode) or a TCP connection (cluster mode):

=============  ===========================  ==============================================
kind           payload                      sent by -> to
=============  ===========================  ==============================================
TUPLES         Batch (of one origin)        spout/bolt -> bolt
TICK           None                         timer -> bolt (``topology.tick.tuple.freq.secs``)
ACK_INIT       list[(root, xor, spout)]     spout -> acker
ACK_ACK        dict[root, xor]              bolt -> acker
ACK_FAIL       list[root]                   bolt -> acker
TREE_DONE      list[root]                   acker -> spout (the tree is complete)
TREE_FAILED    list[root]                   acker -> spout (a bolt failed the tree)
CHECKPOINT     (action, epoch, seq, txid,   coordinator -> spout (prepare, rollback), and
               extra)                       -> spouts and stateful bolts (commit)
BARRIER        (source task, action, epoch, spout/bolt -> every task downstream, after
               seq, txid, extra)            the tuples it sent before: in band
CHECKPOINT_    (task, epoch, seq, ok, info) task -> coordinator: its part of a prepare
DONE                                        or rollback is done (or failed: ``info``)
CHECKPOINT_    (task, reason, generation)   task -> coordinator: "started" (a task began:
ALERT                                       after a restart it needs a rollback), "failed"
=============  ===========================  ==============================================

Checkpoint traffic (:mod:`streamflow.checkpoint`) exists only in topologies with a
stateful bolt.

Only TUPLES count against the inbox capacity: a sender of tuples waits while the inbox is
full (backpressure), while acker traffic never waits, so that a full inbox can never hold
up the acks that would let spouts drain it. The data edges form a DAG, so waits cannot
form a cycle.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from streamflow.tuples import Batch

TUPLES = "tuples"
TICK = "tick"
ACK_INIT = "ack_init"
ACK_ACK = "ack_ack"
ACK_FAIL = "ack_fail"
TREE_DONE = "tree_done"
TREE_FAILED = "tree_failed"
CHECKPOINT = "checkpoint"
BARRIER = "barrier"
CHECKPOINT_DONE = "checkpoint_done"
CHECKPOINT_ALERT = "checkpoint_alert"

Message = tuple[str, Any]


class Inbox:
    """A FIFO of messages for one task, bounded in queued tuples.

    One consumer (the task's executor), any number of producers on the same event loop.
    A batch larger than the capacity is still accepted into an empty inbox, so a large
    batch slows its sender down but never deadlocks it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._messages: deque[Message] = deque()
        self._queued = 0  # tuples in TUPLES messages
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self.blocked_puts = 0
        """How many times a sender had to wait: the backpressure count."""
        self.blocked_seconds = 0.0
        """How long senders waited in all (a sum over senders): the backpressure time."""

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def queued_tuples(self) -> int:
        return self._queued

    async def put_tuples(self, tuples: Batch) -> None:
        """Queue a batch of tuples, waiting while the inbox is full."""
        n = len(tuples)
        while self._queued and self._queued + n > self.capacity:
            self.blocked_puts += 1
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            self._putters.append(fut)
            since = loop.time()
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._putters:
                    self._putters.remove(fut)
                raise
            finally:
                self.blocked_seconds += loop.time() - since
        self._queued += n
        self._messages.append((TUPLES, tuples))
        self._wake_getter()

    def put_control(self, kind: str, payload: Any) -> None:
        """Queue a control message (acker traffic, ticks); never waits."""
        self._messages.append((kind, payload))
        self._wake_getter()

    def get_nowait(self) -> Message | None:
        """The oldest message, or None if the inbox is empty."""
        if not self._messages:
            return None
        message = self._messages.popleft()
        if message[0] == TUPLES:
            self._queued -= len(message[1])
            if self._putters:
                self._wake_putters()
        return message

    async def wait(self, timeout: float | None = None) -> None:
        """Return once a message is queued, or after ``timeout`` seconds."""
        if self._messages:
            return
        loop = asyncio.get_running_loop()
        self._getter = fut = loop.create_future()
        timer = loop.call_later(timeout, _resolve, fut) if timeout is not None else None
        try:
            await fut
        finally:
            self._getter = None
            if timer is not None:
                timer.cancel()

    def _wake_getter(self) -> None:
        fut = self._getter
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_putters(self) -> None:
        # Wake everyone waiting: each re-checks the capacity for its own batch size.
        while self._putters:
            _resolve(self._putters.popleft())


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
