"""What users subclass: spouts (sources) and bolts (processing steps), sync and async.

A component instance given to the builder is a prototype: every task gets its own deep
copy, as Storm deserializes one copy per executor. Keep constructors to plain settings and
open files or connections in ``open``/``prepare``.

The runtime binds the emitting methods (``emit``, ``emit_direct`` and, on bolts, ``ack``
and ``fail``) on each task's copy before ``open``/``prepare``; they go straight to the
task's output collector, with no extra call on the per-tuple path.

``outputs`` declares the fields of each output stream: a list of field names for the
default stream, or a dict ``{stream: [fields...]}`` for named streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Hashable, Mapping, Sequence

from streamflow.tuples import Anchors, Batch, Tuple

if TYPE_CHECKING:
    from streamflow.state import KeyValueState

Outputs = Sequence[str] | Mapping[str, Sequence[str]]
ComponentMetric = float | Mapping[str, float]
"""One value of :meth:`Component.metrics`: a number, or numbers by ``"label=value"``."""


@dataclass(frozen=True)
class TaskContext:
    """Where a task sits in the topology: handed to ``open``/``prepare``."""

    topology: str
    component: str
    task_id: int
    component_tasks: Mapping[str, tuple[int, ...]] = field(repr=False)
    input_tasks: frozenset[int] = field(default=frozenset(), repr=False)
    """The tasks of the components this one subscribes to."""

    @property
    def task_index(self) -> int:
        """This task's index among its component's tasks (0 .. parallelism-1)."""
        return self.component_tasks[self.component].index(self.task_id)

    @property
    def parallelism(self) -> int:
        """How many tasks the component has."""
        return len(self.component_tasks[self.component])


class Component:
    """Common base: the declared output streams, and metrics of the component's own."""

    outputs: Outputs = ()

    def metrics(self) -> Mapping[str, ComponentMetric]:
        """Counters or gauges of this task beyond the engine's (a Kafka spout's consumed
        bytes, say): they travel in heartbeats, show in ``status`` summed per component,
        and are exported at ``/metrics`` as ``streamflow_<name>`` (dots become ``_``) with
        topology, component and task labels. A value that is itself a mapping from
        ``"label=value"`` to a number adds that one label: ``{"kafka.lag":
        {"partition=events/0": 12, "partition=events/1": 0}}``. Keep label values bounded
        (partitions, client ids; never keys or tuples). Called about once a second, off
        the hot path."""
        return {}


class SpoutBase(Component):
    """What every spout has, sync or async.

    ``next_tuple`` is called in a loop while fewer than ``topology.max.spout.pending``
    tuple trees are in flight; it emits zero or more tuples. A tuple emitted with a
    ``msg_id`` is tracked: ``ack(msg_id)`` is called once its whole tree is processed,
    ``fail(msg_id)`` when a bolt failed it or it timed out, and the spout decides whether
    to emit it again. A finite spout returns True from ``exhausted`` once it has nothing
    left to emit or replay; local mode ends when every spout is exhausted and idle.
    Subclass :class:`Spout` or :class:`AsyncSpout`.
    """

    emit: Callable[..., None]
    """``emit(values, stream="default", msg_id=None)``: bound by the runtime."""
    emit_direct: Callable[..., None]
    """``emit_direct(task, values, stream="default", msg_id=None)``: bound by the runtime."""

    def ack(self, msg_id: Any) -> None:
        """The tuple tree of ``msg_id`` was fully processed."""

    def fail(self, msg_id: Any) -> None:
        """The tuple tree of ``msg_id`` failed or timed out: replay it or give up."""

    def exhausted(self) -> bool:
        """True once this finite spout has nothing more to emit or replay for now: tuples
        in flight may still fail, and one to replay makes it False again. Its task ends
        once it is True with every tree done; with checkpoints, the coordinator checkpoints
        at once when every spout task says True, to complete the last trees."""
        return False

    def activate(self) -> None:
        """The topology was activated: ``next_tuple`` calls resume."""

    def deactivate(self) -> None:
        """The topology was deactivated: ``next_tuple`` is not called until activation."""

    def reconfigure(self, config: Mapping[str, Any]) -> None:
        """The running topology's config changed (``streamflow set-config``): apply what
        can change without a restart, such as quotas."""

    def position(self) -> Mapping[str, Any] | None:
        """Where this task has read its source to, for checkpointed state (a topology with
        a stateful bolt): JSON data keyed so that no two tasks of the component share a
        key (a Kafka spout: ``"topic/partition"`` -> the offset of the next record it
        would emit). Called at each checkpoint barrier, right after the tuples emitted
        before it: seeking back to it must emit again every tuple emitted after it.

        A checkpoint stores the positions of every task of the component with the state
        they match; rolling back seeks the spouts to them, so each record counts once in
        the state even when a spout's own process died. The default, None, keeps no
        position: a rollback then fails the spout's tuples emitted since the last
        committed checkpoint, and the spout replays them (exact while the spout's task
        lives, at least once across its restarts, as Storm's stateful bolts are)."""
        return None

    def seek(self, positions: Mapping[str, Any]) -> None:
        """Go back to ``positions``: the last committed checkpoint's positions of every
        task of this component (take the keys that are yours now; a key that is not
        there means a source this task has not read before the checkpoint: start it
        where you first started it). Drop what is buffered or scheduled for a retry: the
        tuples emitted since are forgotten, neither acked nor failed, and what failed
        among them was handed to ``fail`` just before. Called at the start of a
        stateful topology (``positions`` empty when nothing was committed yet) and at
        each rollback, on spouts whose ``position`` returns a mapping."""


class Spout(SpoutBase):
    """A source of tuples whose methods return at once."""

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        """Acquire resources (files, connections) for this task."""

    def next_tuple(self) -> None:
        """Emit the next tuple(s), or nothing if none is ready."""

    def close(self) -> None:
        """Release resources; called once when the task stops."""


class AsyncSpout(SpoutBase):
    """A spout whose ``open``, ``next_tuple`` and ``close`` are coroutines (for I/O):
    ``next_tuple`` may await data (a Kafka fetch, say); other tasks of the worker run
    meanwhile."""

    async def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        """Acquire resources for this task."""

    async def next_tuple(self) -> None:
        """Emit the next tuple(s), awaiting them if need be."""

    async def close(self) -> None:
        """Release resources."""


class BoltBase(Component):
    """What every bolt has, sync or async: receives tuples, emits new ones, acks or fails
    each input.

    Emit with ``anchors=[input]`` to tie the new tuple into the input's tree, then
    ``ack(input)`` (or ``fail(input)``) exactly once. An exception raised by ``process``
    fails the input tuple, is counted and kept as the component's last error; the task
    goes on with the next tuple.

    ``end_batch`` runs after each batch of input tuples, before the batch's emits and
    acks leave the task: a sink can write a whole batch at once and ack after the write.
    Subclass :class:`Bolt`, :class:`BasicBolt`, :class:`AsyncBolt` or :class:`AsyncBasicBolt`.
    """

    tick_seconds: float | None = None
    """Ask for a tick tuple this often (``topology.tick.tuple.freq.secs`` wins when set):
    a windowed bolt's clock."""

    emit: Callable[..., None]
    """``emit(values, stream="default", anchors=None)``: bound by the runtime."""
    emit_many: Callable[..., None]
    """``emit_many(rows, stream="default", anchors=None)``: ``emit`` of each row of values,
    in one call (a bolt splitting its input into many tuples); bound by the runtime. In a
    :class:`BasicBolt` it takes no ``anchors``: each row is anchored as ``emit`` anchors."""
    emit_direct: Callable[..., None]
    """``emit_direct(task, values, stream="default", anchors=None)``: bound by the runtime."""
    emit_rows: Callable[..., None]
    """``emit_rows(rows, anchors, stream="default")``: emit each row of values anchored to
    the input row at the same position of ``anchors``, a batch's ``anchors`` column (a
    ``process_columns`` bolt with one output per input row); bound by the runtime."""
    ack: Callable[[Tuple], None]
    """``ack(tup)``: bound by the runtime."""
    ack_all: Callable[[Sequence[Tuple]], None]
    """``ack_all(tuples)``: ``ack`` of each, in one call, cheaper per tuple (a sink acking
    the batch a server confirmed); bound by the runtime."""
    ack_rows: Callable[[Sequence[Anchors]], None]
    """``ack_rows(anchors)``: ``ack_all`` of rows that ``process_columns`` took, given by
    their anchors (``batch.anchors``), none of them an anchor of an emit (a sink acking
    rows the server confirmed, which keeps only their anchors meanwhile); bound by the
    runtime."""
    fail: Callable[[Tuple], None]
    """``fail(tup)``: bound by the runtime."""
    fail_rows: Callable[[Sequence[Anchors]], None]
    """``fail_rows(anchors)``: ``fail`` of rows given by their anchors, as ``ack_rows``;
    bound by the runtime."""
    flush_acks: Callable[[], None]
    """``flush_acks()``: send the acks and fails made so far at once (bound by the runtime).
    Those made in ``process`` and ``end_batch`` leave when the batch ends; a bolt that
    acks from a task of its own (a sink acking writes as the server confirms them) calls
    this after acking, or its acks wait for its next batch."""


class Bolt(BoltBase):
    """A bolt whose ``process`` returns at once.

    ``prepare``, ``end_batch`` and ``cleanup`` may still be coroutines: a bolt that waits
    once per batch, never per tuple (a sink that hands each batch to its server), keeps
    ``process`` a plain function and saves the coroutine an :class:`AsyncBolt` costs per
    tuple."""

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> Awaitable[None] | None:
        """Acquire resources for this task."""
        return None

    def process(self, tup: Tuple) -> None:
        """Handle one input tuple."""

    def process_batch(self, tuples: Sequence[Tuple]) -> None:
        """Handle the tuples of one batch, in order. The runtime calls it when the bolt's
        class overrides it, no less nearly than ``process``; otherwise it calls
        ``process`` on each tuple (and never this method).

        Override it where a batch costs less handled in one loop than a call per tuple:
        a sink handing each record to its client, with its lookups done once per batch.
        ``end_batch`` follows as usual. An exception fails every tuple of the batch
        (those the bolt acked already are replayed too: at-least-once) and is kept as
        the component's error, so fail a tuple that cannot be handled and go on rather
        than raise for it. In a :class:`BasicBolt` the batch is acked once ``end_batch``
        returns, and what it emits is anchored to every tuple of the batch (the output
        stems from all of them).
        """
        for tup in tuples:
            self.process(tup)

    def process_columns(self, batch: Batch) -> None:
        """Handle one batch as columns (``batch.values``, ``batch.anchors``, one
        ``batch.origin``), with no :class:`Tuple` built per row. The runtime calls it
        when the bolt's class overrides it, no less nearly than ``process`` and
        ``process_batch``.

        For a sink that reads each row's values once: building and freeing a Tuple per row
        costs it about as much as its own work per row. Ack or fail rows with
        ``ack_rows(batch.anchors)`` and ``fail_rows(...)``: a sink that acks once the
        server confirmed a write keeps only the anchors until then, and lets the values
        go while they are still in the CPU's cache. To fail one row, or to emit anchored
        to it, build its tuples with ``batch.tuples()``. A tick arrives as a batch of one row
        (``batch.is_tick()``). An exception fails every row of the batch, as in
        ``process_batch``.
        """
        self.process_batch(batch.tuples())

    def end_batch(self) -> Awaitable[None] | None:
        """Called after each batch of input tuples."""
        return None

    def cleanup(self) -> Awaitable[None] | None:
        """Release resources; called once when the task stops."""
        return None


class BasicBolt(Bolt):
    """A bolt for the common case: every emit is anchored to the current input, which is
    acked when ``process`` returns and failed when it raises."""


class AsyncBolt(BoltBase):
    """A bolt whose methods are coroutines: ``process`` may await I/O. Tuples of one task
    are still processed one after another, in order."""

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        """Acquire resources for this task."""

    async def process(self, tup: Tuple) -> None:
        """Handle one input tuple."""

    async def end_batch(self) -> None:
        """Called after each batch of input tuples."""

    async def cleanup(self) -> None:
        """Release resources."""


class AsyncBasicBolt(AsyncBolt):
    """:class:`BasicBolt`'s auto-anchoring and auto-acking, with an async ``process``."""


class Stateful:
    """What makes a bolt stateful (Storm's ``IStatefulBolt``): its state is checkpointed
    and restored after a failure, and it acks its input tuples only once the checkpoint
    that covers them has committed.

    A topology with a stateful bolt checkpoints every
    ``topology.state.checkpoint.interval.ms``: barriers flow along every edge, each task
    saves its state once the barrier came in on all its inputs, and the checkpoint
    commits when every task has. After a failure (a tuple failed, a tree timed out, a
    worker died) every stateful task goes back to the last committed checkpoint and the
    spouts replay from there, so each record counts once in the state. The state lives in
    the provider ``topology.state.provider`` names (``memory``, ``redis``).
    """

    def init_state(self, state: KeyValueState) -> None:
        """Take the task's state, restored from the last committed checkpoint: called once,
        before the first tuple. Keep the object: a rollback restores it in place."""

    def pre_prepare(self, txid: int) -> None:
        """Checkpoint ``txid`` is about to save the state: flush what the bolt caches."""

    def pre_commit(self, txid: int) -> None:
        """Checkpoint ``txid`` is about to commit."""

    def pre_rollback(self) -> None:
        """The state is about to go back to the last committed checkpoint: drop caches
        derived from it."""

    def end_of_input(self) -> None:
        """Every input of this task has ended (the finite spouts upstream are exhausted
        and done): a windowed bolt fires its last windows."""

    def state_key_group(self, key: Hashable, groups: int) -> int | None:
        """The key group (of ``groups``) that keeps ``key``; None: the key's own, by the
        hash the fields grouping routes on. A bolt whose state keys are not the routed
        values (a windowed bolt's keys hold the routed key and a window) says here which
        group each belongs to."""
        return None


class StatefulBolt(Stateful, BasicBolt):
    """A stateful :class:`BasicBolt`: emits are anchored to the input, which is acked
    once the checkpoint covering it commits (failed at once when ``process`` raises)."""


class AsyncStatefulBolt(Stateful, AsyncBasicBolt):
    """:class:`StatefulBolt` with an async ``process``."""
