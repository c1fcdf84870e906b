"""Output collectors: where a task's emits, acks and fails go before they leave the task.

This is the hot path. An emit picks the target tasks with its stream's router
(:mod:`streamflow.groupings`) and appends the tuple's values and anchors to that target's
batch on the stream, as two columns: no :class:`~streamflow.tuples.Tuple` is built on
the sending side, where a batch for another worker would only be taken apart again to
be encoded. The
transport builds the tuples of a batch for a task in its own worker in one call.

How tuples are tracked depends on the topology. Storm's XOR acking (:mod:`streamflow.acking`)
gives every tuple sent to a task a random edge id in its spout tuple's tree. In a
checkpointed topology (one with a stateful bolt) no edge is tracked: a spout tuple's tree
completes when the first checkpoint taken after it commits, because the checkpoint's
barrier passes a task only behind the work it acked (:mod:`streamflow.checkpoint`). Its
tuples carry only their roots, each with edge 0, so that a failure names the spout tuples
to replay, and an ack is only counted: no edge ids drawn, no acker messages.

Acks and fails accumulate per root id. Nothing leaves until the executor calls
:meth:`OutputCollector.flush` after a batch, so one message carries a whole batch to each
target task and one message carries all acker updates of the batch (several acks of one
root collapse into one XOR). Tuples of one stream reach a task in the order they were
emitted; a flush sends each stream's batch in turn, so tuples of two streams to one task
do not keep their order relative to each other.
"""

from __future__ import annotations

import asyncio
from operator import itemgetter
from typing import Any, Callable, Collection, Iterable, Sequence

from streamflow.acking import PendingTrees, RecentFailures, new_id
from streamflow.groupings import Router, make_router, union_router
from streamflow.inbox import ACK_ACK, ACK_FAIL, ACK_INIT
from streamflow.stats import TaskStats
from streamflow.topology import ACKER_COMPONENT, Topology
from streamflow.transport.base import Transport, UnencodableValue
from streamflow.tuples import DEFAULT_STREAM, Anchors, Origin, Tuple

_first = itemgetter(0)

Outgoing = tuple[list[Sequence[Any]], list[Anchors]]
"""The tuples emitted to one task on one stream since the last flush: values and anchors."""


class _Stream:
    """An output stream of one task: where its tuples go, what they carry, and the
    batches emitted on it since the last flush, by target task."""

    __slots__ = ("route", "origin", "arity", "direct", "batches")

    def __init__(self, route: Router, origin: Origin, direct: frozenset[int]) -> None:
        self.route = route
        """The targets of a tuple, over the stream's subscriptions (direct grouping aside)."""
        self.origin = origin
        self.arity = len(origin.fields)
        self.direct = direct
        """The tasks that subscribe to the stream with a direct grouping."""
        self.batches: dict[int, Outgoing] = {}

    def add(self, task: int, values: Sequence[Any], anchors: Anchors) -> None:
        batch = self.batches.get(task)
        if batch is None:
            self.batches[task] = ([values], [anchors])
        else:
            batch[0].append(values)
            batch[1].append(anchors)


class OutputCollector:
    """Routing and buffering shared by spouts and bolts; one per task."""

    def __init__(
        self,
        topology: Topology,
        component: str,
        task: int,
        transport: Transport,
        local_tasks: Collection[int],
        stats: TaskStats,
    ) -> None:
        layout = topology.task_layout()
        self.component = component
        self.task = task
        self.stats = stats
        self.acking = topology.tracks_trees
        self.edges = self.acking and not topology.is_stateful
        """Whether trees are tracked edge by edge through the ackers; False in a
        checkpointed topology, whose trees complete at commit (see the module docstring)."""
        self.failed_roots: list[int] | None = None
        """Root ids of the trees this task failed since the checkpoint party last looked
        (a checkpointed topology's tasks: it tells the coordinator, which rolls back)."""
        self._ackers = layout[ACKER_COMPONENT]
        self._transport = transport
        self._local_tasks = local_tasks
        self._streams: dict[str, _Stream] = {}
        for stream, fields in topology.components[component].outputs.items():
            routers: list[Router] = []
            direct: set[int] = set()
            for spec, sub in topology.subscribers(component, stream):
                targets = layout[spec.name]
                if sub.grouping == "direct":
                    direct.update(targets)
                else:
                    groups = {**topology.config, **spec.config}["topology.state.key.groups"]
                    routers.append(make_router(sub.grouping, targets, fields, sub.fields, local_tasks,
                                               loads=transport.loads, key_groups=groups))
            origin = Origin(component, task, stream, fields)
            self._streams[stream] = _Stream(union_router(routers), origin, frozenset(direct))
        self._outputs = list(self._streams.values())

    def _stream_named(self, stream: str) -> _Stream:
        """``stream``, after checking that it is declared."""
        out = self._streams.get(stream)
        if out is None:
            raise ValueError(f"component {self.component!r} emitted on undeclared stream {stream!r}")
        return out

    def _stream(self, stream: str, values: Sequence[Any]) -> _Stream:
        """``stream``, after checking that it is declared and the values' arity."""
        out = self._stream_named(stream)
        if len(values) != out.arity:
            raise ValueError(
                f"component {self.component!r} emitted {len(values)} values on stream "
                f"{stream!r}, which declares {out.arity} fields ({', '.join(out.origin.fields)})"
            )
        return out

    def _direct_target(self, task: int, stream: str, values: Sequence[Any]) -> _Stream:
        """Check that ``task`` subscribes to ``stream`` with a direct grouping; return the stream."""
        out = self._stream(stream, values)
        if task not in out.direct:
            raise ValueError(
                f"component {self.component!r} emitted directly to task {task}, which does "
                f"not subscribe to stream {stream!r} with a direct grouping"
            )
        return out

    async def flush(self) -> None:
        """Send what the batch produced: acker traffic first (it never waits), then tuples
        (which wait while a receiver is full)."""
        self._flush_control()
        send = self._transport.send_tuples
        for out in self._outputs:
            if out.batches:
                batches, out.batches = out.batches, {}
                for task, (values, anchors) in batches.items():
                    try:
                        await send(task, out.origin, values, anchors)
                    except UnencodableValue as exc:
                        self._unsent(exc, [anchors[i] for i in exc.rows])

    def _unsent(self, error: UnencodableValue, anchors: list[Anchors]) -> None:
        """Tuples that could not be encoded for a task in another worker: the error is the
        component's (in its status), and their trees fail, so their spouts replay them."""
        self.stats.record_error(error, "emit")
        roots = [root for anchor in anchors if anchor for root in anchor[0::2]]
        if not roots:
            return
        if self.edges:
            self._send_per_acker(ACK_FAIL, roots)
        elif self.failed_roots is not None:
            self.failed_roots.extend(roots)

    def _flush_control(self) -> None:
        """Send buffered acker messages; subclasses add theirs."""

    def _send_per_acker(self, kind: str, roots: dict[int, Any] | list[Any]) -> None:
        """Send a batch of acker messages to the acker of each root: the acker task at
        ``root % ackers``, as a fields grouping on the root would pick.

        ``roots`` is a dict keyed by root id, or a list of root ids or of tuples that
        start with the root id. Spouts pick roots whose acker runs in their worker, so
        the roots of a batch mostly share one acker: the batch then goes whole, after
        one pass in C over its ids.
        """
        ackers, send = self._ackers, self._transport.send_control
        n = len(ackers)
        if n == 1:
            send(ackers[0], kind, roots)
            return
        ids: Iterable[int] = roots
        if isinstance(roots, list) and roots and isinstance(roots[0], tuple):
            ids = map(_first, roots)
        slots = list(map(n.__rmod__, ids))  # root % n for each root
        if slots.count(slots[0]) == len(slots):
            send(ackers[slots[0]], kind, roots)
            return
        for slot in set(slots):
            part: dict[int, Any] | list[Any]
            if isinstance(roots, dict):
                part = {root: value for (root, value), s in zip(roots.items(), slots, strict=True) if s == slot}
            else:
                part = [item for item, s in zip(roots, slots, strict=True) if s == slot]
            send(ackers[slot], kind, part)


class SpoutOutputCollector(OutputCollector):
    """A spout task's collector: starts a tuple tree per emit with a message id."""

    def __init__(self, *args: Any, pending: PendingTrees, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending = pending
        self.now = 0.0
        """Set by the executor once per round: the emit time of this round's trees."""
        self.acked_at_once: list[Any] = []
        """Message ids complete as soon as emitted (acking off, or no receiving task)."""
        self.failed_ids = RecentFailures()
        """Message ids of failed trees: the executor adds them, an emit of one is a replay."""
        self._inits: list[tuple[int, int, int]] = []
        n = len(self._ackers)
        local = [i for i, acker in enumerate(self._ackers) if acker in self._local_tasks]
        self._local_acker_slots = (n, local) if local and len(local) < n else None
        """When only some ackers run in this worker: (ackers, indexes of the local ones)."""

    def emit(self, values: Sequence[Any], stream: str = DEFAULT_STREAM, msg_id: Any = None) -> None:
        """Emit ``values`` on ``stream``; with a ``msg_id`` the tuple tree is tracked."""
        out = self._stream(stream, values)
        self.stats.emitted += 1
        tracked = msg_id is not None and self.acking
        root = self._new_root() if tracked else 0
        xor = 0
        if not tracked:
            for task in out.route(values):
                out.add(task, values, None)
        elif self.edges:
            for task in out.route(values):
                edge = new_id(64)
                xor ^= edge
                out.add(task, values, (root, edge))
        else:
            anchors = (root, 0)
            for task in out.route(values):
                out.add(task, values, anchors)
                xor = 1
        self._track(root, xor, msg_id)

    def emit_direct(
        self, task: int, values: Sequence[Any], stream: str = DEFAULT_STREAM, msg_id: Any = None
    ) -> None:
        """Emit to one task of a bolt that subscribes to ``stream`` with a direct grouping."""
        out = self._direct_target(task, stream, values)
        self.stats.emitted += 1
        tracked = msg_id is not None and self.acking
        root = self._new_root() if tracked else 0
        edge = new_id(64) if tracked and self.edges else 0
        out.add(task, values, (root, edge) if tracked else None)
        self._track(root, edge or int(tracked), msg_id)

    def _new_root(self) -> int:
        """A random root id whose acker (root % ackers) runs in this worker, when one
        does: the tree's init and completion then never cross the network."""
        root: int = new_id(64)
        if self._local_acker_slots is not None:
            n, local = self._local_acker_slots
            root += local[root % len(local)] - root % n  # as random as before in its high bits
        return root

    def _track(self, root: int, xor: int, msg_id: Any) -> None:
        """Put a new tree in flight: ``xor`` is its edges' XOR for the acker, any non-zero
        value for a tree tracked by checkpoint, 0 when no task received it (done at once)."""
        if msg_id is None:
            return
        if self.failed_ids and self.failed_ids.take(msg_id):
            self.stats.replayed += 1
        if xor:
            self.pending.add(root, msg_id, self.now)
            if self.edges:
                self._inits.append((root, xor, self.task))
        else:
            self.acked_at_once.append(msg_id)

    def _flush_control(self) -> None:
        if self._inits:
            inits, self._inits = self._inits, []
            self._send_per_acker(ACK_INIT, inits)


class BoltOutputCollector(OutputCollector):
    """A bolt task's collector: anchors emits into their inputs' trees, batches acks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current: Tuple | None = None
        """The input a :class:`~streamflow.components.BasicBolt` is processing."""
        self.current_batch: list[Tuple] | None = None
        """The inputs a BasicBolt's own ``process_batch`` is processing: its emits are
        anchored to all of them."""
        self._anchor = _anchor if self.edges else _roots
        """The anchors of a tuple emitted anchored to some tuples."""
        self._acks: dict[int, int] = {}
        self._fails: list[int] = []
        self.acks_flushed: asyncio.Future[None] | None = None
        """Set by a bolt task waiting for its acks to catch up (a checkpoint barrier)."""

    def emit(
        self, values: Sequence[Any], stream: str = DEFAULT_STREAM, anchors: Sequence[Tuple] | None = None
    ) -> None:
        """Emit ``values`` on ``stream``, anchored to each tuple in ``anchors``."""
        out = self._stream(stream, values)
        self.stats.emitted += 1
        for task in out.route(values):
            out.add(task, values, self._anchor(anchors) if anchors else None)

    def emit_many(
        self, rows: Iterable[Sequence[Any]], stream: str = DEFAULT_STREAM, anchors: Sequence[Tuple] | None = None
    ) -> None:
        """:meth:`emit` of each row of values, with the stream looked up once."""
        out = self._stream_named(stream)
        route, add, arity, stats, anchor = out.route, out.add, out.arity, self.stats, self._anchor
        for values in rows:
            if len(values) != arity:
                self._stream(stream, values)  # raises, naming the fields
            stats.emitted += 1
            for task in route(values):
                add(task, values, anchor(anchors) if anchors else None)

    def emit_rows(self, rows: Sequence[Sequence[Any]], anchors: Sequence[Anchors],
                  stream: str = DEFAULT_STREAM) -> None:
        """Emit each row of values anchored to the input row at the same position of
        ``anchors`` (a batch's ``anchors`` column, as ``process_columns`` gets it): a
        count bolt's one output per input, with no Tuple built on either side.

        Under XOR acking each row gets a new edge in its input's trees, and that edge is
        folded into the input's pending ack at once: the input's ``ack_rows`` then acks
        only its own edge, as it does for rows that emitted nothing."""
        out = self._stream_named(stream)
        if len(rows) != len(anchors):
            raise ValueError(f"component {self.component!r} emitted {len(rows)} rows with "
                             f"{len(anchors)} anchors: one input row's anchors per row")
        route, arity, batches = out.route, out.arity, out.batches
        edges, acks = self.edges, self._acks
        msg: Anchors
        for values, msg in zip(rows, anchors, strict=True):
            if len(values) != arity:
                self._stream(stream, values)  # raises, naming the fields
            if edges and msg:
                edge = new_id(64)
                roots = msg[0::2]
                for root in roots:
                    acks[root] = acks.get(root, 0) ^ edge
                msg = tuple(x for root in roots for x in (root, edge))
            for task in route(values):
                batch = batches.get(task) or batches.setdefault(task, ([], []))
                batch[0].append(values)
                batch[1].append(msg)
        self.stats.emitted += len(rows)

    def anchored_emitter(self) -> Callable[..., None]:
        """A BasicBolt's ``emit``: ``emit(values, stream="default")``, anchored to the
        current input.

        The per-word path of most topologies, so it is a function made for this task's
        default stream, with the common cases written out inline: a tuple tracked by
        checkpoint (its input's roots, shared), or in one tree of XOR acking. Other
        streams go to :meth:`_emit_anchored`.
        """
        out = self._streams.get(DEFAULT_STREAM)
        if out is None:
            return self._emit_anchored
        general, stats, route, arity, edges = self._emit_anchored, self.stats, out.route, out.arity, self.edges
        collector = self

        def emit(values: Sequence[Any], stream: str = DEFAULT_STREAM) -> None:
            if stream != DEFAULT_STREAM or len(values) != arity:
                general(values, stream)
                return
            anchor = collector.current
            if anchor is None:
                if collector.current_batch is not None:  # in process_batch: anchored to the batch
                    general(values, stream)
                    return
                roots = None
            else:
                roots = anchor.anchors
            stats.emitted += 1
            batches = out.batches
            msg: Anchors
            for task in route(values):
                if roots is None or not edges:
                    msg = roots
                elif len(roots) == 2:
                    edge = new_id(64)
                    anchor.ack_val ^= edge  # type: ignore[union-attr]
                    msg = (roots[0], edge)
                else:
                    msg = _anchor((anchor,))  # type: ignore[arg-type]  # roots implies anchor
                batch = batches.get(task) or batches.setdefault(task, ([], []))
                batch[0].append(values)
                batch[1].append(msg)

        return emit

    def anchored_many_emitter(self) -> Callable[..., None]:
        """A BasicBolt's ``emit_many``: ``emit_many(rows, stream="default")``, each row
        anchored as its ``emit`` would anchor it. The common cases (the default stream, an
        input tracked by checkpoint or in one tree of XOR acking) are written out inline,
        as in :meth:`anchored_emitter`, with the input's XOR of new edges kept in a local
        until the last row."""
        general = self._emit_anchored
        out = self._streams.get(DEFAULT_STREAM)
        if out is None:
            return self._emit_many_anchored
        stats, route, arity, edges = self.stats, out.route, out.arity, self.edges
        collector = self

        def emit_many(rows: Iterable[Sequence[Any]], stream: str = DEFAULT_STREAM) -> None:
            anchor = collector.current
            roots = anchor.anchors if anchor is not None else None
            if stream != DEFAULT_STREAM or roots is None or (edges and len(roots) != 2):
                collector._emit_many_anchored(rows, stream)
                return
            root, xor, emitted = roots[0], 0, 0
            batches = out.batches
            msg: Anchors
            try:
                for values in rows:
                    if len(values) != arity:
                        general(values, stream)  # raises, naming the fields
                    emitted += 1
                    for task in route(values):
                        if edges:
                            edge = new_id(64)
                            xor ^= edge
                            msg = (root, edge)
                        else:
                            msg = roots
                        batch = batches.get(task) or batches.setdefault(task, ([], []))
                        batch[0].append(values)
                        batch[1].append(msg)
            finally:
                anchor.ack_val ^= xor  # type: ignore[union-attr]  # roots implies anchor
                stats.emitted += emitted

        return emit_many

    def _emit_many_anchored(self, rows: Iterable[Sequence[Any]], stream: str = DEFAULT_STREAM) -> None:
        """:meth:`anchored_many_emitter`'s emit on any stream, or of an input in several
        trees or none."""
        for values in rows:
            self._emit_anchored(values, stream)

    def _emit_anchored(self, values: Sequence[Any], stream: str = DEFAULT_STREAM) -> None:
        """:meth:`anchored_emitter`'s emit on any stream (and its errors)."""
        self.emit(values, stream, self._implicit_anchors())

    def _implicit_anchors(self) -> Sequence[Tuple] | None:
        """What a BasicBolt's emit is anchored to: the current input, or in its own
        ``process_batch`` every tuple of the batch (None in other bolts)."""
        anchor = self.current
        return (anchor,) if anchor is not None else self.current_batch

    def emit_direct(
        self,
        task: int,
        values: Sequence[Any],
        stream: str = DEFAULT_STREAM,
        anchors: Sequence[Tuple] | None = None,
    ) -> None:
        """Emit to one task of a bolt that subscribes to ``stream`` with a direct grouping.

        A BasicBolt's direct emits are anchored as its other emits by default.
        """
        out = self._direct_target(task, stream, values)
        self.stats.emitted += 1
        if anchors is None:
            anchors = self._implicit_anchors()
        out.add(task, values, self._anchor(anchors) if anchors else None)

    def ack(self, tup: Tuple) -> None:
        """``tup`` is processed: its edge is done and the edges anchored to it are new."""
        self.ack_all((tup,))

    def ack_all(self, tuples: Sequence[Tuple]) -> None:
        """:meth:`ack` of each tuple, in one call (cheaper than a call of ``ack`` per
        tuple). The acks of one root (the words of a sentence) reach its acker as one.
        Tuples tracked by checkpoint are only counted: their trees complete at commit."""
        if self.edges:
            _fold(tuples, self._acks)
        self.stats.acked += len(tuples)

    def ack_rows(self, anchors: Sequence[Anchors]) -> None:
        """:meth:`ack_all` of the rows of a batch, given by their anchors (the batch's
        ``anchors`` column): none is an anchor of an emit (there is no Tuple to keep
        that), so each acks just its own edge."""
        if self.edges:
            _fold_edges(anchors, self._acks)
        self.stats.acked += len(anchors)

    def fail(self, tup: Tuple) -> None:
        """``tup`` failed: its spout tuples are failed (and replayed by their spouts)."""
        self.fail_rows((tup.anchors,))

    def fail_rows(self, anchors: Sequence[Anchors]) -> None:
        """:meth:`fail` of the rows of a batch, given by their anchors."""
        for row in anchors:
            if row:
                roots = row[0::2]
                if self.edges:
                    self._fails.extend(roots)
                if self.failed_roots is not None:
                    self.failed_roots.extend(roots)
        self.stats.failed += len(anchors)

    def flush_acks(self) -> None:
        """Send the buffered acks and fails now, outside a batch (see ``BoltBase.flush_acks``)."""
        self._flush_control()
        waiter = self.acks_flushed
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _flush_control(self) -> None:
        if self._acks:
            acks, self._acks = self._acks, {}
            self._send_per_acker(ACK_ACK, acks)
        if self._fails:
            fails, self._fails = self._fails, []
            self._send_per_acker(ACK_FAIL, fails)


def _fold(tuples: Sequence[Tuple], acks: dict[int, int]) -> None:
    """Add the acks of ``tuples`` to ``acks`` (root -> XOR of its acks): each tuple's edge
    XOR the edges anchored to it (``ack_val``), in every tree it belongs to."""
    get = acks.get
    for tup in tuples:
        anchors = tup.anchors
        if anchors:
            v = tup.ack_val
            root = anchors[0]
            acks[root] = get(root, 0) ^ anchors[1] ^ v
            if len(anchors) > 2:  # several roots: rare, and a loop costs every ack
                for i in range(2, len(anchors), 2):
                    root = anchors[i]
                    acks[root] = get(root, 0) ^ anchors[i + 1] ^ v


def _fold_edges(anchored: Iterable[Anchors], acks: dict[int, int]) -> None:
    """:func:`_fold` of tuples that nothing is anchored to, given by their anchors: each
    acks only its own edge."""
    get = acks.get
    for anchors in anchored:
        if anchors:
            for i in range(0, len(anchors), 2):
                root = anchors[i]
                acks[root] = get(root, 0) ^ anchors[i + 1]


def _anchor(anchors: Sequence[Tuple]) -> Anchors:
    """Anchors of a new tuple: one new edge per anchor tuple, in every tree that anchor
    belongs to (Storm's scheme), as flat ``(root, edge, root, edge, ...)`` pairs."""
    edges: dict[int, int] = {}
    for a in anchors:
        if a.anchors:
            edge = new_id(64)
            a.ack_val ^= edge
            for root in a.anchors[0::2]:
                edges[root] = edges.get(root, 0) ^ edge
    return tuple(x for pair in edges.items() for x in pair) or None


def _roots(anchors: Sequence[Tuple]) -> Anchors:
    """Anchors of a new tuple tracked by checkpoint: the roots of its anchors' trees, each
    with edge 0. The anchors of a single anchor are shared, not copied."""
    if len(anchors) == 1:
        return anchors[0].anchors
    roots = dict.fromkeys(root for a in anchors if a.anchors for root in a.anchors[0::2])
    return tuple(x for root in roots for x in (root, 0)) or None
