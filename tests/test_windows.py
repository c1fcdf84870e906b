"""Windows in local mode (memory state): WindowedBolt's tumbling and sliding windows, by
event time, processing time and count, per key and per task, against truths this file
computes on its own from the input rows.

Rows are ``(user, ts, id)``: ``ts`` in epoch milliseconds, ``id`` the row's index, so a
window's content is checked as the exact set of ids it holds. Each bolt here emits, per
window, its key, start, end, the ids of its tuples, new and expired tuples, and the
aggregate's result (:class:`Report`). Every run ends on its own: finite spouts end the
input (END markers), which fires the last windows.

Faults (an upstream bolt that fails rows, an ``execute`` that raises) roll the windows
back to the last checkpoint; a window may then fire again, so checks take the last output
per window, as a consumer of a windowed bolt does.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import pytest
from worker_runs import run, stats

from streamflow import BasicBolt, TaskContext, Topology, TopologyBuilder, Tuple
from streamflow.components import Outputs
from streamflow.testing import CollectBolt, Ledger, ListSpout
from streamflow.windows import Aggregate, Count, Duration, Window, WindowedBolt
from streamflow.worker import Worker

FIELDS = ("user", "ts", "id")
FAST = {"topology.state.checkpoint.interval.ms": 50, "topology.max.spout.pending": 5000}
"""A checkpoint every 50 ms, and room for the whole input in flight (trees complete at
commits): a run of a few thousand rows takes a fraction of a second."""
OUT = ["key", "start", "end", "ids", "new", "expired", "result"]


# ----------------------------------------------------------------------------- components


def ids(tuples: Iterable[Tuple]) -> list[int]:
    return [t["id"] for t in tuples]


class Report(WindowedBolt):
    """Emits each window it gets: key, start, end, ids of its tuples, of the new and of
    the expired ones (in the order the window gives them), and the aggregate's result."""

    outputs: Outputs = {"default": OUT, "late": list(FIELDS)}

    def execute(self, window: Window) -> None:
        self.emit((window.key, window.start, window.end, ids(window.tuples), ids(window.new),
                   ids(window.expired), window.result))


class PerTask(Report):
    """:class:`Report` for windows per task: the task's id in place of the key, and the
    window's key (None) in place of the result."""

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        super().prepare(config, context)
        self.task = context.task_id

    def execute(self, window: Window) -> None:
        self.emit((self.task, window.start, window.end, ids(window.tuples), [], [], window.key))


class NoLate(Report):
    """:class:`Report` without a late stream."""

    outputs = OUT


class CountAndSum(Aggregate):
    """How many tuples and the sum of their ids: one accumulator per pane, as a list
    (state gives tuples back as lists)."""

    def init(self) -> Any:
        return [0, 0]

    def add(self, accumulator: Any, tup: Tuple) -> Any:
        return [accumulator[0] + 1, accumulator[1] + tup["id"]]

    def merge(self, a: Any, b: Any) -> Any:
        return [a[0] + b[0], a[1] + b[1]]

    def result(self, accumulator: Any) -> Any:
        return tuple(accumulator)


class Faults:
    """Rows to fail, and how many times each; counts what was raised. Shared by every
    task's copy of a component (a deep copy returns it)."""

    def __init__(self, rows: Iterable[int], times: int = 1) -> None:
        self.left = Counter({row: times for row in rows})
        self.raised = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Faults:
        return self

    def hit(self, row: int) -> bool:
        if self.left[row] > 0:
            self.left[row] -= 1
            self.raised += 1
            return True
        return False


class Flaky(BasicBolt):
    """Passes rows on unchanged; raises (fails the row) for the rows ``faults`` names."""

    outputs = list(FIELDS)

    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    def process(self, tup: Tuple) -> None:
        if self.faults.hit(tup["id"]):
            raise RuntimeError(f"injected fault on row {tup['id']}")
        self.emit(tuple(tup.values))


class RaisesOnce(Report):
    """:class:`Report` whose ``execute`` raises the first time ``which`` holds."""

    def __init__(self, *args: Any, which: Callable[[Window], bool], faults: Faults, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.which, self.faults = which, faults

    def execute(self, window: Window) -> None:
        if self.which(window) and self.faults.hit(0):
            raise RuntimeError(f"injected fault in execute of window {window.key}@{window.start}")
        super().execute(window)


# ----------------------------------------------------------------------------- running


def topology(bolt: WindowedBolt, rows: Sequence[Sequence[Any]], *, spouts: int = 1, tasks: int = 3,
             upstream: BasicBolt | None = None, upstream_tasks: int = 2, grouping: str = "fields",
             late: bool = True, spout: ListSpout | None = None,
             config: Mapping[str, Any] = FAST) -> tuple[Topology, Ledger]:
    """rows (``spouts`` tasks) [-> upstream (``upstream_tasks``, shuffle)] -> win
    (``tasks``, fields grouping on user, or shuffle) -> sink (1 task, default and late
    streams). The ledger is the spout's and the sink's."""
    ledger = Ledger() if spout is None else spout.ledger
    builder = TopologyBuilder("windows")
    builder.set_spout("rows", spout or ListSpout(rows, FIELDS, ledger), spouts)
    source = "rows"
    if upstream is not None:
        builder.set_bolt("upstream", upstream, upstream_tasks).shuffle_grouping("rows")
        source = "upstream"
    win = builder.set_bolt("win", bolt, tasks)
    if grouping == "fields":
        win.fields_grouping(source, ["user"])
    else:
        win.shuffle_grouping(source)
    sink = builder.set_bolt("sink", CollectBolt(ledger), 1).shuffle_grouping("win")
    if late:
        sink.shuffle_grouping("win", "late")
    return builder.build(config), ledger




def metric(worker: Worker, name: str, component: str = "win") -> float:
    """A metric of ``component``'s tasks (``window.late``, ``state.rollbacks``...), summed."""
    return sum(e.metrics()[name] for e in worker.executors if e.component == component)


def pane_keys(worker: Worker) -> list[Any]:
    """The window panes the windowed bolt's tasks still hold in their state."""
    found = []
    for executor in worker.executors:
        if executor.component == "win":
            state = executor.checkpoints.state  # type: ignore[attr-defined]
            found += [key for key in state if key[0] == "p"]
    return found


def fired(ledger: Ledger) -> list[tuple[Any, ...]]:
    """The windows the sink received, in order: (key, start, end, ids, new, expired, result)."""
    return [tuple(tup.values) for _, tup in ledger.received if tup.stream == "default"]


def late_rows(ledger: Ledger) -> list[tuple[Any, ...]]:
    return [tuple(tup.values) for _, tup in ledger.received if tup.stream == "late"]


def last_per_window(windows: Iterable[tuple[Any, ...]], by: int = 1) -> dict[tuple[Any, Any], tuple[Any, ...]]:
    """(key, start) -> the last firing of that window (``by=2``: keyed by end)."""
    return {(w[0], w[by]): w for w in windows}


def members(windows: Mapping[Any, tuple[Any, ...]]) -> dict[Any, list[int]]:
    """Each window's ids, sorted."""
    return {k: sorted(w[3]) for k, w in windows.items()}


def contents(windows: Mapping[Any, tuple[Any, ...]]) -> dict[Any, tuple[list[int], list[int], list[int]]]:
    """Each window's ids, new and expired, sorted (the order of time windows' tuples
    within a pane is their arrival order)."""
    return {k: (sorted(w[3]), sorted(w[4]), sorted(w[5])) for k, w in windows.items()}


def assert_once(windows: list[tuple[Any, ...]], by: int = 1) -> None:
    """No window fired twice (runs without faults)."""
    seen = Counter((w[0], w[by]) for w in windows)
    assert [k for k, n in seen.items() if n > 1] == []


# ----------------------------------------------------------------------------- truths


def out_of_order_rows(n: int, users: int, lag_ms: int, seed: int, step: int = 10) -> list[tuple[str, int, int]]:
    """``n`` rows, a row every ``step`` ms, each up to ``lag_ms`` older than its place
    (so out of order, within the lag), some before epoch 0."""
    rng = random.Random(seed)
    rows = [(f"u{rng.randrange(users)}", i * step - rng.randrange(lag_ms), i) for i in range(n)]
    highest = -(2**62)
    for _, ts, _ in rows:  # the input is what the test says it is
        assert ts >= highest - lag_ms
        highest = max(highest, ts)
    return rows


def windows_of(ts: int, length: int, slide: int) -> list[int]:
    """The starts of the windows (at multiples of ``slide``, ``length`` long) holding ``ts``."""
    start = (ts // slide) * slide
    starts = []
    while start > ts - length:
        starts.append(start)
        start -= slide
    return sorted(starts)


def time_truth(rows: Iterable[Sequence[Any]], length: int, slide: int) -> dict[tuple[str, int], list[int]]:
    """(user, start) -> sorted ids of the rows in that window."""
    truth: dict[tuple[str, int], list[int]] = defaultdict(list)
    for user, ts, row in rows:
        for start in windows_of(ts, length, slide):
            truth[(user, start)].append(row)
    return {k: sorted(v) for k, v in truth.items()}


def with_differences(truth: Mapping[tuple[str, int], list[int]], slide: int
                     ) -> dict[tuple[str, int], tuple[list[int], list[int], list[int]]]:
    """Each window's ids, new ids (not in the window one slide earlier) and expired ids
    (in the window one slide earlier, not in this one)."""
    out = {}
    for (user, start), now in truth.items():
        before = set(truth.get((user, start - slide), []))
        out[(user, start)] = (now, sorted(set(now) - before), sorted(before - set(now)))
    return out


def aggregated(truth: Mapping[Any, list[int]]) -> dict[Any, tuple[int, int]]:
    return {k: (len(v), sum(v)) for k, v in truth.items()}


def results(windows: Mapping[Any, tuple[Any, ...]]) -> dict[Any, tuple[Any, ...]]:
    return {k: tuple(w[6]) for k, w in windows.items()}


# ----------------------------------------------------------------------------- 1. event time


class Progress:
    """The highest row spout task 0 emitted, shared by both tasks' copies."""

    def __init__(self) -> None:
        self.row = -1

    def __deepcopy__(self, memo: dict[int, Any]) -> Progress:
        return self


class OneBehind(ListSpout):
    """Two tasks over the rows, task 1 kept ``behind`` rows behind task 0 (a partition
    that lags), until task 0 is done."""

    def __init__(self, rows: Sequence[Sequence[Any]], behind: int) -> None:
        super().__init__(rows, FIELDS, Ledger())
        self.behind, self.progress = behind, Progress()

    def next_tuple(self) -> None:
        if self._first == 0:
            self.progress.row = self._todo[0] if self._todo else len(self.rows) + self.behind  # done
        elif self._todo and self._todo[0] + self.behind > self.progress.row:
            return
        super().next_tuple()


@pytest.mark.parametrize("spouts", [1, 2], ids=["1-spout-task", "2-spout-tasks-one-behind"])
@pytest.mark.parametrize("aggregate", [False, True], ids=["tuples", "aggregate"])
def test_event_time_tumbling_windows_per_key_are_exact_with_input_out_of_order_within_the_lag(
        aggregate: bool, spouts: int) -> None:
    # With 2 spout tasks, task 1 runs 5 s of event time behind task 0, more than the
    # 3 s lag: a window task's watermark is the least of its input tasks' highest
    # timestamps (less the lag), so task 1's rows are not late either.
    rows = out_of_order_rows(3000, users=7, lag_ms=2900, seed=5)
    truth = time_truth(rows, 1000, 1000)
    bolt = Report(Duration(1), key_field="user", timestamp_field="ts", lag=3, late_stream="late",
                  aggregate=CountAndSum() if aggregate else None)
    spout = OneBehind(rows, behind=500) if spouts == 2 else None
    top, ledger = topology(bolt, rows, spouts=spouts, spout=spout)
    worker = run(top)
    windows = fired(ledger)
    assert_once(windows)
    got = last_per_window(windows)
    if aggregate:
        assert results(got) == aggregated(truth)
        assert all(w[3] == w[4] == w[5] == [] for w in windows)  # no tuples kept, none given
    else:
        assert members(got) == truth
        assert all(w[2] - w[1] == 1000 and w[1] % 1000 == 0 for w in windows)
    assert late_rows(ledger) == [] and metric(worker, "window.late") == 0
    assert metric(worker, "window.fired") == len(truth)
    assert set(ledger.acked) == set(range(len(rows))) and not ledger.failed
    assert stats(worker, "win").errors == 0


# ----------------------------------------------------------------------------- 2. late tuples


def rows_with_late_ones() -> tuple[list[tuple[str, int, int]], set[int]]:
    """Rows in order but within a 2 s lag, with rows far behind inserted (late), and a
    pair at the edge: when the highest timestamp so far is exactly 20000 (the watermark
    18000 with the lag), a row at 17999 is late (the watermark reached the end of its
    window [17000, 18000)) and one at 18000 is not. Returns the rows and the ids of the
    late ones."""
    rng = random.Random(11)
    rows: list[tuple[str, int, int]] = []
    late: set[int] = set()

    def add(user: str, ts: int, is_late: bool = False) -> None:
        if is_late:
            late.add(len(rows))
        rows.append((user, ts, len(rows)))

    for i in range(2001):
        ts = i * 10
        add(f"u{rng.randrange(5)}", ts if i % 100 == 0 else ts - rng.randrange(1900))
        if i in (700, 1300):
            add("u1", 50, True)  # window [0, 1000): fired long ago
            add("u9", ts - 2000 - 1000, True)  # a new key, its window's end just reached
    assert rows[-1][1] == 20000  # the highest timestamp so far
    add("u2", 17999, True)
    add("u2", 18000)
    add("u3", 17000 - 1, True)
    return rows, late


def test_tuples_behind_the_lag_go_to_the_late_stream_with_their_values_as_they_came() -> None:
    rows, late = rows_with_late_ones()
    bolt = Report(Duration(1), key_field="user", timestamp_field="ts", lag=2, late_stream="late")
    top, ledger = topology(bolt, rows, tasks=1)  # one task: its watermark follows every row
    worker = run(top)
    assert sorted(late_rows(ledger)) == sorted(rows[i] for i in late)
    got = last_per_window(fired(ledger))
    assert members(got) == time_truth([r for r in rows if r[2] not in late], 1000, 1000)
    assert_once(fired(ledger))
    assert metric(worker, "window.late") == len(late)
    assert set(ledger.acked) == set(range(len(rows))) and not ledger.failed


def test_without_a_late_stream_late_tuples_are_counted_and_dropped_and_windows_stay_exact() -> None:
    rows, late = rows_with_late_ones()
    bolt = NoLate(Duration(1), key_field="user", timestamp_field="ts", lag=2)
    top, ledger = topology(bolt, rows, tasks=1, late=False)
    worker = run(top)
    got = last_per_window(fired(ledger))
    assert members(got) == time_truth([r for r in rows if r[2] not in late], 1000, 1000)
    assert metric(worker, "window.late") == len(late)
    assert stats(worker, "win").errors == 0
    assert set(ledger.acked) == set(range(len(rows))) and not ledger.failed  # dropped, not failed


# ----------------------------------------------------------------------------- 3. sliding


def small_rows_with_a_gap() -> list[tuple[str, int, int]]:
    """A few hundred rows of 3 users over 20 s, out of order within 0.5 s; u2 sends
    nothing from 6 s to 13 s, longer than a window: windows around the gap have no
    tuples (they do not fire) or only new or expired ones."""
    rng = random.Random(3)
    rows = []
    for i in range(400):
        ts = i * 50 - rng.randrange(450)
        user = f"u{rng.randrange(3)}"
        if user == "u2" and 6000 <= ts < 13000:
            user = "u1"
        rows.append((user, ts, i))
    return rows


@pytest.mark.parametrize("aggregate", [False, True], ids=["tuples", "aggregate"])
def test_sliding_time_windows_hold_their_tuples_and_new_and_expired_are_the_change_from_the_window_before(
        aggregate: bool) -> None:
    rows = small_rows_with_a_gap()
    truth = time_truth(rows, 4000, 1000)
    bolt = Report(Duration(4), Duration(1), key_field="user", timestamp_field="ts", lag=0.5, late_stream="late",
                  aggregate=CountAndSum() if aggregate else None)
    top, ledger = topology(bolt, rows, tasks=2)
    worker = run(top)
    windows = fired(ledger)
    assert_once(windows)
    got = last_per_window(windows)
    assert all(w[2] - w[1] == 4000 and w[1] % 1000 == 0 for w in windows)
    if aggregate:
        assert results(got) == aggregated(truth)
    else:
        assert contents(got) == with_differences(truth, 1000)
        # Around u2's gap: a window with only expired tuples has none of its own and does
        # not fire; the first after the gap has only new ones.
        assert ("u2", 6000) not in got and got[("u2", 10000)][5] == []
    assert late_rows(ledger) == [] and metric(worker, "window.fired") == len(truth)


# ----------------------------------------------------------------------------- 4. count


def count_truth(rows: Sequence[Sequence[Any]], length: int, slide: int
                ) -> dict[tuple[str, int], tuple[int, list[int], list[int], list[int]]]:
    """(user, end) -> (start, ids, new, expired) of each count window of the user's rows
    in input order: one every ``slide`` rows, of the last ``length``."""
    per_user: dict[str, list[int]] = defaultdict(list)
    for user, _, row in rows:
        per_user[user].append(row)
    out = {}
    for user, seq in per_user.items():
        previous: list[int] = []
        for end in range(slide, len(seq) + 1, slide):
            start = end - length  # below 0 for the first windows, so that each start is its own
            now = seq[max(start, 0):end]
            out[(user, end)] = (start, now, [r for r in now if r not in previous],
                                [r for r in previous if r not in now])
            previous = now
    return out


@pytest.mark.parametrize(("length", "slide"), [(5, None), (10, 5), (10, 3)],
                         ids=["tumbling-5", "sliding-10-by-5", "sliding-10-by-3"])
@pytest.mark.parametrize("aggregate", [False, True], ids=["tuples", "aggregate"])
def test_count_windows_fire_every_slide_tuples_of_a_key_with_its_last_length_tuples(
        length: int, slide: int | None, aggregate: bool) -> None:
    # One spout task and no bolt between: each user's rows reach its window task in
    # input order, which is the order count windows go by.
    rng = random.Random(9)
    rows = [(f"u{rng.randrange(4)}", 0, i) for i in range(403)]
    truth = count_truth(rows, length, slide or length)
    bolt = Report(Count(length), Count(slide) if slide else None, key_field="user",
                  aggregate=CountAndSum() if aggregate else None)
    top, ledger = topology(bolt, rows, tasks=2, late=False)
    worker = run(top)
    windows = fired(ledger)
    assert_once(windows, by=2)
    got = last_per_window(windows, by=2)
    if aggregate:
        assert {k: (w[1], tuple(w[6])) for k, w in got.items()} == {
            k: (start, (len(now), sum(now))) for k, (start, now, _, _) in truth.items()}
    else:  # in order, oldest first
        assert {k: (w[1], w[3], w[4], w[5]) for k, w in got.items()} == truth
    # The rows after a user's last full slide fire nothing, even at the end of the input.
    assert metric(worker, "window.fired") == len(truth)
    assert set(ledger.acked) == set(range(len(rows)))


def test_each_count_window_of_a_key_has_a_start_of_its_own() -> None:
    rows = [("u", 0, i) for i in range(20)]
    top, ledger = topology(Report(Count(10), Count(5), key_field="user"), rows, tasks=1, late=False)
    run(top)
    windows = fired(ledger)
    assert [w[2] for w in windows] == [5, 10, 15, 20]
    assert len({(w[0], w[1]) for w in windows}) == len(windows)


# ----------------------------------------------------------------------------- 5. processing time


def test_processing_time_tumbling_windows_take_every_tuple_once_and_the_last_fires_at_the_end() -> None:
    # At most 200 rows in flight per spout task and a commit every 50 ms: 2000 rows take
    # at least ten commits, over many 50 ms windows of each task.
    rows = [(f"u{i % 5}", 0, i) for i in range(2000)]
    top, ledger = topology(PerTask(Duration(0.05)), rows, grouping="shuffle", tasks=2, late=False,
                           config={**FAST, "topology.max.spout.pending": 200})
    worker = run(top)
    windows = fired(ledger)
    assert_once(windows)  # per task: no two windows of a task share a start
    assert all(w[2] - w[1] == 50 and w[1] % 50 == 0 for w in windows)  # aligned: none overlap
    assert Counter(row for w in windows for row in w[3]) == Counter(range(len(rows)))
    assert len(windows) >= 4 and len({w[0] for w in windows}) == 2
    assert all(w[6] is None for w in windows)  # the window's key: None, per task
    assert pane_keys(worker) == [] and metric(worker, "window.late") == 0


# ----------------------------------------------------------------------------- 6. idle inputs


class HeldOpen(ListSpout):
    """A spout task that emits its rows (maybe none), then goes quiet: it is exhausted
    only once the sink has received the windows in ``awaited``, which only the other
    input's watermark can fire: the run would never end if this quiet input held the
    watermark back."""

    def __init__(self, rows: Sequence[Sequence[Any]], sink: Ledger, awaited: set[tuple[str, int]]) -> None:
        super().__init__(rows, FIELDS, Ledger())
        self.sink, self.awaited = sink, awaited

    def exhausted(self) -> bool:
        received = {(tup.values[0], tup.values[1]) for _, tup in self.sink.received}
        return super().exhausted() and self.awaited <= received


@pytest.mark.parametrize("quiet_rows", [0, 5], ids=["emits-nothing", "stops-early"])
def test_an_idle_input_task_stops_holding_windows_back_after_idle_timeout(quiet_rows: int) -> None:
    rows = out_of_order_rows(1000, users=4, lag_ms=400, seed=2)
    early = [("u0", 10 * i, 10_000 + i) for i in range(quiet_rows)]  # ids apart from rows'
    truth = time_truth(rows + early, 1000, 1000)
    # A window task's watermark is its own highest timestamp, at least that of any user
    # it holds, less the lag: these windows fire once the quiet input no longer counts.
    highest: dict[str, int] = {}
    for user, ts, _ in rows:
        highest[user] = max(highest.get(user, ts), ts)
    awaited = {k for k in truth if k[1] + 1000 <= min(highest.values()) - 500}
    assert len(awaited) > 20
    ledger = Ledger()
    builder = TopologyBuilder("windows")
    builder.set_spout("rows", ListSpout(rows, FIELDS, ledger), 1)
    builder.set_spout("quiet", HeldOpen(early, ledger, awaited), 1)
    bolt = Report(Duration(1), key_field="user", timestamp_field="ts", lag=0.5, idle_timeout=0.2)
    builder.set_bolt("win", bolt, 2).fields_grouping("rows", ["user"]).fields_grouping("quiet", ["user"])
    builder.set_bolt("sink", CollectBolt(ledger), 1).shuffle_grouping("win")
    try:
        worker = run(builder.build(FAST), timeout=10)
    except TimeoutError:
        pytest.fail("the quiet input held the windows back past its idle_timeout")
    got = last_per_window(fired(ledger))
    assert members(got) == truth
    assert_once(fired(ledger))
    assert metric(worker, "window.late") == 0


# ----------------------------------------------------------------------------- 7. no timestamp


def event_time(tup: Tuple) -> Any:
    """Event time in a nested field, as JSON events have it."""
    return tup["ts"]["at"]


BAD_STAMPS: dict[str, tuple[Any, Callable[[int], Any], list[Any]]] = {
    # kind: (bolt's timestamp setting, a good row's ts of ms, bad rows' ts)
    "field": ({"timestamp_field": "ts"}, lambda ms: ms, [None, "1500", float("inf"), True]),
    "function": ({"timestamp": event_time}, lambda ms: {"at": ms}, [{}, {"at": None}, {"at": "1500"}]),
}


def rows_with_bad_stamps(kind: str) -> tuple[list[tuple[Any, ...]], dict[int, int], set[int]]:
    """400 rows in order, and rows without a usable timestamp among them. Returns the
    rows, each good row's event time and the ids of the bad rows."""
    _, good, bad = BAD_STAMPS[kind]
    rows: list[tuple[Any, ...]] = []
    stamps: dict[int, int] = {}
    bad_ids: set[int] = set()
    for i in range(400):
        if i % 97 == 50 and len(bad_ids) < len(bad):
            bad_ids.add(len(rows))
            rows.append((f"u{i % 3}", bad[len(bad_ids) - 1], len(rows)))
        stamps[len(rows)] = i * 25
        rows.append((f"u{i % 3}", good(i * 25), len(rows)))
    return rows, stamps, bad_ids


@pytest.mark.parametrize("kind", sorted(BAD_STAMPS))
def test_a_tuple_without_a_usable_timestamp_goes_to_the_late_stream(kind: str) -> None:
    rows, stamps, bad = rows_with_bad_stamps(kind)
    bolt = Report(Duration(1), key_field="user", lag=0.2, late_stream="late", **BAD_STAMPS[kind][0])
    top, ledger = topology(bolt, rows, tasks=2)
    worker = run(top)
    assert sorted(late_rows(ledger), key=lambda r: r[2]) == [rows[i] for i in sorted(bad)]
    got = last_per_window(fired(ledger))
    assert members(got) == time_truth(
        [(user, stamps[row], row) for user, _, row in rows if row not in bad], 1000, 1000)
    assert metric(worker, "window.late") == len(bad) and stats(worker, "win").errors == 0
    assert set(ledger.acked) == set(range(len(rows))) and not ledger.failed


@pytest.mark.parametrize("kind", sorted(BAD_STAMPS))
def test_without_a_late_stream_a_tuple_without_a_usable_timestamp_fails_in_one_line_until_dropped(
        kind: str) -> None:
    rows, stamps, bad = rows_with_bad_stamps(kind)
    ledger = Ledger()
    spout = ListSpout(rows, FIELDS, ledger, max_retries=1)  # a bad row is tried twice, then dropped
    bolt = NoLate(Duration(1), key_field="user", lag=0.2, **BAD_STAMPS[kind][0])
    top, _ = topology(bolt, rows, late=False, tasks=2, spout=spout)
    worker = run(top)
    assert ledger.failed == Counter({i: 2 for i in bad})
    assert set(ledger.acked) == set(range(len(rows))) - bad
    win = stats(worker, "win")
    # Each bad row failed twice at the spout; a rollback (the failures start them) may also
    # replay a bad row in flight once more without failing its tree, so at least twice.
    assert win.errors >= 2 * len(bad) and win.last_error is not None
    message = win.last_error.message
    assert "\n" not in message, message
    assert re.fullmatch(r"process: ValueError: component NoLate: (timestamp .* is not a number of epoch "
                        r"milliseconds|no timestamp \(KeyError: 'at'\)), and no late stream to send it to "
                        r"at \S+windows\.py:\d+", message), message
    got = last_per_window(fired(ledger))
    assert members(got) == time_truth(
        [(user, stamps[row], row) for user, _, row in rows if row not in bad], 1000, 1000)
    assert metric(worker, "state.rollbacks") > 0


# ----------------------------------------------------------------------------- 8. failures


@pytest.mark.parametrize("kind", ["tumbling", "sliding", "aggregate"])
def test_windows_stay_exact_through_rollbacks_from_a_flaky_bolt_upstream(kind: str) -> None:
    rows = out_of_order_rows(3000, users=6, lag_ms=1000, seed=8)
    faults = Faults(range(150, 3000, 400), times=2)  # 8 rows, each failing twice
    length, slide = (4000, 1000) if kind == "sliding" else (1000, 1000)
    bolt = Report(Duration(length / 1000), Duration(slide / 1000), key_field="user", timestamp_field="ts",
                  lag=1, late_stream="late", aggregate=CountAndSum() if kind == "aggregate" else None)
    top, ledger = topology(bolt, rows, upstream=Flaky(faults))
    worker = run(top)
    assert faults.raised == 16 and stats(worker, "upstream").errors == 16
    assert metric(worker, "state.rollbacks") > 0 and stats(worker, "rows").failed > 0  # work in flight
    assert sum(ledger.emitted.values()) > len(rows)  # and rows were replayed
    truth = time_truth(rows, length, slide)
    got = last_per_window(fired(ledger))
    if kind == "aggregate":
        assert results(got) == aggregated(truth)
    else:
        assert contents(got) == with_differences(truth, slide)
    assert late_rows(ledger) == []
    assert set(ledger.acked) == set(range(len(rows)))


def test_count_windows_stay_exact_through_rollbacks_from_a_flaky_bolt_upstream() -> None:
    # One spout task and one upstream task: each user's rows reach the window in input
    # order, replays included (a rollback replays from the checkpoint's row, in order).
    rng = random.Random(6)
    rows = [(f"u{rng.randrange(4)}", 0, i) for i in range(2000)]
    faults = Faults(range(120, 2000, 300), times=2)
    bolt = Report(Count(10), Count(5), key_field="user")
    top, ledger = topology(bolt, rows, upstream=Flaky(faults), upstream_tasks=1, late=False)
    worker = run(top)
    assert faults.raised == 14 and metric(worker, "state.rollbacks") > 0
    got = last_per_window(fired(ledger), by=2)
    assert {k: (w[1], w[3], w[4], w[5]) for k, w in got.items()} == count_truth(rows, 10, 5)
    assert set(ledger.acked) == set(range(len(rows)))


def test_windows_stay_exact_when_execute_raises_once() -> None:
    rows = out_of_order_rows(2000, users=5, lag_ms=500, seed=4)
    faults = Faults([0])
    bolt = RaisesOnce(Duration(1), key_field="user", timestamp_field="ts", lag=0.5, late_stream="late",
                      which=lambda w: w.start == 9000, faults=faults)  # fired mid-input
    top, ledger = topology(bolt, rows)
    worker = run(top)
    assert faults.raised == 1 and stats(worker, "win").errors == 1
    assert metric(worker, "state.rollbacks") > 0
    got = last_per_window(fired(ledger))
    assert members(got) == time_truth(rows, 1000, 1000)


def test_windows_stay_exact_when_execute_raises_on_a_window_fired_at_the_end_of_input() -> None:
    rows = [(f"u{i % 3}", i * 10, i) for i in range(1000)]
    faults = Faults([0])
    bolt = RaisesOnce(Duration(1), key_field="user", timestamp_field="ts", lag=0.5, late_stream="late",
                      which=lambda w: w.start == 9000, faults=faults)  # only the END marker fires it
    top, ledger = topology(bolt, rows, tasks=1)
    worker = run(top)
    assert faults.raised == 1 and stats(worker, "win").errors == 1
    got = last_per_window(fired(ledger))
    assert members(got) == time_truth(rows, 1000, 1000)


class SlowSeek(ListSpout):
    """A :class:`ListSpout` whose fetch after a seek is slow, as a Kafka consumer's may
    be: it emits again only once a checkpoint barrier went by (``position`` is called at
    each prepare), so the first thing a window task gets after a rollback is a barrier."""

    def open(self, config: Mapping[str, Any], context: TaskContext) -> None:
        super().open(config, context)
        self.fetching = False

    def seek(self, positions: Mapping[str, Any]) -> None:
        super().seek(positions)
        self.fetching = True

    def position(self) -> dict[str, int]:
        self.fetching = False
        return super().position()

    def next_tuple(self) -> None:
        if not self.fetching:
            super().next_tuple()


def test_a_checkpoint_right_after_a_rollback_keeps_the_watermark_the_rollback_restored() -> None:
    # In order, lag 0: no row is ever late. Row 550 fails once upstream: rows after it
    # fire window [5000, 6000) without it, the rollback takes that back, and the
    # replay must fire it again with all 100 rows.
    rows = [("u", i * 10, i) for i in range(1000)]
    faults = Faults([550])
    spout = SlowSeek(rows, FIELDS, Ledger())
    bolt = Report(Duration(1), key_field="user", timestamp_field="ts", late_stream="late")
    top, ledger = topology(bolt, rows, upstream=Flaky(faults), tasks=1, spout=spout)
    worker = run(top)
    assert faults.raised == 1 and metric(worker, "state.rollbacks") >= 1
    assert late_rows(ledger) == [] and metric(worker, "window.late") == 0
    got = last_per_window(fired(ledger))
    assert members(got) == time_truth(rows, 1000, 1000)


# ----------------------------------------------------------------------------- 9. validation


class Plain(WindowedBolt):
    outputs = ["key", "count"]

    def execute(self, window: Window) -> None:
        pass


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Report(Count(10), Duration(1)), "window length and slide must both be Count(n) or both be Duration"),
    (lambda: Report(Duration(10), Count(1)), "window length and slide must both be Count(n) or both be Duration"),
    (lambda: Report(10), "window length and slide must both be Count(n) or both be Duration"),  # type: ignore[arg-type]
    (lambda: Report(Duration(1), Duration(2)), "a window needs 0 < slide <= length, got length Duration"),
    (lambda: Report(Count(5), Count(6)), "a window needs 0 < slide <= length, got length Count(n=5)"),
    (lambda: Report(Count(0)), "a window needs 0 < slide <= length"),
    (lambda: Report(Duration(0.0001)), "a window needs 0 < slide <= length"),
    (lambda: Report(Duration(1), timestamp_field="ts", timestamp=event_time),
     "give timestamp_field or timestamp, not both"),
    (lambda: Report(Count(5), timestamp_field="ts"), "count windows have no event time"),
    (lambda: Report(Count(5), timestamp=event_time), "count windows have no event time"),
    (lambda: Report(Duration(1), lag=-1), "lag must be >= 0 and idle_timeout > 0 seconds, got -1 and 5.0"),
    (lambda: Report(Duration(1), idle_timeout=0), "lag must be >= 0 and idle_timeout > 0 seconds"),
    (lambda: Report(Duration(1), late_stream="lost"), "late_stream 'lost' is not among the declared output"),
    (lambda: Plain(Duration(1), late_stream="late"), "late_stream 'late' is not among the declared output"),
], ids=["count-and-duration", "duration-and-count", "not-a-window-size", "slide-over-length",
        "count-slide-over-length", "count-0", "duration-below-1-ms", "timestamp-twice", "count-with-field",
        "count-with-function", "negative-lag", "idle-timeout-0", "undeclared-late-stream",
        "late-stream-with-only-a-default-stream"])
def test_windowed_bolt_refuses_inconsistent_settings_in_one_line(make: Callable[[], WindowedBolt],
                                                                 message: str) -> None:
    with pytest.raises(ValueError) as raised:
        make()
    text = str(raised.value)
    assert "\n" not in text and text.startswith(message), text


# ----------------------------------------------------------------------------- 10. the end


@pytest.mark.parametrize("clock", ["event-time", "processing-time"])
def test_a_finite_input_fires_every_window_at_its_end_and_leaves_none_in_state(clock: str) -> None:
    # An hour's lag (event time) or an hour's windows (processing time): no window can
    # fire before the END markers of the exhausted spout, and every one fires then.
    rows = out_of_order_rows(2000, users=9, lag_ms=3000, seed=1)
    if clock == "event-time":
        bolt = Report(Duration(1), key_field="user", timestamp_field="ts", lag=3600, late_stream="late")
        truth = time_truth(rows, 1000, 1000)
    else:
        bolt = Report(Duration(3600), key_field="user", late_stream="late")
        truth = None
    top, ledger = topology(bolt, rows, spouts=2)
    worker = run(top)
    windows = fired(ledger)
    assert_once(windows)
    if truth is not None:
        assert members(last_per_window(windows)) == truth
    else:  # the rows fall in one hour-long window per user (two if an hour began mid-run)
        assert Counter(row for w in windows for row in w[3]) == Counter(range(len(rows)))
        assert {w[0] for w in windows} == {user for user, _, _ in rows} and len(windows) <= 18
    assert metric(worker, "window.fired") == len(windows)
    assert pane_keys(worker) == []
