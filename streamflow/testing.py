"""In-memory spouts and bolts for testing topologies in local mode.

Every task works on its own copy of a component, so a test cannot read what a task saw
from the component it passed to the builder. A :class:`Ledger` survives that copy: all
tasks of a local run record into the same ledger, which the test then inspects.

    ledger = Ledger()
    builder.set_spout("numbers", ListSpout([(i,) for i in range(100)], ["n"], ledger))
    builder.set_bolt("collect", CollectBolt(ledger)).shuffle_grouping("numbers")
    run_local(builder.build())
    assert sorted(ledger.acked) == list(range(100))
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Mapping, Sequence

from streamflow.components import Bolt, Spout, TaskContext
from streamflow.tuples import Tuple


class Ledger:
    """What the test components of one run did, shared by all their tasks."""

    def __init__(self) -> None:
        self.emitted: Counter[Any] = Counter()
        """Message id -> times a spout emitted it (replays included)."""
        self.acked: Counter[Any] = Counter()
        """Message id -> times the spout's ``ack`` was called for it."""
        self.failed: Counter[Any] = Counter()
        """Message id -> times the spout's ``fail`` was called for it."""
        self.max_in_flight: dict[int, int] = {}
        """Spout task -> the most trees it had in flight at once."""
        self.received: list[tuple[int, Tuple]] = []
        """(bolt task, tuple) for every tuple a :class:`CollectBolt` received."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Ledger:
        return self  # shared, not copied, by every task of the run

    def values_by_task(self) -> dict[int, list[Sequence[Any]]]:
        """The values each collecting task received."""
        by_task: dict[int, list[Sequence[Any]]] = {}
        for task, tup in self.received:
            by_task.setdefault(task, []).append(tup.values)
        return by_task


class ListSpout(Spout):
    """Emits fixed rows, each once, with its index as message id, and replays failed rows
    (up to ``max_retries`` times; ``None`` for no limit).

    The rows are split among the spout's tasks: task ``i`` of ``n`` emits rows
    ``i, i+n, ...``. ``stream`` picks the output stream. Finite: exhausted once every row
    is acked or has failed past its retries. In a topology with checkpointed state it
    keeps a position, as a log would, and a rollback replays its rows in order.
    """

    def __init__(
        self,
        rows: Sequence[Sequence[Any]],
        fields: Sequence[str] = ("value",),
        ledger: Ledger | None = None,
        max_retries: int | None = None,
        stream: str = "default",
    ) -> None:
        self.rows = list(rows)
        self.outputs = {stream: list(fields)}
        self.stream = stream
        self.ledger = ledger or Ledger()
        self.max_retries = max_retries

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._task = context.task_id
        self._first, self._step = context.task_index, context.parallelism
        self._share = f"{context.task_index}/{context.parallelism}"
        self._todo = deque(range(self._first, len(self.rows), self._step))
        self._retries: Counter[int] = Counter()
        self._in_flight = 0

    def next_tuple(self) -> None:
        if not self._todo:
            return
        index = self._todo.popleft()
        self.ledger.emitted[index] += 1
        self._in_flight += 1
        if self._in_flight > self.ledger.max_in_flight.get(self._task, 0):
            self.ledger.max_in_flight[self._task] = self._in_flight
        self.emit(self.rows[index], stream=self.stream, msg_id=index)

    def ack(self, msg_id: int) -> None:
        self._in_flight -= 1
        self.ledger.acked[msg_id] += 1

    def fail(self, msg_id: int) -> None:
        self._in_flight -= 1
        self.ledger.failed[msg_id] += 1
        self._retries[msg_id] += 1
        if self.max_retries is None or self._retries[msg_id] <= self.max_retries:
            self._todo.append(msg_id)

    def exhausted(self) -> bool:
        return not self._todo

    def position(self) -> dict[str, int]:
        """For checkpointed state: the first row of this task's share not done with."""
        return {self._share: min(self._todo, default=len(self.rows))}

    def seek(self, positions: Mapping[str, Any]) -> None:
        """Emit this task's rows again from the checkpointed one, in order, but those
        that failed past their retries."""
        start = int(positions.get(self._share, self._first))
        retries = self.max_retries
        self._todo = deque(i for i in range(start, len(self.rows), self._step)
                           if retries is None or self._retries[i] <= retries)
        self._in_flight = 0


class CollectBolt(Bolt):
    """Records every tuple it receives in the ledger, and acks it."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._task = context.task_id

    def process(self, tup: Tuple) -> None:
        self.ledger.received.append((self._task, tup))
        self.ack(tup)
