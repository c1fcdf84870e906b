"""The runtime in local mode: groupings end to end, acking, replay, timeouts, backpressure."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from typing import Any, Mapping

import pytest

from streamflow import (
    AsyncBasicBolt,
    AsyncBolt,
    BasicBolt,
    Batch,
    Bolt,
    KeyValueState,
    Spout,
    StatefulBolt,
    TaskContext,
    TopologyBuilder,
    Tuple,
    run_local,
)
from streamflow.executor import MAX_TUPLES_PER_TURN, TaskFailed
from streamflow.testing import CollectBolt, Ledger, ListSpout
from streamflow.worker import GC_YOUNG_THRESHOLD

ROWS = [(f"k{i % 37}", i) for i in range(600)]


def collect_by_grouping(grouping: str, fields: tuple[str, ...] = (), parallelism: int = 3) -> Ledger:
    spout_ledger, ledger = Ledger(), Ledger()
    builder = TopologyBuilder(f"grouping-{grouping}")
    builder.set_spout("source", ListSpout(ROWS, ["key", "n"], spout_ledger), parallelism=2)
    builder.set_bolt("sink", CollectBolt(ledger), parallelism).grouping("source", grouping, fields)
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert sorted(spout_ledger.acked) == list(range(len(ROWS)))
    return ledger


def test_shuffle_spreads_every_tuple_to_one_task_evenly() -> None:
    by_task = collect_by_grouping("shuffle").values_by_task()
    assert sorted((v for values in by_task.values() for v in values), key=tuple) == sorted(ROWS)
    sizes = [len(v) for v in by_task.values()]
    assert len(sizes) == 3 and max(sizes) - min(sizes) <= 2  # round robin per spout task


def test_fields_sends_each_key_to_exactly_one_task() -> None:
    by_task = collect_by_grouping("fields", ("key",)).values_by_task()
    owner: dict[str, int] = {}
    for task, values in by_task.items():
        for key, _ in values:
            assert owner.setdefault(key, task) == task
    assert len(set(owner.values())) == 3
    assert sum(len(v) for v in by_task.values()) == len(ROWS)


def test_all_sends_every_tuple_to_every_task() -> None:
    by_task = collect_by_grouping("all").values_by_task()
    assert len(by_task) == 3
    for values in by_task.values():
        assert sorted(values, key=tuple) == sorted(ROWS)


def test_global_sends_everything_to_the_lowest_task() -> None:
    by_task = collect_by_grouping("global").values_by_task()
    # Components are numbered in name order: "sink" gets tasks 1-3, "source" 4-5.
    assert list(by_task) == [1]
    assert sorted(by_task[1], key=tuple) == sorted(ROWS)


@pytest.mark.parametrize("grouping", ["local_or_shuffle", "none"])
def test_local_or_shuffle_and_none_spread_like_shuffle_in_one_worker(grouping: str) -> None:
    by_task = collect_by_grouping(grouping).values_by_task()
    assert len(by_task) == 3
    assert sorted((v for values in by_task.values() for v in values), key=tuple) == sorted(ROWS)


def test_partial_key_puts_each_key_on_at_most_two_tasks() -> None:
    by_task = collect_by_grouping("partial_key", ("key",), parallelism=4).values_by_task()
    owners: dict[str, set[int]] = {}
    for task, values in by_task.items():
        for key, _ in values:
            owners.setdefault(key, set()).add(task)
    assert all(1 <= len(tasks) <= 2 for tasks in owners.values())
    assert sum(len(v) for v in by_task.values()) == len(ROWS)


class DirectSpout(Spout):
    """Emits n to task number n % parallelism of the 'sink' bolt, with emit_direct."""

    outputs = ["n"]

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.targets = context.component_tasks["sink"]
        self.todo = list(range(60))

    def next_tuple(self) -> None:
        if self.todo:
            n = self.todo.pop()
            self.emit_direct(self.targets[n % len(self.targets)], (n,), msg_id=n)

    def exhausted(self) -> bool:
        return not self.todo


def test_direct_grouping_delivers_to_the_named_task() -> None:
    ledger = Ledger()
    builder = TopologyBuilder("direct")
    builder.set_spout("source", DirectSpout())
    builder.set_bolt("sink", CollectBolt(ledger), 3).direct_grouping("source")
    topology = builder.build()
    run_local(topology, timeout=30)
    tasks = topology.task_layout()["sink"]
    for task, values in ledger.values_by_task().items():
        assert all(tasks[n % 3] == task for (n,) in values)
    assert len(ledger.received) == 60


class EvensOnNamedStream(BasicBolt):
    outputs = {"default": ["n"], "evens": ["n", "half"]}

    def process(self, tup: Tuple) -> None:
        n = tup["n"]
        self.emit((n,))
        if n % 2 == 0:
            self.emit((n, n // 2), stream="evens")


def test_named_streams_reach_only_their_subscribers() -> None:
    all_ledger, evens_ledger = Ledger(), Ledger()
    builder = TopologyBuilder("streams")
    builder.set_spout("source", ListSpout([(i,) for i in range(50)], ["n"]))
    builder.set_bolt("split", EvensOnNamedStream(), 2).shuffle_grouping("source")
    builder.set_bolt("all", CollectBolt(all_ledger)).shuffle_grouping("split")
    builder.set_bolt("evens", CollectBolt(evens_ledger)).shuffle_grouping("split", stream="evens")
    run_local(builder.build(), timeout=30)
    assert sorted(t.values[0] for _, t in all_ledger.received) == list(range(50))
    assert sorted(t.as_dict()["half"] for _, t in evens_ledger.received) == list(range(25))
    assert {t.stream for _, t in evens_ledger.received} == {"evens"}


class FailEverySeventhOnce(BasicBolt):
    """Raises on every 7th number the first time it sees it; fields grouping on n sends
    the replay to the same task, which then lets it through."""

    outputs = ["n"]

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.failed: set[int] = set()

    def process(self, tup: Tuple) -> None:
        n = tup["n"]
        if n % 7 == 0 and n not in self.failed:
            self.failed.add(n)
            raise ValueError(f"boom on {n}")
        self.emit((n,))


def test_bolt_exception_fails_the_tuple_and_the_spout_replays_it() -> None:
    ledger, out = Ledger(), Ledger()
    builder = TopologyBuilder("fail7")
    builder.set_spout("source", ListSpout([(i,) for i in range(1000)], ["n"], ledger), 2)
    builder.set_bolt("flaky", FailEverySeventhOnce(), 2).fields_grouping("source", ["n"])
    builder.set_bolt("sink", CollectBolt(out), 2).shuffle_grouping("flaky")
    run = run_local(builder.build(), timeout=60)
    assert run.outcome == "finished"
    sevens = {n for n in range(1000) if n % 7 == 0}
    assert ledger.acked == {n: 1 for n in range(1000)}  # every message acked exactly once
    assert ledger.failed == {n: 1 for n in sevens}
    assert sorted(t.values[0] for _, t in out.received) == list(range(1000))
    flaky = run.component("flaky")
    assert flaky.failed == len(sevens) and flaky.errors == len(sevens)
    assert flaky.last_error is not None and "ValueError: boom on" in flaky.last_error.message
    assert run.component("source").acked == 1000
    assert run.component("source").replayed == len(sevens)  # ListSpout re-emits each failed id


class StallOnce(AsyncBasicBolt):
    """Stalls past the message timeout the first time it sees a chosen number."""

    outputs = ["n"]

    def __init__(self, stall: float) -> None:
        self.stall = stall

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.stalled: set[int] = set()

    async def process(self, tup: Tuple) -> None:
        n = tup["n"]
        if n in (3, 40) and n not in self.stalled:
            self.stalled.add(n)
            await asyncio.sleep(self.stall)
        self.emit((n,))


class BlockOnce(BasicBolt):
    """The same with a blocking sleep, which holds up the whole worker's event loop."""

    outputs = ["n"]

    def __init__(self, stall: float) -> None:
        self.stall = stall

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.stalled: set[int] = set()

    def process(self, tup: Tuple) -> None:
        n = tup["n"]
        if n == 3 and n not in self.stalled:
            self.stalled.add(n)
            time.sleep(self.stall)
        self.emit((n,))


@pytest.mark.parametrize("bolt", [StallOnce, BlockOnce])
def test_tuple_stalled_past_the_timeout_is_replayed_and_acked_once(bolt: type) -> None:
    timeout = 0.4
    ledger, out = Ledger(), Ledger()
    builder = TopologyBuilder("stall")
    builder.set_spout("source", ListSpout([(i,) for i in range(100)], ["n"], ledger))
    builder.set_bolt("slow", bolt(timeout * 3), 2).fields_grouping("source", ["n"])
    builder.set_bolt("sink", CollectBolt(out)).shuffle_grouping("slow")
    run = run_local(builder.build({"topology.message.timeout.secs": timeout}), timeout=60)
    assert run.outcome == "finished"
    assert ledger.acked == {n: 1 for n in range(100)}
    assert ledger.failed[3] >= 1  # timed out, then replayed
    seen = sorted(t.values[0] for _, t in out.received)
    assert set(seen) == set(range(100)) and seen.count(3) >= 2  # the late original and replays


def test_max_spout_pending_is_never_exceeded() -> None:
    ledger = Ledger()
    builder = TopologyBuilder("pending")
    builder.set_spout("source", ListSpout([(i,) for i in range(3000)], ["n"], ledger), 2)
    builder.set_bolt("sink", CollectBolt(Ledger()), 2).shuffle_grouping("source")
    run = run_local(builder.build({"topology.max.spout.pending": 7}), timeout=60)
    assert run.outcome == "finished"
    assert sorted(ledger.acked) == list(range(3000))
    assert max(ledger.max_in_flight.values()) == 7  # reached, never exceeded


def test_acking_off_acks_at_emit_and_still_delivers() -> None:
    ledger, out = Ledger(), Ledger()
    builder = TopologyBuilder("unacked")
    builder.set_spout("source", ListSpout([(i,) for i in range(500)], ["n"], ledger))
    builder.set_bolt("sink", CollectBolt(out), 2).shuffle_grouping("source")
    run = run_local(builder.build({"topology.acker.executors": 0}), timeout=30)
    assert run.outcome == "finished"
    assert ledger.acked == {n: 1 for n in range(500)}
    assert len(out.received) == 500
    assert all(t.anchors is None for _, t in out.received)


class ManualBolt(Bolt):
    """Anchors explicitly, acks even numbers and fails odd ones (once)."""

    outputs = ["n"]

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.failed: set[int] = set()

    def process(self, tup: Tuple) -> None:
        n = tup.values[0]
        if n % 2 and n not in self.failed:
            self.failed.add(n)
            self.fail(tup)
            return
        self.emit((n,), anchors=[tup])
        self.ack(tup)


def test_plain_bolt_anchors_acks_and_fails_explicitly() -> None:
    ledger, out = Ledger(), Ledger()
    builder = TopologyBuilder("manual")
    builder.set_spout("source", ListSpout([(i,) for i in range(200)], ["n"], ledger))
    builder.set_bolt("manual", ManualBolt()).shuffle_grouping("source")
    builder.set_bolt("sink", CollectBolt(out)).shuffle_grouping("manual")
    run_local(builder.build(), timeout=30)
    assert ledger.acked == {n: 1 for n in range(200)}
    assert ledger.failed == {n: 1 for n in range(1, 200, 2)}
    assert sorted(t.values[0] for _, t in out.received) == list(range(200))


class PairBolt(Bolt):
    """Joins tuples two by two: each output is anchored to both inputs (two roots)."""

    outputs = ["a", "b"]

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.waiting: Tuple | None = None

    def process(self, tup: Tuple) -> None:
        if self.waiting is None:
            self.waiting = tup
            return
        first, self.waiting = self.waiting, None
        self.emit((first.values[0], tup.values[0]), anchors=[first, tup])
        self.ack(first)
        self.ack(tup)


class FailsSomePairs(Bolt):
    """Fails a pair whose first value is a multiple of 5, unless either value failed before;
    the pairs it failed go to ``failed.received``."""

    def __init__(self, failed: Ledger) -> None:
        self.failed = failed

    def process(self, tup: Tuple) -> None:
        a, b = tup.values
        before = {n for _, pair in self.failed.received for n in pair.values}
        if a % 5 == 0 and a not in before and b not in before:
            self.failed.received.append((0, tup))
            self.fail(tup)
        else:
            self.ack(tup)


def test_a_tuple_anchored_to_two_roots_completes_and_fails_both() -> None:
    ledger, failed = Ledger(), Ledger()
    builder = TopologyBuilder("join")
    builder.set_spout("source", ListSpout([(i,) for i in range(200)], ["n"], ledger))
    builder.set_bolt("pair", PairBolt()).shuffle_grouping("source")
    builder.set_bolt("check", FailsSomePairs(failed)).shuffle_grouping("pair")
    assert run_local(builder.build(), timeout=30).outcome == "finished"
    assert ledger.acked == {n: 1 for n in range(200)}  # every tree, with two roots each, completed
    pairs = [tup.values for _, tup in failed.received]
    assert pairs and ledger.failed == {n: 1 for pair in pairs for n in pair}  # both roots replayed


def test_retries_end_when_the_spout_gives_up() -> None:
    class AlwaysFails(BasicBolt):
        def process(self, tup: Tuple) -> None:
            raise RuntimeError("no")

    ledger = Ledger()
    builder = TopologyBuilder("giveup")
    builder.set_spout("source", ListSpout([(i,) for i in range(10)], ["n"], ledger, max_retries=2))
    builder.set_bolt("bad", AlwaysFails()).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert ledger.failed == {n: 3 for n in range(10)} and not ledger.acked
    assert run.component("bad").errors == 30


class TickCounter(BasicBolt):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def process(self, tup: Tuple) -> None:
        if tup.is_tick():
            self.ledger.acked["tick"] += 1


class UntilTicks(Spout):
    """Emits nothing and is exhausted once the bolt has seen three ticks."""

    outputs = ["n"]

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def exhausted(self) -> bool:
        return self.ledger.acked["tick"] >= 3


def test_tick_tuples_reach_bolts_that_ask_for_them() -> None:
    ledger = Ledger()
    builder = TopologyBuilder("ticks")
    builder.set_spout("source", UntilTicks(ledger))
    builder.set_bolt("ticks", TickCounter(ledger), config={"topology.tick.tuple.freq.secs": 0.01}
                     ).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert ledger.acked["tick"] >= 3


def test_component_that_cannot_start_fails_the_run_with_its_error() -> None:
    class BrokenPrepare(BasicBolt):
        def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
            raise OSError("disk on fire")

    builder = TopologyBuilder("broken")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("broken", BrokenPrepare()).shuffle_grouping("source")
    expected = r"component 'broken' task \d+: prepare\(\) raised OSError: disk on fire"
    with pytest.raises(TaskFailed, match=expected):
        run_local(builder.build(), timeout=30)


def test_emit_of_wrong_arity_or_undeclared_stream_fails_the_tuple_with_a_clear_error() -> None:
    class WrongArity(BasicBolt):
        outputs = ["a", "b"]

        def process(self, tup: Tuple) -> None:
            self.emit((1,))

    ledger = Ledger()
    builder = TopologyBuilder("arity")
    builder.set_spout("source", ListSpout([(1,)], ["n"], ledger, max_retries=0))
    builder.set_bolt("wrong", WrongArity()).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    error = run.component("wrong").last_error
    assert error is not None and "emitted 1 values on stream 'default', which declares 2" in error.message
    assert ledger.failed == {0: 1}


class Endless(Spout):
    outputs = ["n"]

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.n = 0

    def next_tuple(self) -> None:
        self.n += 1
        self.emit((self.n,))


class Slow(AsyncBasicBolt):
    """Awaits I/O per tuple: the event loop is free, so the spout could run ahead."""

    async def process(self, tup: Tuple) -> None:
        await asyncio.sleep(0.0002)


def test_a_slow_bolt_holds_its_senders_back_and_queues_stay_bounded() -> None:
    from streamflow.worker import Worker

    builder = TopologyBuilder("backpressure")
    builder.set_spout("fast", Endless())
    builder.set_bolt("slow", Slow()).shuffle_grouping("fast")
    topology = builder.build({"topology.acker.executors": 0,  # nothing else bounds the spout
                              "topology.executor.receive.buffer.size": 1000})
    worker = Worker(topology)
    slow_inbox = worker.inboxes[topology.task_layout()["slow"][0]]
    peak = 0

    slow = next(s for s in worker.stats() if s.component == "slow")

    async def watch() -> None:
        # Until the slow bolt has taken its inbox's worth twice over, and the spout
        # had to wait: the queue's peak, sampled every 2 ms, up to a deadline.
        nonlocal peak
        worker.start()
        deadline = time.monotonic() + 30
        while slow.executed < 2000 or not slow_inbox.blocked_puts:
            assert time.monotonic() < deadline, f"the slow bolt took {slow.executed} tuples in 30 s"
            await asyncio.sleep(0.002)
            peak = max(peak, slow_inbox.queued_tuples)
        await worker.stop()

    asyncio.run(watch())
    batch = topology.config["topology.producer.batch.size"]
    assert slow_inbox.blocked_puts > 0 and slow_inbox.blocked_seconds > 0  # the spout had to wait
    assert peak <= 1000 + batch
    spout = next(s for s in worker.stats() if s.component == "fast")
    # Emitted only as fast as consumed: the inbox, the bolt's current turn, and the batches
    # on either side of them.
    assert spout.emitted - slow.executed <= 1000 + MAX_TUPLES_PER_TURN + 3 * batch


class LaterAckBolt(AsyncBolt):
    """Acks each batch from a callback of its own, run once the executor has finished the
    batch's turn (as a sink acks writes when the server confirms them), then sends the
    acks with flush_acks."""

    def __init__(self, flush: bool) -> None:
        self.flush = flush

    async def prepare(self, config: Mapping[str, Any], context: Any) -> None:
        self.batch: list[Any] = []

    async def process(self, tup: Any) -> None:
        self.batch.append(tup)

    async def end_batch(self) -> None:
        batch, self.batch = self.batch, []
        asyncio.get_running_loop().call_soon(self._ack_later, batch)  # after this turn's flush

    def _ack_later(self, batch: list[Any]) -> None:
        for tup in batch:
            self.ack(tup)
        if self.flush:
            self.flush_acks()


@pytest.mark.parametrize("flush", [True, False])
def test_acks_made_outside_a_batch_leave_with_flush_acks(flush: bool) -> None:
    # Without flush_acks, acks made after the last batch wait for a batch that never comes:
    # their trees time out (after 1 s here) and replay, and so on, forever.
    ledger = Ledger()
    builder = TopologyBuilder("later-acks")
    builder.set_spout("source", ListSpout([(i,) for i in range(50)], ["n"], ledger))
    builder.set_bolt("sink", LaterAckBolt(flush), 2).shuffle_grouping("source")
    run = run_local(builder.build({"topology.message.timeout.secs": 1}), timeout=30 if flush else 2.5)
    if flush:
        assert run.outcome == "finished"
        assert ledger.acked == {n: 1 for n in range(50)} and not ledger.failed
    else:
        assert run.outcome == "timeout"
        assert ledger.failed  # trees whose acks never left timed out


async def next_loop_turn() -> None:
    """Suspend until the event loop's next turn, as a hook that awaits I/O would."""
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    await turn


class BatchAckBolt(Bolt):
    """A plain ``process`` with coroutine hooks, as KafkaBolt has: tuples are kept, and
    ``end_batch`` suspends before acking the batch."""

    async def prepare(self, config: Mapping[str, Any], context: Any) -> None:
        self.batch: list[Tuple] = []

    def process(self, tup: Tuple) -> None:
        self.batch.append(tup)

    async def end_batch(self) -> None:
        await next_loop_turn()
        batch, self.batch = self.batch, []
        for tup in batch:
            self.ack(tup)

    async def cleanup(self) -> None:
        await next_loop_turn()
        CLEANED.append(self)


CLEANED: list[BatchAckBolt] = []
"""The task copies whose cleanup ran to its end."""


def test_a_bolt_with_a_plain_process_may_have_coroutine_hooks() -> None:
    ledger = Ledger()
    CLEANED.clear()
    builder = TopologyBuilder("coroutine-hooks")
    builder.set_spout("source", ListSpout([(i,) for i in range(300)], ["n"], ledger))
    builder.set_bolt("sink", BatchAckBolt(), 2).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert ledger.acked == {n: 1 for n in range(300)} and not ledger.failed
    assert len(CLEANED) == 2


SEEN_THRESHOLDS: list[tuple[int, int, int]] = []


class ThresholdBolt(BasicBolt):
    """Records the garbage collector's thresholds as the worker runs it."""

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        SEEN_THRESHOLDS.append(gc.get_threshold())


def test_a_worker_collects_cycles_in_larger_steps_and_restores_the_thresholds_after() -> None:
    SEEN_THRESHOLDS.clear()
    before = gc.get_threshold()
    builder = TopologyBuilder("gc")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("sink", ThresholdBolt()).shuffle_grouping("source")
    assert run_local(builder.build(), timeout=30).outcome == "finished"
    assert SEEN_THRESHOLDS == [(GC_YOUNG_THRESHOLD, *before[1:])]
    assert gc.get_threshold() == before


class FlakyWriteBolt(BasicBolt):
    """A sink as a BasicBolt: ``process`` buffers, ``end_batch`` writes the batch, and the
    first write fails. What it wrote is kept per value."""

    written: Counter[int] = Counter()
    failures = 0

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.batch: list[int] = []

    def process(self, tup: Tuple) -> None:
        self.batch.append(tup.values[0])

    def end_batch(self) -> None:
        batch, self.batch = self.batch, []
        if FlakyWriteBolt.failures == 0:
            FlakyWriteBolt.failures += 1
            raise OSError("disk full")
        FlakyWriteBolt.written.update(batch)


def test_a_basic_bolt_whose_end_batch_raises_fails_the_batch_instead_of_acking_it() -> None:
    FlakyWriteBolt.written.clear()
    FlakyWriteBolt.failures = 0
    ledger = Ledger()
    builder = TopologyBuilder("failed-write")
    builder.set_spout("source", ListSpout([(i,) for i in range(200)], ["n"], ledger))
    builder.set_bolt("sink", FlakyWriteBolt()).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert sum(ledger.failed.values()) > 0  # the batch whose write failed, failed
    assert set(FlakyWriteBolt.written) == set(range(200))  # and was written once replayed
    assert ledger.acked == {n: 1 for n in range(200)}
    assert run.component("sink").errors == 1


class SplitMany(BasicBolt):
    """Emits n copies of each input number with one ``emit_many``; 13 raises after emitting."""

    outputs = ["n"]

    def process(self, tup: Tuple) -> None:
        n = tup.values[0]
        self.emit_many([(n,)] * 3)
        if n == 13 and not SplitMany.failed_once:
            SplitMany.failed_once = True
            raise ValueError("13 fails once, after its emits")

    failed_once = False


class BatchCounter(BasicBolt):
    """A BasicBolt with its own ``process_batch``: one tuple per batch, the batch's size,
    which is anchored to every tuple of the batch."""

    outputs = ["size"]
    batches: list[int] = []

    def process_batch(self, tuples: Any) -> None:
        BatchCounter.batches.append(len(tuples))
        self.emit((len(tuples),))


class BatchSink(Bolt):
    """A plain bolt with its own ``process_batch``: acks the even numbers, fails the odd
    ones once, and raises for a batch holding 77 the first time it sees it."""

    seen: list[int] = []
    raised = False

    def process_batch(self, tuples: Any) -> None:
        for tup in tuples:
            n = tup.values[0]
            if n == 77 and not BatchSink.raised:
                BatchSink.raised = True
                raise RuntimeError("77 breaks its batch")
            BatchSink.seen.append(n)
        self.ack_all(tuples)


class OwnProcess(BatchSink):
    """A subclass overriding only ``process``: the runtime calls it, tuple by tuple."""

    calls = 0

    def process(self, tup: Tuple) -> None:
        OwnProcess.calls += 1
        self.ack(tup)


def test_emit_many_anchors_each_row_and_a_raise_after_it_replays_the_input() -> None:
    ledger, out = Ledger(), Ledger()
    builder = TopologyBuilder("emit-many")
    builder.set_spout("source", ListSpout([(i,) for i in range(300)], ["n"], ledger))
    builder.set_bolt("split", SplitMany(), 2).shuffle_grouping("source")
    builder.set_bolt("sink", CollectBolt(out), 2).fields_grouping("split", ["n"])
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert ledger.acked == {n: 1 for n in range(300)} and ledger.failed == {13: 1}
    received = Counter(t.values[0] for _, t in out.received)
    assert received == {n: 6 if n == 13 else 3 for n in range(300)}  # 13's first emits were replayed
    assert run.component("split").emitted == 903


def test_emit_many_refuses_a_row_of_the_wrong_arity_like_emit() -> None:
    class Wrong(BasicBolt):
        outputs = ["a", "b"]

        def process(self, tup: Tuple) -> None:
            self.emit_many([(1, 2), (3,)])

    ledger = Ledger()
    builder = TopologyBuilder("emit-many-arity")
    builder.set_spout("source", ListSpout([(1,)], ["n"], ledger, max_retries=0))
    builder.set_bolt("wrong", Wrong()).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    assert ledger.failed == {0: 1}
    error = run.component("wrong").last_error
    assert error is not None
    assert "emitted 1 values on stream 'default', which declares 2 fields (a, b)" in error.message


def test_a_basic_bolts_process_batch_anchors_its_emits_to_the_whole_batch() -> None:
    BatchCounter.batches = []
    ledger = Ledger()
    builder = TopologyBuilder("batch-basic")
    builder.set_spout("source", ListSpout([(i,) for i in range(2000)], ["n"], ledger))
    builder.set_bolt("batches", BatchCounter()).shuffle_grouping("source")
    builder.set_bolt("sink", FailFirstSizeOnce()).shuffle_grouping("batches")
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert max(BatchCounter.batches) > 1  # batches, not single tuples
    # The sink failed the first batch's size tuple: every input of that batch failed and
    # was replayed; the others were acked once.
    first = BatchCounter.batches[0]
    assert sum(ledger.failed.values()) == first
    assert ledger.acked == {n: 1 for n in range(2000)}
    assert sum(BatchCounter.batches) == 2000 + first


class FailFirstSizeOnce(Bolt):
    """Fails the first tuple it gets, acks the others."""

    def __init__(self) -> None:
        self.failed = False

    def process(self, tup: Tuple) -> None:
        if not self.failed:
            self.failed = True
            self.fail(tup)
        else:
            self.ack(tup)


def test_a_plain_bolts_process_batch_runs_per_batch_and_a_raise_fails_the_whole_batch() -> None:
    BatchSink.seen, BatchSink.raised = [], False
    ledger = Ledger()
    builder = TopologyBuilder("batch-plain")
    builder.set_spout("source", ListSpout([(i,) for i in range(500)], ["n"], ledger))
    builder.set_bolt("sink", BatchSink(), 2).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert ledger.acked == {n: 1 for n in range(500)}
    assert 77 in ledger.failed and sum(ledger.failed.values()) > 1  # its batch-mates failed too
    assert set(BatchSink.seen) == set(range(500))
    sink = run.component("sink")
    assert sink.errors == 1 and sink.last_error is not None
    assert "process_batch: RuntimeError: 77 breaks its batch" in sink.last_error.message


def test_a_subclass_overriding_process_of_a_batch_bolt_gets_each_tuple() -> None:
    OwnProcess.calls = 0
    ledger = Ledger()
    builder = TopologyBuilder("own-process")
    builder.set_spout("source", ListSpout([(i,) for i in range(100)], ["n"], ledger))
    builder.set_bolt("sink", OwnProcess()).shuffle_grouping("source")
    assert run_local(builder.build(), timeout=30).outcome == "finished"
    assert OwnProcess.calls == 100 and ledger.acked == {n: 1 for n in range(100)}


class ColumnSink(Bolt):
    """A plain bolt taking columns: keeps each batch's values, raises for the batch
    holding 42 the first time it sees it, fails the row of 7 by its anchors the first
    time, and acks the other rows by theirs."""

    batches: list[Any] = []
    raised = failed_seven = False
    raised_rows = 0

    def process_columns(self, batch: Any) -> None:
        numbers = [values[0] for values in batch.values]
        if 42 in numbers and not ColumnSink.raised:
            ColumnSink.raised, ColumnSink.raised_rows = True, len(numbers)
            raise RuntimeError("42 breaks its batch")
        ColumnSink.batches.append(batch)
        anchors = batch.anchors
        if 7 in numbers and not ColumnSink.failed_seven:
            ColumnSink.failed_seven = True
            seven = numbers.index(7)
            self.fail_rows([anchors[seven]])
            anchors = anchors[:seven] + anchors[seven + 1:]
        self.ack_rows(anchors)


class CountN(StatefulBolt):
    """Passes each number on, counting them in its checkpointed state."""

    outputs = ["n"]

    def init_state(self, state: KeyValueState) -> None:
        self.state = state

    def process(self, tup: Tuple) -> None:
        self.state.put("seen", self.state.get("seen", 0) + 1)
        self.emit(tup.values)


class OwnBatches(ColumnSink):
    """A subclass overriding ``process_batch`` of a bolt that takes columns: it gets tuples."""

    def process_batch(self, tuples: Any) -> None:
        assert all(isinstance(tup, Tuple) for tup in tuples)
        OwnBatches.tuples += len(tuples)
        self.ack_all(tuples)

    tuples = 0


@pytest.mark.parametrize("acking", ["xor", "checkpoint"])
def test_a_bolt_taking_columns_gets_batches_acks_them_whole_and_a_raise_fails_its_batch(acking: str) -> None:
    # Under XOR acking ack_rows XORs each row's edge into its tree; under checkpoints the
    # trees complete at commit, and a fail names the roots to roll back.
    ColumnSink.batches, ColumnSink.raised, ColumnSink.failed_seven = [], False, False
    ledger = Ledger()
    builder = TopologyBuilder("columns")
    builder.set_spout("source", ListSpout([(i,) for i in range(500)], ["n"], ledger))
    if acking == "checkpoint":
        builder.set_bolt("count", CountN()).shuffle_grouping("source")
        builder.set_bolt("sink", ColumnSink(), 2).shuffle_grouping("count")
    else:
        builder.set_bolt("sink", ColumnSink(), 2).shuffle_grouping("source")
    run = run_local(builder.build({"topology.state.checkpoint.interval.ms": 100}), timeout=60)
    assert run.outcome == "finished"
    assert ColumnSink.raised and sum(ledger.failed.values()) >= 1  # the batch of 42 failed, and was replayed
    assert ColumnSink.failed_seven
    if acking == "xor":  # 7 failed by its anchors (under checkpoints, failing rolls every tree back)
        assert ledger.failed[7] >= 1
    assert set(ledger.acked) == set(range(500))
    batches = ColumnSink.batches
    assert all(isinstance(b, Batch) for b in batches) and max(map(len, batches)) > 1
    assert {values[0] for b in batches for values in b.values} >= set(range(500))
    sink = run.component("sink")
    assert sink.errors == 1 and sink.last_error is not None
    assert "process_columns: RuntimeError: 42 breaks its batch" in sink.last_error.message
    assert sink.failed == ColumnSink.raised_rows + 1  # the batch of 42, and 7


def test_a_subclass_overriding_process_batch_of_a_column_bolt_gets_tuples() -> None:
    OwnBatches.tuples = 0
    ledger = Ledger()
    builder = TopologyBuilder("own-batches")
    builder.set_spout("source", ListSpout([(i,) for i in range(100)], ["n"], ledger))
    builder.set_bolt("sink", OwnBatches()).shuffle_grouping("source")
    assert run_local(builder.build(), timeout=30).outcome == "finished"
    assert OwnBatches.tuples == 100 and ledger.acked == {n: 1 for n in range(100)}


class Twice(Bolt):
    """A column bolt: each number n in gives (n, 0) and (n, 1) out, anchored to n's row
    with ``emit_rows``, then acks its rows."""

    outputs = ["n", "copy"]

    def process_columns(self, batch: Any) -> None:
        rows = [(values[0], copy) for values in batch.values for copy in (0, 1)]
        anchors = [anchor for anchor in batch.anchors for _ in (0, 1)]
        self.emit_rows(rows, anchors)
        self.ack_rows(batch.anchors)


class FailThirteenOnce(Bolt):
    """Fails the first (13, 1) it gets and records and acks every other tuple."""

    seen: list[tuple[int, int]] = []
    failed = False

    def process(self, tup: Tuple) -> None:
        if tuple(tup.values) == (13, 1) and not FailThirteenOnce.failed:
            FailThirteenOnce.failed = True
            self.fail(tup)
            return
        FailThirteenOnce.seen.append(tuple(tup.values))
        self.ack(tup)


@pytest.mark.parametrize("acking", ["xor", "checkpoint"])
def test_emit_rows_anchors_each_row_to_its_input_row_so_a_failure_downstream_replays_it(acking: str) -> None:
    # Under XOR acking the rows' new edges are folded into their inputs' acks when
    # emitted: had they not been, a tree would complete when Twice acked its row, and
    # the failure of (13, 1) downstream would fail nothing.
    FailThirteenOnce.seen, FailThirteenOnce.failed = [], False
    ledger = Ledger()
    builder = TopologyBuilder("emit-rows")
    builder.set_spout("source", ListSpout([(i,) for i in range(300)], ["n"], ledger))
    upstream = "source"
    if acking == "checkpoint":
        builder.set_bolt("count", CountN()).shuffle_grouping("source")
        upstream = "count"
    builder.set_bolt("twice", Twice(), 2).shuffle_grouping(upstream)
    builder.set_bolt("sink", FailThirteenOnce(), 2).shuffle_grouping("twice")
    run = run_local(builder.build({"topology.state.checkpoint.interval.ms": 100}), timeout=60)
    assert run.outcome == "finished"
    assert FailThirteenOnce.failed and ledger.failed[13] >= 1  # the fault hit a tree in flight
    assert set(ledger.acked) == set(range(300))
    assert set(FailThirteenOnce.seen) == {(n, copy) for n in range(300) for copy in (0, 1)}
    assert run.component("twice").emitted >= 600 and run.component("twice").errors == 0


class RowsOfTheWrongShape(Bolt):
    """Emits rows that do not match their anchors or their stream."""

    outputs = ["n", "copy"]

    def process_columns(self, batch: Any) -> None:
        if batch.values[0][0] % 2:
            self.emit_rows([(values[0],) for values in batch.values], batch.anchors)
        else:
            self.emit_rows([(values[0], 0) for values in batch.values], batch.anchors[1:] + [None, None])


@pytest.mark.parametrize("rows, error", [
    ("arity", "emitted 1 values on stream 'default', which declares 2 fields (n, copy)"),
    ("anchors", "emitted 1 rows with 2 anchors: one input row's anchors per row"),
])
def test_emit_rows_of_the_wrong_shape_fail_their_batch_with_one_line(rows: str, error: str) -> None:
    ledger = Ledger()
    builder = TopologyBuilder("wrong-rows")
    builder.set_spout("source", ListSpout([(1,)] if rows == "arity" else [(2,)], ["n"], ledger, max_retries=0))
    builder.set_bolt("rows", RowsOfTheWrongShape()).shuffle_grouping("source")
    run = run_local(builder.build(), timeout=30)
    assert run.outcome == "finished"
    assert ledger.failed == {0: 1} and not ledger.acked
    component = run.component("rows")
    assert component.errors == 1 and component.last_error is not None
    assert error in component.last_error.message


class DirectBatchCounter(BasicBolt):
    """BatchCounter's batch size, emitted directly to the sink's first task."""

    outputs = ["size"]

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.target = context.component_tasks["sink"][0]

    def process_batch(self, tuples: Any) -> None:
        BatchCounter.batches.append(len(tuples))
        self.emit_direct(self.target, (len(tuples),))


def test_a_basic_bolts_direct_emits_from_process_batch_are_anchored_to_the_batch_too() -> None:
    BatchCounter.batches = []
    ledger = Ledger()
    builder = TopologyBuilder("batch-direct")
    builder.set_spout("source", ListSpout([(i,) for i in range(2000)], ["n"], ledger))
    builder.set_bolt("batches", DirectBatchCounter()).shuffle_grouping("source")
    builder.set_bolt("sink", FailFirstSizeOnce()).direct_grouping("batches")
    assert run_local(builder.build(), timeout=30).outcome == "finished"
    first = BatchCounter.batches[0]
    assert first > 1 and sum(ledger.failed.values()) == first
    assert ledger.acked == {n: 1 for n in range(2000)}
