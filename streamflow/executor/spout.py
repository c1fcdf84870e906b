"""A spout task's executor: calls ``next_tuple`` within max-spout-pending and hands tree
completions, failures and timeouts to the spout."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

from streamflow.acking import PendingTrees
from streamflow.checkpoint import ROLLBACK, SpoutCheckpoints
from streamflow.collector import SpoutOutputCollector
from streamflow.components import AsyncSpout, Spout
from streamflow.executor.base import ComponentExecutor
from streamflow.inbox import CHECKPOINT, TREE_DONE, TREE_FAILED

SPOUT_IDLE_WAIT_MAX = 0.005
"""Longest pause of a spout whose ``next_tuple`` emitted nothing (it doubles from 0.1 ms):
an idle spout costs little CPU and a spout that has data again resumes within 5 ms."""


class SpoutExecutor(ComponentExecutor):
    """Calls ``next_tuple`` while fewer than max-spout-pending trees are in flight, hands
    tree completions and failures from the ackers to ``ack``/``fail``, and fails trees
    that exceed the message timeout."""

    kind = "spout"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending = PendingTrees()
        self.collector = SpoutOutputCollector(*self._collector_args, pending=self.pending)
        self.spout: Spout | AsyncSpout = self.instance
        self.spout.emit = self.collector.emit
        self.spout.emit_direct = self.collector.emit_direct
        self.active = True
        self.finished = False
        """True once the spout is exhausted and none of its trees is in flight."""
        self._max_pending = self.config["topology.max.spout.pending"] or float("inf")
        self._batch = self.config["topology.producer.batch.size"]
        self._timeout = float(self.config["topology.message.timeout.secs"])
        self._held = False
        self._resume_at = self._max_pending - min(self._batch, self._max_pending // 2)
        self.checkpoints = SpoutCheckpoints(
            self.topology, self.component, self.task, self.transport, self.spout, self.pending,
            self.collector, self.stats, self._callback) if self.topology.is_stateful else None
        """This task's part in checkpoints, in a topology with a stateful bolt."""

    def activate(self) -> None:
        self.active = True
        self.spout.activate()

    def deactivate(self) -> None:
        self.active = False
        self.spout.deactivate()

    def reconfigure(self, topology_config: Mapping[str, Any]) -> None:
        """Lay a changed topology config under this component's own and tell the spout."""
        self.config = {**self.config, **topology_config, **self._component_config}
        self._callback(self.spout.reconfigure, self.config)

    async def run(self) -> None:
        await self._start("open")
        checkpoints = self.checkpoints
        if checkpoints is not None:
            checkpoints.started()
        loop_time = time.monotonic
        next_expiry = loop_time() + self._timeout
        expiry_every = min(self._timeout / 10, 1.0)
        idle_wait = 0.0
        while True:
            self._handle_inbox()
            now = loop_time()
            if checkpoints is not None and now < checkpoints.floor:
                now = checkpoints.floor  # trees emitted after a barrier are dated after it
            self.collector.now = now
            if now >= next_expiry:
                self._expire(now - self._timeout)
                next_expiry = now + expiry_every
            emitted = await self._emit_round() if self._may_emit() else 0
            await self.collector.flush()
            if checkpoints is not None and self.collector.failed_roots:
                checkpoints.check_failures()
            if emitted:
                idle_wait = 0.0
                await asyncio.sleep(0)
                continue
            if self.collector.acked_at_once:
                continue
            if not self.finished and (not self.pending or self.checkpoints is not None) and self._exhausted():
                if not self.pending:
                    self.finished = True
                    if self.checkpoints is not None:
                        self.checkpoints.ended()
                elif self.checkpoints is not None:  # its trees complete at the next commit
                    self.checkpoints.drained()
            self.idle = True
            if self.finished:
                await self.inbox.wait()
            else:
                idle_wait = min(max(idle_wait * 2, 0.0001), SPOUT_IDLE_WAIT_MAX)
                await self.inbox.wait(min(idle_wait, max(next_expiry - now, 0.0)))
            self.idle = False

    def _may_emit(self) -> bool:
        """Whether to call ``next_tuple`` now. Once max-spout-pending is reached, the spout
        waits until a refill's worth of trees completed, so that it emits in batches
        rather than one tuple per returning ack."""
        if not self.active or (self.checkpoints is not None and not self.checkpoints.initialized):
            return False
        if self._held:
            if len(self.pending) > self._resume_at:
                return False
            self._held = False
        return True

    def _exhausted(self) -> bool:
        try:
            return bool(self.spout.exhausted())
        except Exception as exc:
            self.stats.record_error(exc, "exhausted")
            return False

    async def _emit_round(self) -> int:
        """Call ``next_tuple`` until it emits nothing, the round's batch is full, or
        max-spout-pending is reached. Returns how many tuples were emitted."""
        stats, pending = self.stats, self.pending
        start = stats.emitted
        limit, budget = self._max_pending, start + self._batch
        next_tuple = self.spout.next_tuple
        while True:
            if len(pending) >= limit:
                self._held = True
                break
            before = stats.emitted
            try:
                done = next_tuple()
                if done is not None:  # an AsyncSpout's coroutine
                    await done
            except Exception as exc:
                stats.record_error(exc, "next_tuple")
                break
            if stats.emitted == before or stats.emitted >= budget:
                break
        return stats.emitted - start

    def _handle_inbox(self) -> None:
        """Deliver tree completions and failures to the spout."""
        spout, stats, pending = self.spout, self.stats, self.pending
        if self.collector.acked_at_once:
            done, self.collector.acked_at_once = self.collector.acked_at_once, []
            for msg_id in done:
                stats.acked += 1
                self._callback(spout.ack, msg_id)
        now = time.monotonic()
        latency = stats.complete_latency
        checkpoints = self.checkpoints
        while (message := self.inbox.get_nowait()) is not None:
            kind, roots = message
            if checkpoints is not None:
                if kind == CHECKPOINT:
                    checkpoints.handle(roots)
                    if roots[0] == ROLLBACK:
                        self.finished = False  # what it replays is in flight again
                    continue
                if kind == TREE_FAILED:
                    for root in roots:
                        checkpoints.tree_failed(root)
                    continue
            for root in roots:
                tree = pending.complete(root)
                if tree is None:
                    continue  # already timed out and failed
                if kind == TREE_DONE:
                    stats.acked += 1
                    latency.add(now - tree[1])
                    self._callback(spout.ack, tree[0])
                else:  # TREE_FAILED
                    stats.failed += 1
                    self.collector.failed_ids.add(tree[0])
                    self._callback(spout.fail, tree[0])

    def _expire(self, cutoff: float) -> None:
        if self.checkpoints is not None:
            self.checkpoints.timed_out(cutoff)
            return
        for msg_id in self.pending.expired(cutoff):
            self.stats.failed += 1
            self.collector.failed_ids.add(msg_id)
            self._callback(self.spout.fail, msg_id)

    def _callback(self, method: Any, msg_id: Any) -> None:
        try:
            method(msg_id)
        except Exception as exc:
            self.stats.record_error(exc, method.__name__)

    async def close(self) -> None:
        """Release the spout's resources once the task has stopped."""
        await self._close_with("close")
