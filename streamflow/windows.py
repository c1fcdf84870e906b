"""Windows: tumbling and sliding windows by count or by time, in processing or event time,
kept in checkpointed state (Storm 2's ``BaseWindowedBolt`` with stateful windowing).

A :class:`WindowedBolt` gets ``execute(window)`` once per window, per key when it has a
``key_field`` (route its input by a fields grouping on that field), else per task. A
window's tuples live in the bolt's checkpointed state, in *panes* of ``gcd(length,
slide)``, so that a tuple is kept once however many sliding windows hold it; an
:class:`Aggregate` keeps one accumulator per pane instead of the tuples, and merges the
panes of a window when it fires.

- **Time windows** start at multiples of ``slide`` (epoch milliseconds) and end
  ``length`` later. In event time (``timestamp_field`` or ``timestamp``) a window fires
  once the *watermark* reaches its end: the smallest, over the input tasks, of the
  highest timestamp each sent, less ``lag``; an input task that sent nothing for
  ``idle_timeout`` seconds stops holding it back. A tuple whose windows have all fired is
  *late*: it goes to ``late_stream`` if the bolt declares one, else it is counted
  (``window.late``) and dropped. A tuple without a usable timestamp goes to the late
  stream too, or fails with one line naming the problem. In processing time the
  watermark is the clock. When every input has ended (finite spouts done), the watermark
  passes every window and the last ones fire.
- **Count windows** count each key's tuples: a window fires every ``slide`` tuples and
  holds the last ``length``.

Through failures: the windows are the bolt's state, so a rollback puts them back as the
last committed checkpoint left them and the spouts replay what came after; each window
fires with exactly its tuples. A window that fired after that checkpoint fires again
after the replay: its output is keyed by (key, window start) so that a consumer keeps
the last. Input tuples are acked when the checkpoint that holds them in the window state
commits, as any stateful bolt's; the windows' output is emitted unanchored, and the
checkpoint that follows a firing commits only once the tasks downstream have acked it.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping

import orjson

from streamflow.components import Bolt, Stateful, TaskContext
from streamflow.state.codec import encode_value
from streamflow.state.keygroups import key_group
from streamflow.state.kv import KeyValueState
from streamflow.tuples import Origin, Tuple

END_OF_TIME = 2**62
"""The watermark once every input ended: past every window."""
LATEST_TIME = 2**53
"""Timestamps beyond this (either way) are no epoch milliseconds: such a tuple goes late."""


@dataclass(frozen=True)
class Count:
    """A window length or slide in tuples."""

    n: int


@dataclass(frozen=True)
class Duration:
    """A window length or slide in seconds (kept to the millisecond)."""

    seconds: float

    @property
    def ms(self) -> int:
        return round(self.seconds * 1000)


class Aggregate(ABC):
    """An aggregate function (init / add / merge / result): a window keeps one accumulator
    per pane and key, not its tuples. Accumulators are state: what JSON holds."""

    @abstractmethod
    def init(self) -> Any:
        """An empty accumulator."""

    @abstractmethod
    def add(self, accumulator: Any, tup: Tuple) -> Any:
        """``accumulator`` with ``tup`` added (it may be changed in place and returned)."""

    @abstractmethod
    def merge(self, a: Any, b: Any) -> Any:
        """One accumulator holding both."""

    @abstractmethod
    def result(self, accumulator: Any) -> Any:
        """What ``execute`` gets as ``window.result``."""


@dataclass
class Window:
    """One firing of a window, as ``execute`` gets it.

    ``start`` and ``end`` are epoch milliseconds for time windows (``end`` excluded), and
    the key's tuple counts for count windows (``start`` is ``end - length`` there too,
    below 0 for a key's first windows, so that each window has a start of its own).
    ``tuples`` are the window's, oldest pane first; ``new`` those it has that the key's
    previous window had not, ``expired`` those the previous had that it has not (empty
    lists for an aggregate window, whose ``result`` is the aggregate's)."""

    key: Any
    start: int
    end: int
    tuples: list[Tuple] = field(default_factory=list)
    new: list[Tuple] = field(default_factory=list)
    expired: list[Tuple] = field(default_factory=list)
    result: Any = None


class _Pane:
    """A pane's tuples, and their encoded form for the state."""

    __slots__ = ("tuples", "items", "origins")

    def __init__(self) -> None:
        self.tuples: list[Tuple] = []
        self.items: list[orjson.Fragment] = []
        self.origins: list[list[Any]] = []

    def add(self, stamp: int, tup: Tuple) -> None:
        origin = tup.origin
        described = [origin.source, origin.source_task, origin.stream, list(origin.fields)]
        try:
            index = self.origins.index(described)
        except ValueError:
            index = len(self.origins)
            self.origins.append(described)
        self.items.append(orjson.Fragment(encode_value([stamp, index, list(tup.values)])))
        self.tuples.append(tup)

    def state(self) -> dict[str, Any]:
        return {"origins": self.origins, "items": self.items}

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> _Pane:
        pane = cls()
        pane.origins = data["origins"]
        origins = [Origin(source, task, stream, tuple(fields)) for source, task, stream, fields in pane.origins]
        for stamp, index, values in data["items"]:
            pane.tuples.append(Tuple(values, origins[index], None))
            pane.items.append(orjson.Fragment(encode_value([stamp, index, values])))
        return pane


class WindowedBolt(Stateful, Bolt):
    """A bolt that sees its input in windows; see the module docstring.

    ``length`` and ``slide`` are both :class:`Count` or both :class:`Duration`; without a
    slide the windows tumble. Event time takes ``timestamp_field`` (epoch milliseconds)
    or ``timestamp`` (a function of the tuple giving them); ``lag`` (seconds) is how far
    out of order tuples may come. Subclasses implement :meth:`execute` and may set
    ``aggregate``. Output fields: declare ``outputs`` as for any bolt; a ``late_stream``
    must be declared among them with the input's fields.
    """

    def __init__(
        self,
        length: Count | Duration,
        slide: Count | Duration | None = None,
        *,
        key_field: str | None = None,
        timestamp_field: str | None = None,
        timestamp: Callable[[Tuple], float] | None = None,
        lag: float = 0.0,
        idle_timeout: float = 5.0,
        late_stream: str | None = None,
        aggregate: Aggregate | None = None,
    ) -> None:
        slide = slide or length
        if type(length) is not type(slide) or not isinstance(length, (Count, Duration)):
            raise ValueError("window length and slide must both be Count(n) or both be Duration(seconds)")
        size, step = (length.n, slide.n) if isinstance(length, Count) else (length.ms, slide.ms)  # type: ignore[union-attr]
        if size < 1 or step < 1 or step > size:
            raise ValueError(f"a window needs 0 < slide <= length, got length {length} and slide {slide}")
        if timestamp_field is not None and timestamp is not None:
            raise ValueError("give timestamp_field or timestamp, not both")
        self.counted = isinstance(length, Count)
        if self.counted and (timestamp_field is not None or timestamp is not None):
            raise ValueError("count windows have no event time: drop timestamp_field/timestamp")
        if lag < 0 or idle_timeout <= 0:
            raise ValueError(f"lag must be >= 0 and idle_timeout > 0 seconds, got {lag} and {idle_timeout}")
        declared = self.outputs if isinstance(self.outputs, Mapping) else {}
        if late_stream is not None and late_stream not in declared:
            raise ValueError(f"late_stream {late_stream!r} is not among the declared output streams")
        self.length, self.slide, self.pane = size, step, math.gcd(size, step)
        self.key_field, self.late_stream, self.aggregate = key_field, late_stream, aggregate
        self.timestamp_field, self.timestamp = timestamp_field, timestamp
        self.event_time = timestamp_field is not None or timestamp is not None
        self.lag_ms, self.idle_timeout = round(lag * 1000), idle_timeout
        self.tick_seconds = None if self.counted else min(1.0, max(step / 4000, 0.05))

    @abstractmethod
    def execute(self, window: Window) -> None:
        """Handle one window: emit its results (keyed by key and window start)."""

    # -- the engine's side -----------------------------------------------------------------

    def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._inputs = context.input_tasks
        self._index = context.task_index
        self._state: KeyValueState | None = None
        self._late = self._fired = 0

    def state_key_group(self, key: Hashable, groups: int) -> int | None:
        """Windows of a key live in the key's group; a task's own entries (its watermark,
        and unkeyed windows) in the first group it owns."""
        assert isinstance(key, tuple)
        if self.key_field is None or key[0] == "w":
            return self._home
        return key_group(key[1], groups)

    def init_state(self, state: KeyValueState) -> None:
        self._home = state.owned_groups()[0]
        self._state = state
        self._load()

    def pre_rollback(self) -> None:
        self._state_loaded = False

    def pre_prepare(self, txid: int) -> None:
        assert self._state is not None
        if not self._state_loaded:  # a checkpoint right after a rollback: save what it restored
            self._load()
        self._state.put(("w", self._index), self._watermark)

    def _load(self) -> None:
        """Rebuild the panes, counts and watermark from the state (a start or a rollback)."""
        assert self._state is not None
        self._panes: dict[Any, dict[int, Any]] = {}
        self._counts: dict[Any, int] = {}
        marks = []
        for key, value in self._state.items():
            kind = key[0]  # type: ignore[index]
            if kind == "p":
                self._panes.setdefault(key[1], {})[key[2]] = (  # type: ignore[index]
                    value if self.aggregate is not None else _Pane.of(value))
            elif kind == "n":
                self._counts[key[1]] = value  # type: ignore[index]
            elif kind == "w":
                marks.append(value)
        self._watermark = min(marks) if marks else -END_OF_TIME
        self._max_seen: dict[int, int] = {}
        self._last_seen: dict[int, float] = {}
        self._started = time.monotonic()
        self._state_loaded = True

    def process(self, tup: Tuple) -> None:
        if self._state is None:
            return
        if not self._state_loaded:
            self._load()
        if tup.is_tick():
            self._advance()
            return
        key = tup[self.key_field] if self.key_field is not None else None
        if self.counted:
            self._add_counted(key, tup)
            self.ack(tup)
            return
        if not self.event_time:
            stamp = int(time.time() * 1000)
        else:
            stamp_or_problem = self._stamp(tup)
            if isinstance(stamp_or_problem, str):
                self._late_tuple(tup, stamp_or_problem)
                return
            stamp = stamp_or_problem
            if stamp - stamp % self.slide + self.length <= self._watermark:
                self._late_tuple(tup, None)
                return
        self._add(key, stamp - stamp % self.pane, stamp, tup)
        self.ack(tup)
        if self.event_time:
            source = tup.origin.source_task
            if stamp > self._max_seen.get(source, -END_OF_TIME):
                self._max_seen[source] = stamp
            self._last_seen[source] = time.monotonic()
            self._advance()

    def end_of_input(self) -> None:
        """Every input ended: the watermark passes every window."""
        if self._state is not None and not self.counted:
            if not self._state_loaded:
                self._load()
            self._move_watermark(END_OF_TIME)

    def metrics(self) -> Mapping[str, float]:
        return {"window.late": self._late, "window.fired": self._fired}

    # -- time windows --------------------------------------------------------------------

    def _stamp(self, tup: Tuple) -> int | str:
        """The tuple's event time in ms, or what is wrong with it."""
        try:
            raw = tup[self.timestamp_field] if self.timestamp_field is not None else self.timestamp(tup)  # type: ignore[misc]
        except Exception as exc:
            return f"no timestamp ({type(exc).__name__}: {exc})"
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not -LATEST_TIME <= raw <= LATEST_TIME:
            return f"timestamp {raw!r} is not a number of epoch milliseconds"
        return int(raw)

    def _late_tuple(self, tup: Tuple, problem: str | None) -> None:
        """A tuple no window takes: to the late stream, else counted (late) or failed."""
        if self.late_stream is not None:
            self.emit(tup.values, stream=self.late_stream, anchors=[tup])
            self.ack(tup)
            self._late += 1
            return
        if problem is not None:
            raise ValueError(f"component {type(self).__name__}: {problem}, and no late stream to send it to")
        self._late += 1
        self.ack(tup)

    def _add(self, key: Any, pane_start: int, stamp: int, tup: Tuple) -> None:
        assert self._state is not None
        panes = self._panes.setdefault(key, {})
        if self.aggregate is not None:
            accumulator = panes.get(pane_start)
            accumulator = self.aggregate.add(self.aggregate.init() if accumulator is None else accumulator, tup)
            self._state.put(("p", key, pane_start), accumulator)
            panes[pane_start] = accumulator
            return
        pane = panes.get(pane_start)
        if pane is None:
            pane = panes[pane_start] = _Pane()
        pane.add(stamp, tup)
        self._state.put_lazily(("p", key, pane_start), pane.state())

    def _advance(self) -> None:
        """Move the watermark as the inputs (or the clock) allow, firing what it passes."""
        if not self.event_time:
            self._move_watermark(int(time.time() * 1000))
            return
        now = time.monotonic()
        cutoff = now - self.idle_timeout
        active = [self._max_seen.get(t, -END_OF_TIME) for t in self._inputs
                  if self._last_seen.get(t, self._started) > cutoff]
        if active:
            self._move_watermark(min(active) - self.lag_ms)
        elif self._max_seen:  # every input idle: what came is all there is for now
            self._move_watermark(max(self._max_seen.values()) - self.lag_ms)

    def _move_watermark(self, mark: int) -> None:
        if mark <= self._watermark:
            return
        before, self._watermark = self._watermark, mark
        # A list window's panes stay one slide past their last window: the next one's expired.
        kept = self.slide if self.aggregate is None else 0
        for key in list(self._panes):
            panes = self._panes[key]
            ends = sorted({end for start in panes for end in self._ends_of(start) if before < end <= mark})
            for end in ends:
                self._fire(key, end - self.length, end)
            self._drop(key, [s for s in panes if self._last_end(s) + kept <= mark])

    def _ends_of(self, pane_start: int) -> range:
        """The ends of the windows (starting at multiples of the slide) that hold the pane
        starting at ``pane_start``."""
        first_start = -(-(pane_start + self.pane - self.length) // self.slide) * self.slide
        return range(first_start + self.length, self._last_end(pane_start) + 1, self.slide)

    def _last_end(self, pane_start: int) -> int:
        """The end of the last window that holds the pane starting at ``pane_start``."""
        return pane_start - pane_start % self.slide + self.length

    # -- count windows ---------------------------------------------------------------------

    def _add_counted(self, key: Any, tup: Tuple) -> None:
        assert self._state is not None
        seq = self._counts.get(key, 0)
        self._add(key, seq - seq % self.pane, seq, tup)
        self._counts[key] = seq = seq + 1
        self._state.put(("n", key), seq)
        if seq % self.slide == 0:
            self._fire(key, seq - self.length, seq)
            # Panes before this window's start stay for a list window's next expired.
            start = seq - self.length + (0 if self.aggregate is None else self.slide)
            self._drop(key, [s for s in self._panes[key] if s + self.pane <= start])

    # -- firing ----------------------------------------------------------------------------

    def _fire(self, key: Any, start: int, end: int) -> None:
        """Hand the window [start, end) of ``key`` to ``execute``."""
        panes = self._panes.get(key, {})
        inside = sorted(s for s in panes if start <= s < end)
        if not inside:
            return
        window = Window(key, start, end)
        if self.aggregate is not None:
            total = self.aggregate.init()
            for s in inside:
                total = self.aggregate.merge(total, panes[s])
            window.result = self.aggregate.result(total)
        else:
            window.tuples = [t for s in inside for t in panes[s].tuples]
            window.new = [t for s in inside if s >= end - self.slide for t in panes[s].tuples]
            window.expired = [t for s in sorted(panes) if start - self.slide <= s < start for t in panes[s].tuples]
        self._fired += 1
        self.execute(window)

    def _drop(self, key: Any, starts: list[int]) -> None:
        """Forget panes of ``key`` that no window to come holds."""
        assert self._state is not None
        panes = self._panes[key]
        for s in starts:
            del panes[s]
            self._state.delete(("p", key, s))
        if not panes:
            del self._panes[key]
