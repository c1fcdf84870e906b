"""Checkpointed state in local mode (memory provider): a stateful word count keeps exact
counts through failures of its own, of the bolt upstream and of a sink downstream;
init_state and the checkpoint hooks are called as documented; a value the state codec
cannot hold fails only its tuple; a stateless topology runs without checkpoints.

Faults are injected right after a checkpoint commits (:class:`Faults`), so that each
lands in the middle of an interval; the two tests at the end make a failure land during
a round on purpose (two races the coordinator had: a failure reported while a rollback
round was under way was ignored, and a checkpoint could commit a tree that failed before
its barrier).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
from collections import Counter
from typing import Any, Iterable, Mapping

import pytest
from cluster import wait_for
from live import LiveRun
from worker_runs import run, stats

from streamflow import (
    AsyncBasicBolt,
    AsyncSpout,
    AsyncStatefulBolt,
    BasicBolt,
    Bolt,
    KeyValueState,
    StatefulBolt,
    TaskContext,
    Topology,
    TopologyBuilder,
    Tuple,
    run_local,
)
from streamflow.checkpoint import BoltCheckpoints
from streamflow.components import Outputs
from streamflow.executor import BoltExecutor
from streamflow.state.codec import encode_key, encode_value
from streamflow.state.memory import MemoryProvider
from streamflow.state.providers import PROVIDERS
from streamflow.state.store import StateStore
from streamflow.status_view import format_status
from streamflow.telemetry import combine
from streamflow.testing import CollectBolt, Ledger, ListSpout
from streamflow.topology import CHECKPOINT_COMPONENT
from streamflow.worker import Worker

SENTENCES = [("the cat sat",), ("a cat on the mat",), ("the dog is on it",), ("is it a fox",)] * 250
"""Words that each of 3 count tasks has some of."""
TRUTH = Counter(word for (sentence,) in SENTENCES for word in sentence.split())
FAST = {"topology.state.checkpoint.interval.ms": 50, "topology.max.spout.pending": 100}
"""A checkpoint every 50 ms, and at most 100 sentences in flight per spout task: a run
of a thousand sentences commits several checkpoints, and after each commit the spouts
emit again (trees complete at commits), so tuples flow right after every commit."""


class Faults:
    """Faults to inject, shared by every task's copy of the components (a deep copy
    returns it). One is armed by each checkpoint that commits (a count task's
    ``pre_commit`` with a new txid) and raised by the next call of :meth:`maybe_raise`:
    each fault lands just after a commit, once the rollback of the one before is over."""

    def __init__(self, count: int = 0) -> None:
        self.left = count
        self.raised = 0
        self.armed = False
        self._armed_txid = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Faults:
        return self

    def committed(self, txid: int) -> None:
        if txid > self._armed_txid:
            self._armed_txid, self.armed = txid, True

    def take(self) -> bool:
        """Use the armed fault, if there is one."""
        if not self.armed:
            return False
        self.armed = False
        return True

    def maybe_raise(self) -> None:
        if self.left and self.take():
            self.left -= 1
            self.raised += 1
            raise RuntimeError(f"injected fault {self.raised}")


class Calls(list):  # type: ignore[type-arg]
    """(task, event, argument) of the calls a stateful bolt's tasks got, in order; shared
    by every task's copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Calls:
        return self


class Split(BasicBolt):
    """Emits each word of a sentence; a fault raises after the first word went out, so
    that the count bolt has counted a word of a sentence that failed."""

    outputs = ["word"]

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()

    def process(self, tup: Tuple) -> None:
        words = tup.values[0].split()
        self.emit((words[0],))
        self.faults.maybe_raise()
        for word in words[1:]:
            self.emit((word,))


class Counting:
    """A running count per word in checkpointed state, and a record of the state hooks."""

    outputs: Outputs = ["word", "count"]
    emit: Any
    task: int

    def __init__(self, faults: Faults | None = None, raises: bool = True, calls: Calls | None = None) -> None:
        self.faults = faults or Faults()
        self.raises = raises
        self.calls = Calls() if calls is None else calls

    def init_state(self, state: KeyValueState) -> None:
        self.counts = state
        self.calls.append((self.task, "init_state", None))

    def count(self, word: str) -> None:
        if not self.calls or self.calls[-1][:2] != (self.task, "process"):
            self.calls.append((self.task, "process", None))  # once per run of tuples
        count = self.counts.get(word, 0) + 1
        self.counts.put(word, count)
        if self.raises:
            self.faults.maybe_raise()  # after the put: the rollback must take it back
        self.emit((word, count))

    def pre_prepare(self, txid: int) -> None:
        self.calls.append((self.task, "pre_prepare", txid))

    def pre_commit(self, txid: int) -> None:
        self.calls.append((self.task, "pre_commit", txid))
        self.faults.committed(txid)

    def pre_rollback(self) -> None:
        self.calls.append((self.task, "pre_rollback", None))


class Count(Counting, StatefulBolt):
    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.task = context.task_id

    def process(self, tup: Tuple) -> None:
        self.count(tup.values[0])


class AsyncCount(Counting, AsyncStatefulBolt):
    """:class:`Count` with an async ``process`` that suspends before each update."""

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.task = context.task_id

    async def process(self, tup: Tuple) -> None:
        await asyncio.sleep(0)
        self.count(tup.values[0])


def wordcount(count: Any, split: Any = None, sink: Any = None, spout: Any = None,
              config: Mapping[str, Any] = FAST, spouts: int = 2,
              ledger: Ledger | None = None) -> tuple[Topology, Ledger]:
    """sentences (2 tasks) -> split (2, shuffle) -> count (3, fields on word) -> sink (2).
    The ledger is the sink's, and the spout's unless ``spout`` is given (give it the
    same ``ledger``)."""
    ledger = ledger or Ledger()
    builder = TopologyBuilder("stateful-wordcount")
    builder.set_spout("sentences", spout or ListSpout(SENTENCES, ["sentence"], ledger), spouts)
    builder.set_bolt("split", split or Split(), 2).shuffle_grouping("sentences")
    builder.set_bolt("count", count, 3).fields_grouping("split", ["word"])
    builder.set_bolt("sink", sink or CollectBolt(ledger), 2).shuffle_grouping("count")
    return builder.build(config), ledger




def state_metric(worker: Worker, component: str, name: str) -> float:
    """A state metric of ``component`` (``state.keys``, ``state.rollbacks``...), summed."""
    return sum(e.metrics()[name] for e in worker.executors if e.component == component)


def count_executors(worker: Worker) -> list[BoltExecutor]:
    found = [e for e in worker.executors if e.component == "count"]
    assert all(isinstance(e, BoltExecutor) and e.checkpoints is not None for e in found)
    return found  # type: ignore[return-value]


def final_state(worker: Worker) -> dict[Any, Any]:
    """The union of the count tasks' states (each key in exactly one)."""
    union: dict[Any, Any] = {}
    for executor in count_executors(worker):
        assert executor.checkpoints is not None and executor.checkpoints.state is not None
        for key, value in executor.checkpoints.state.items():
            assert key not in union, f"{key!r} is in the state of two tasks"
            union[key] = value
    return union


def highest_counts(values: Iterable[Any]) -> Counter[str]:
    """The highest count seen per word: its final count."""
    best: Counter[str] = Counter()
    for word, count in values:
        best[word] = max(best[word], count)
    return best


def received(ledger: Ledger) -> list[Any]:
    return [tuple(tup.values) for _, tup in ledger.received]


def assert_exact(worker: Worker, ledger: Ledger, truth: Counter[str] = TRUTH) -> None:
    """Every sentence acked; the counts the sink saw and those in the state both exact."""
    assert set(ledger.acked) == set(range(len(SENTENCES)))
    assert highest_counts(received(ledger)) == truth
    assert final_state(worker) == dict(truth)
    assert state_metric(worker, "count", "state.keys") == len(truth)


# ----------------------------------------------------------------------------- exact counts


def test_counts_are_exact_and_every_sentence_is_acked_once() -> None:
    topology, ledger = wordcount(Count())
    worker = run(topology)
    assert_exact(worker, ledger)
    assert ledger.acked == Counter(range(len(SENTENCES))) and not ledger.failed
    assert state_metric(worker, "count", "state.rollbacks") == 0
    assert stats(worker, CHECKPOINT_COMPONENT).acked >= 2  # checkpoints committed


def test_the_last_committed_checkpoint_in_the_provider_holds_the_exact_counts() -> None:
    topology, _ = wordcount(Count())
    worker = run(topology)
    assert worker.provider is not None
    record = worker.provider.read_checkpoint()
    assert record is not None and record["txid"] >= 1
    groups = topology.config["topology.state.key.groups"]
    stored = worker.provider.store("count").restore((record["epoch"], record["txid"]), range(groups))
    counts = KeyValueState("count", 0, 1, groups)
    counts.load(stored)
    assert dict(counts.items()) == dict(TRUTH)


def test_run_local_ends_and_reports_the_checkpoint_coordinator() -> None:
    topology, ledger = wordcount(Count())
    result = run_local(topology, timeout=30)
    assert result.outcome == "finished"
    coordinator = result.component(CHECKPOINT_COMPONENT)
    assert coordinator.kind == "checkpoint" and coordinator.tasks == 1 and coordinator.acked >= 1
    assert highest_counts(received(ledger)) == TRUTH


def test_the_end_of_a_finite_input_is_checkpointed_at_once_not_an_interval_later() -> None:
    # Checkpoints an hour apart, and a run that ends within 30 s: once every spout task
    # emitted all its rows (two tasks one row each, the third none: it is done at once),
    # the coordinator takes the one checkpoint that completes their trees.
    ledger = Ledger()
    topology, _ = wordcount(Count(), spout=ListSpout(SENTENCES[:2], ["sentence"], ledger), spouts=3,
                            ledger=ledger, config={"topology.state.checkpoint.interval.ms": 3_600_000})
    result = run_local(topology, timeout=30)
    assert result.outcome == "finished", result.summary()
    assert ledger.acked == {0: 1, 1: 1}
    assert highest_counts(received(ledger)) == Counter(w for (s,) in SENTENCES[:2] for w in s.split())
    assert result.component(CHECKPOINT_COMPONENT).acked == 1


class SlowPrepare(StatefulBolt):
    """Keeps the last number in its state; each checkpoint's prepare takes it 0.6 s (the
    work of a slow store's save), and records when it started."""

    starts: list[float] = []

    def init_state(self, state: KeyValueState) -> None:
        self.state = state

    def process(self, tup: Tuple) -> None:
        self.state.put("last", tup.values[0])

    def pre_prepare(self, txid: int) -> None:
        SlowPrepare.starts.append(time.monotonic())
        time.sleep(0.6)  # a slow save


def test_checkpoints_start_an_interval_apart_however_long_each_takes() -> None:
    # As Storm's checkpoint spout times them: from one start to the next, so a checkpoint
    # that takes longer than the interval (0.6 s against 0.3) is followed at once. Timed
    # from each commit instead, they start 0.9 s apart, and trees wait that much longer.
    SlowPrepare.starts = []
    builder = TopologyBuilder("cadence")
    builder.set_spout("numbers", ListSpout([(i,) for i in range(1_000_000)], ["n"]))
    builder.set_bolt("last", SlowPrepare()).shuffle_grouping("numbers")
    run = LiveRun(builder.build({"topology.state.checkpoint.interval.ms": 300}), timeout=60)
    try:
        wait_for(lambda: len(SlowPrepare.starts) >= 6, 30, "six checkpoints")
    finally:
        run.stop()
    assert run.join(30) == "stopped"
    gaps = [b - a for a, b in zip(SlowPrepare.starts[1:], SlowPrepare.starts[2:], strict=False)]
    assert statistics.median(gaps) < 0.75, gaps  # 0.6 s and a little (the commit), not 0.9


def test_async_stateful_bolt_counts_exactly() -> None:
    topology, ledger = wordcount(AsyncCount())
    worker = run(topology)
    assert_exact(worker, ledger)
    assert not ledger.failed


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("bolt", [Count, AsyncCount])
def test_a_stateful_bolt_that_raises_rolls_back_and_counts_stay_exact(bolt: type) -> None:
    faults = Faults(3)
    topology, ledger = wordcount(bolt(faults))
    worker = run(topology)
    assert faults.raised == 3 and stats(worker, "count").errors == 3
    # The faults hit work in flight: trees failed, every count task went back to its
    # last committed checkpoint, and the spouts replayed what they had emitted since.
    assert state_metric(worker, "count", "state.rollbacks") == 3 * 3
    assert stats(worker, "sentences").failed > 0 and ledger.failed
    assert sum(ledger.emitted.values()) > len(SENTENCES)
    assert_exact(worker, ledger)


def test_a_stateless_bolt_upstream_that_raises_midway_leaves_counts_exact() -> None:
    # Split raises after emitting a sentence's first word: the count bolt counted it,
    # and the rollback must take it back out.
    faults = Faults(3)
    topology, ledger = wordcount(Count(faults, raises=False), split=Split(faults))
    worker = run(topology)
    assert faults.raised == 3 and stats(worker, "split").errors == 3
    assert state_metric(worker, "count", "state.rollbacks") == 3 * 3
    assert stats(worker, "sentences").failed > 0 and ledger.failed
    assert_exact(worker, ledger)


# ----------------------------------------------------------------------------- hooks


def calls_of(calls: Calls, task: int) -> list[tuple[str, Any]]:
    return [(event, arg) for t, event, arg in calls if t == task]


def test_init_state_comes_once_before_the_first_tuple_and_hooks_follow_checkpoints() -> None:
    calls = Calls()
    topology, ledger = wordcount(Count(calls=calls))
    worker = run(topology)
    assert_exact(worker, ledger)
    for task in topology.task_layout()["count"]:
        seen = calls_of(calls, task)
        assert seen[0] == ("init_state", None), seen[:3]
        assert [e for e, _ in seen].count("init_state") == 1
        assert ("process", None) in seen
        assert ("pre_rollback", None) not in seen  # the rollback that starts a run is no rollback
        prepared = [txid for e, txid in seen if e == "pre_prepare"]
        committed = [txid for e, txid in seen if e == "pre_commit"]
        assert prepared == sorted(set(prepared)) and prepared
        assert committed == sorted(set(committed)) and committed
        for txid in committed:  # a checkpoint commits only once this task prepared it
            assert seen.index(("pre_prepare", txid)) < seen.index(("pre_commit", txid))


def test_a_rollback_calls_pre_rollback_and_restores_the_same_state_object() -> None:
    calls = Calls()
    faults = Faults(2)
    topology, ledger = wordcount(Count(faults, calls=calls))
    worker = run(topology)
    assert faults.raised == 2
    assert_exact(worker, ledger)
    for task in topology.task_layout()["count"]:
        seen = [e for e, _ in calls_of(calls, task)]
        assert seen[0] == "init_state" and seen.count("init_state") == 1
        assert seen.count("pre_rollback") == 2  # every stateful task rolls back, each time
    for executor in count_executors(worker):
        assert executor.checkpoints is not None
        assert executor.instance.counts is executor.checkpoints.state  # restored in place


# ----------------------------------------------------------------------------- codec errors


class Poison(Count):
    """Puts a value the state codec cannot hold (a set) for the word ``poison``."""

    def process(self, tup: Tuple) -> None:
        if tup.values[0] == "poison":
            self.counts.put("poison", {"a", "set"})
        super().process(tup)


class GatedSpout(ListSpout):
    """A :class:`ListSpout` that emits row ``gated`` (each attempt) only once a checkpoint
    barrier came by since the rollback its last attempt caused (``position`` is called at
    each barrier), and, with ``last``, only once every other row is acked. Its failure
    then never meets a rollback round in progress, nor a checkpoint that covers it and
    is about to commit (the two races at the end of this file)."""

    def __init__(self, rows: list[Any], ledger: Ledger, gated: int, last: bool = False,
                 max_retries: int | None = None) -> None:
        super().__init__(rows, ["sentence"], ledger, max_retries=max_retries)
        self.gated, self.last = gated, last

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        super().open(config, context)
        self._barriers = -1  # the run's first rollback comes before the first checkpoint

    def position(self) -> None:
        self._barriers += 1  # no position: a rollback fails the rows in flight, to come again

    def fail(self, msg_id: int) -> None:
        super().fail(msg_id)
        if msg_id == self.gated:
            self._barriers = 0  # called in the rollback, after its own call of position

    def next_tuple(self) -> None:
        todo = self._todo
        if self.gated in todo:
            ready = self._barriers >= 1 and (not self.last or len(self.ledger.acked) == len(self.rows) - 1)
            if ready:
                todo.remove(self.gated)
                todo.appendleft(self.gated)
            elif todo[0] == self.gated:
                todo.rotate(-1)
                if todo[0] == self.gated:
                    return  # only the gated row is left: wait for its turn
        super().next_tuple()


POISON_ROW = ("the poison cat",)


def test_a_value_the_codec_cannot_hold_fails_its_tuple_in_one_line_and_the_run_ends() -> None:
    rows = [*SENTENCES[:300], POISON_ROW, *SENTENCES[300:600]]
    poison = 300
    ledger = Ledger()
    spout = GatedSpout(rows, ledger, gated=poison, max_retries=2)
    topology, _ = wordcount(Poison(), spout=spout, spouts=1, ledger=ledger)
    worker = run(topology)
    count = stats(worker, "count")
    assert count.errors == 3 and count.last_error is not None
    message = count.last_error.message
    assert "\n" not in message
    assert "StateCodecError: state value of type set cannot be encoded" in message
    assert poison not in ledger.acked and ledger.failed[poison] == 3  # tried 3 times, then dropped
    assert "poison" not in final_state(worker)
    # Every row acked counts once, every row dropped not at all (each rollback the poison
    # row caused failed the rows in flight with it, which used up retries of their own).
    truth = Counter(word for i in ledger.acked for word in rows[i][0].split())
    assert final_state(worker) == dict(truth)
    seen = highest_counts(received(ledger))
    for word in truth:  # the poison row's other words were emitted by work rolled back
        assert seen[word] - truth[word] in ((0, 1) if word in POISON_ROW[0].split() else (0,)), word


def test_a_poison_row_alone_is_dropped_and_every_other_word_is_exact() -> None:
    rows = [*SENTENCES, POISON_ROW]
    ledger = Ledger()
    spout = GatedSpout(rows, ledger, gated=len(SENTENCES), last=True, max_retries=1)
    topology, _ = wordcount(Poison(), spout=spout, spouts=1, ledger=ledger)
    worker = run(topology)
    assert set(ledger.acked) == set(range(len(SENTENCES))) and ledger.failed == {len(SENTENCES): 2}
    assert final_state(worker) == dict(TRUTH)
    # The count bolt emitted the poison row's other words before the rollback took their
    # counts back: outputs of rolled-back work stay visible downstream (they come from
    # state not yet committed), one above the true count here, as the row was dropped.
    assert highest_counts(received(ledger)) == TRUTH + Counter({"the": 1, "cat": 1})
    last = stats(worker, "count").last_error
    assert last is not None and "\n" not in last.message and "type set" in last.message


# ----------------------------------------------------------------------------- a sink


class Written(list):  # type: ignore[type-arg]
    def __deepcopy__(self, memo: dict[int, Any]) -> Written:
        return self


class LateAckSink(Bolt):
    """A sink as a Kafka producer is one: it hands each batch to a writer task, which
    waits for the "server" (a pause), records the values as written, then acks the batch
    with ack_all and sends the acks with flush_acks."""

    def __init__(self, written: Written) -> None:
        self.written = written

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.batch: list[Tuple] = []
        self.writers: set[asyncio.Task[None]] = set()

    def process(self, tup: Tuple) -> None:
        self.batch.append(tup)

    def end_batch(self) -> None:
        batch, self.batch = self.batch, []
        writer = asyncio.get_running_loop().create_task(self._write(batch))
        self.writers.add(writer)
        writer.add_done_callback(self.writers.discard)

    async def _write(self, batch: list[Tuple]) -> None:
        await asyncio.sleep(0.005)  # the server's answer
        self.written.extend(tuple(tup.values) for tup in batch)
        self.ack_all(batch)
        self.flush_acks()


@pytest.mark.parametrize("faults", [0, 2])
def test_a_sink_that_acks_later_from_a_task_of_its_own_gets_exact_counts(faults: int) -> None:
    written, injected = Written(), Faults(faults)
    topology, ledger = wordcount(Count(injected), sink=LateAckSink(written))
    worker = run(topology)
    assert injected.raised == faults
    assert set(ledger.acked) == set(range(len(SENTENCES)))
    # A tree is acked at the commit of the checkpoint after it, which the sink's barrier
    # held back until the sink had acked (written) what it took before the barrier.
    assert highest_counts(written) == TRUTH
    assert final_state(worker) == dict(TRUTH)
    sink = stats(worker, "sink")
    assert sink.acked == sink.executed


# ----------------------------------------------------------------------------- status


def test_status_of_a_run_shows_the_count_bolts_state_and_the_last_checkpoint() -> None:
    faults = Faults(1)
    topology, ledger = wordcount(Count(faults))
    worker = run(topology)
    assert faults.raised == 1
    executors: dict[str, list[Any]] = {}
    for executor in worker.executors:
        executors.setdefault(executor.component, []).append(executor)
    views = {name: {"tasks": len(tasks), **combine(tasks[0].kind, [t.report() for t in tasks])}
             for name, tasks in executors.items()}
    text = format_status({"name": topology.name, "id": "wc-1", "status": "active", "uptime": 1.0,
                          "workers": [], "components": views, "errors": {}})
    assert worker.provider is not None
    record = worker.provider.read_checkpoint()
    assert record is not None
    lines = [line for line in text.splitlines() if line.startswith("state of ")]
    assert len(lines) == 1, text
    keys = len(TRUTH)
    size = sum(len(encode_key(word)) + len(encode_value(n)) for word, n in TRUTH.items())
    assert re.fullmatch(rf"state of count: {keys} keys, {size} B, 3 task rollbacks since start; "
                        rf"checkpoint {record['txid']} committed at \d\d:\d\d:\d\d, took \d+\.\d\d s, 0 failed",
                        lines[0]), lines[0]


# ----------------------------------------------------------------------------- stateless


class PlainCount(BasicBolt):
    outputs = ["word", "count"]

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.counts: Counter[str] = Counter()

    def process(self, tup: Tuple) -> None:
        word = tup.values[0]
        self.counts[word] += 1
        self.emit((word, self.counts[word]))


def test_a_stateless_topology_has_no_checkpoint_task_and_runs_as_before() -> None:
    topology, ledger = wordcount(PlainCount(), config={})
    assert not topology.is_stateful
    assert CHECKPOINT_COMPONENT not in topology.task_layout()
    assert not any(c["stateful"] for c in topology.describe()["components"].values())
    result = run_local(topology, timeout=30)
    assert result.outcome == "finished"
    assert CHECKPOINT_COMPONENT not in {c.component for c in result.components}
    assert ledger.acked == Counter(range(len(SENTENCES))) and not ledger.failed
    assert highest_counts(received(ledger)) == TRUTH
    worker = Worker(topology)
    assert worker.provider is None
    assert all(getattr(e, "checkpoints", None) is None for e in worker.executors)


# ----------------------------------------------------------------------------- races


class GatedRestore(StateStore):
    """A memory store whose restore waits (on the store's thread) until ``gate`` is set:
    a store slow to answer at the start, as a large state in Redis is."""

    def __init__(self, store: StateStore, gate: threading.Event) -> None:
        self._store, self._gate = store, gate

    def restore(self, upto: Any, groups: Iterable[int]) -> dict[bytes, bytes]:
        self._gate.wait(5)
        return self._store.restore(upto, groups)

    def prepare(self, at: Any, changes: Any, committed: Any) -> None:
        self._store.prepare(at, changes, committed)

    def commit(self, at: Any, groups: Iterable[int]) -> None:
        self._store.commit(at, groups)


def test_a_failure_during_the_first_rollback_round_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # The count tasks' first restore waits until the failing split has asked for a
    # rollback (its alert is then in the coordinator's inbox ahead of their reports), so
    # the split's fault lands while the run's first rollback round is still in progress.
    # Spouts emit as soon as they have rolled back, so a slow restore (a large state)
    # leaves this window open in any run.
    alerted = threading.Event()
    original_alert = BoltCheckpoints.alert

    def alert(self: BoltCheckpoints, roots: list[int]) -> None:
        original_alert(self, roots)
        alerted.set()

    monkeypatch.setattr(BoltCheckpoints, "alert", alert)

    class Gated(MemoryProvider):
        def store(self, component: str) -> StateStore:
            return GatedRestore(super().store(component), alerted)

    monkeypatch.setitem(PROVIDERS, "gated", lambda topology, config: Gated())
    faults = Faults(1)
    faults.armed = True  # the split's very first tuple raises
    topology, ledger = wordcount(Count(raises=False), split=Split(faults),
                                 config={**FAST, "topology.state.provider": "gated"})
    worker = run(topology)
    assert faults.raised == 1 and alerted.is_set()
    assert ledger.failed, "the failed sentence was acked at the next commit, never replayed"
    assert_exact(worker, ledger)


class SlowFetchSpout(AsyncSpout):
    """Emits sentence 0, then (an async fetch that takes a while) waits in ``next_tuple``
    from the first checkpoint's barrier until that checkpoint commits (at most 1 s): the
    failure of sentence 0 reaches this task only after the commit. Then it emits the
    other sentences."""

    outputs = ["sentence"]

    def __init__(self, ledger: Ledger, sync: Sync) -> None:
        self.ledger, self.sync = ledger, sync

    async def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self.next = 0

    def position(self) -> None:
        if self.next:  # a prepare's barrier (the rollback that starts the run comes first)
            self.sync.sealed.set()

    async def next_tuple(self) -> None:
        if self.next == 1:
            if not self.sync.sealed.is_set():
                return
            if not self.sync.committed.is_set():
                try:
                    await asyncio.wait_for(self.sync.committed.wait(), 1.0)
                except TimeoutError:
                    pass
        if self.next < len(SENTENCES):
            self.ledger.emitted[self.next] += 1
            self.emit(SENTENCES[self.next], msg_id=self.next)
            self.next += 1

    def ack(self, msg_id: int) -> None:
        self.ledger.acked[msg_id] += 1

    def fail(self, msg_id: int) -> None:
        self.ledger.failed[msg_id] += 1
        self.next = min(self.next, msg_id)  # replays from there (sentences after it come again)

    def exhausted(self) -> bool:
        return self.next >= len(SENTENCES)


class Sync:
    def __init__(self) -> None:
        self.sealed = asyncio.Event()
        self.committed = asyncio.Event()
        self.split_failed = False

    def __deepcopy__(self, memo: dict[int, Any]) -> Sync:
        return self


class SplitAfterSeal(AsyncBasicBolt):
    """Fails sentence 0 (after emitting its first word) once the spout has sealed it into
    the first checkpoint: the failure comes before the split's barrier, as it must for
    the checkpoint to cover it."""

    outputs = ["word"]

    def __init__(self, sync: Sync) -> None:
        self.sync = sync

    async def process(self, tup: Tuple) -> None:
        words = tup.values[0].split()
        self.emit((words[0],))
        if not self.sync.split_failed:  # the first sentence, of either task
            self.sync.split_failed = True
            await self.sync.sealed.wait()
            raise RuntimeError("injected fault after the spout's barrier")
        for word in words[1:]:
            self.emit((word,))


class CommitSignal(Count):
    def __init__(self, sync: Sync) -> None:
        super().__init__(raises=False)
        self.sync = sync

    def pre_commit(self, txid: int) -> None:
        super().pre_commit(txid)
        self.sync.committed.set()


def test_a_tree_that_failed_before_the_barrier_is_not_acked_by_the_commit() -> None:
    sync, ledger = Sync(), Ledger()
    topology, _ = wordcount(CommitSignal(sync), split=SplitAfterSeal(sync), spout=SlowFetchSpout(ledger, sync),
                            spouts=1, ledger=ledger)
    worker = run(topology)
    assert sync.split_failed
    assert ledger.failed[0] >= 1, "sentence 0 failed and was acked at the commit, never replayed"
    assert_exact(worker, ledger)
