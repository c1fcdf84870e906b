"""Checkpointed state without a run: KeyValueState and its codec, key groups against the
fields grouping's routing, the topology.state.* config and its validation (in code and
at the CLI), and the state lines of ``streamflow status``.

Runs of stateful topologies are in test_state_local.py.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Hashable, Mapping

import pytest
from commands import ROOT, assert_one_line_error, streamflow

from streamflow import (
    BasicBolt,
    ConfigError,
    KeyValueState,
    StateCodecError,
    StatefulBolt,
    StreamflowError,
    TopologyBuilder,
    TopologyError,
)
from streamflow.groupings import make_router
from streamflow.state.codec import decode_value, encode_key, encode_value, encodes_as_is
from streamflow.state.keygroups import effective_groups, groups_of_task, key_group, task_of_group
from streamflow.status_view import format_status
from streamflow.testing import CollectBolt, Ledger, ListSpout

WORDCOUNT = ROOT / "topologies" / "wordcount.py"
GROUPS = 128


DELETED = object()


def changes(values: Mapping[Hashable, Any], groups: int) -> dict[int, dict[bytes, bytes | None]]:
    """What ``prepare`` should return for ``values`` (:data:`DELETED` for a deleted key),
    by key group."""
    by_group: dict[int, dict[bytes, bytes | None]] = {}
    for key, value in values.items():
        by_group.setdefault(key_group(key, groups), {})[encode_key(key)] = (
            None if value is DELETED else encode_value(value))
    return by_group


def key_of_task(index: int, tasks: int, groups: int = GROUPS, stem: str = "k") -> str:
    """A str key whose key group task ``index`` of ``tasks`` owns."""
    return next(key for key in (f"{stem}{i}" for i in range(10_000))
                if task_of_group(key_group(key, groups), groups, tasks) == index)


def restored(state: KeyValueState, at: tuple[int, int] = (1, 1)) -> KeyValueState:
    """A new state of the same task loaded with what ``state`` prepares at ``at``: the
    state as a checkpoint saves and a rollback restores it."""
    data: dict[bytes, bytes] = {}
    for group in state.prepare(at).values():
        for key, value in group.items():
            if value is not None:
                data[key] = value
    again = KeyValueState("count", 0, 1, GROUPS)
    again.load(data)
    return again


# ----------------------------------------------------------------------------- KeyValueState


def test_get_put_delete_in_len_iteration_and_items() -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    assert len(state) == 0 and list(state) == [] and state.get("a") is None and state.get("a", 0) == 0
    state.put("a", 1)
    state.put("b", {"n": [1, 2]})
    state.put(("user", 7), "x")
    state.put("a", 2)
    assert state.get("a") == 2 and state.get("b") == {"n": [1, 2]} and state.get(("user", 7)) == "x"
    assert "a" in state and ("user", 7) in state and "z" not in state
    assert len(state) == 3
    assert list(state) == ["a", "b", ("user", 7)]
    assert list(state.items()) == [("a", 2), ("b", {"n": [1, 2]}), (("user", 7), "x")]
    state.delete("b")
    state.delete("never there")  # no error, no change recorded
    assert "b" not in state and len(state) == 2 and state.get("b", "gone") == "gone"
    assert state.prepare((1, 1)) == changes({"a": 2, ("user", 7): "x", "b": DELETED}, GROUPS)


def test_a_key_of_another_tasks_key_group_raises_key_error_naming_it() -> None:
    state = KeyValueState("count", 0, 2, GROUPS)
    mine, theirs = key_of_task(0, 2), key_of_task(1, 2)
    state.put(mine, 1)
    group = key_group(theirs, GROUPS)
    with pytest.raises(KeyError) as refused:
        state.put(theirs, 1)
    message = refused.value.args[0]
    assert f"key group {group}" in message and "which task 1 owns" in message and "'count'" in message
    assert repr(theirs) in message and "\n" not in message
    assert theirs not in state and len(state) == 1
    assert state.prepare((1, 1)) == changes({mine: 1}, GROUPS)
    assert list(state.owned_groups()) == list(groups_of_task(0, GROUPS, 2))
    assert group not in state.owned_groups()


@pytest.mark.parametrize("value, named", [
    ({1, 2}, "set"),
    (object(), "object"),
    ({"a": [1, {"nested", "set"}]}, "set"),
    ({1: "int key"}, "int (as a dict key)"),
    (b"bytes", "bytes"),
    (3 + 4j, "complex"),
])
def test_a_value_the_codec_cannot_hold_raises_one_line_naming_its_type(value: Any, named: str) -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    state.put("k", "before")
    state.prepare((1, 1))
    state.committed((1, 1))
    with pytest.raises(StateCodecError) as refused:
        state.put("k", value)
    message = str(refused.value)
    assert message.startswith(f"state value of type {named} cannot be encoded"), message
    assert "\n" not in message
    assert isinstance(refused.value, StreamflowError) and isinstance(refused.value, TypeError)
    assert state.get("k") == "before"  # the failed put changed nothing
    assert state.prepare((1, 2)) == {}


@pytest.mark.parametrize("key, named", [
    (b"bytes", "state key of type bytes"),
    (frozenset({1}), "state key of type frozenset"),
    (("a", ("nested",)), "state key part of type tuple"),
    (("a", b"x"), "state key part of type bytes"),
])
def test_a_key_the_codec_cannot_hold_raises_one_line_naming_its_type(key: Hashable, named: str) -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    with pytest.raises(StateCodecError) as refused:
        state.put(key, 1)
    assert str(refused.value).startswith(f"{named} cannot be encoded") and "\n" not in str(refused.value)
    assert key not in state and state.prepare((1, 1)) == {}


def test_prepare_returns_the_changes_since_the_last_commit_by_key_group() -> None:
    groups = 8
    state = KeyValueState("count", 0, 1, groups)
    state.put("a", 1)
    state.put("b", 2)
    state.put("c", 3)
    state.delete("c")  # put and deleted before any checkpoint: saved as a deletion
    assert state.prepare((1, 1)) == changes({"a": 1, "b": 2, "c": DELETED}, groups)
    # Checkpoint 1 never commits (aborted): its changes come again with checkpoint 2's.
    state.put("a", 10)
    state.put("d", [1, "x"])
    assert state.prepare((1, 2)) == changes({"a": 10, "b": 2, "c": DELETED, "d": [1, "x"]}, groups)
    state.committed((1, 2))
    assert state.prepare((1, 3)) == {}
    # A commit drops the changes of its checkpoint and earlier ones, not later ones.
    state.put("e", True)
    state.prepare((1, 4))
    state.put("f", None)
    state.prepare((1, 5))
    state.committed((1, 4))
    state.put("g", 1.5)
    assert state.prepare((1, 6)) == changes({"f": None, "g": 1.5}, groups)  # f: the value None
    # Checkpoints order by epoch, then txid: a commit of a newer epoch covers them all.
    state.committed((2, 1))
    assert state.prepare((2, 2)) == {}


def test_a_none_value_is_a_value_not_a_deletion() -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    state.put("k", None)
    assert "k" in state and state.get("k", "absent") is None
    prepared = state.prepare((1, 1))
    assert prepared == {key_group("k", GROUPS): {b'"k"': b"null"}}
    assert "k" in restored(state)


def test_load_replaces_the_data_and_drops_every_change() -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    state.put("old", 1)
    state.prepare((1, 1))  # prepared, never committed
    state.put("newer", 2)  # not prepared
    data = {encode_key("x"): encode_value({"n": 1}), encode_key(("w", 3)): encode_value((1, 2))}
    state.load(data)
    assert list(state.items()) == [("x", {"n": 1}), (("w", 3), [1, 2])]  # a tuple value comes back a list
    assert "old" not in state and "newer" not in state and len(state) == 2
    assert state.prepare((1, 2)) == {}
    assert state.bytes == sum(len(k) + len(v) for k, v in data.items())
    state.load({})
    assert len(state) == 0 and state.bytes == 0 and state.prepare((1, 3)) == {}


def test_bytes_is_the_encoded_size_as_of_the_last_prepare() -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    state.put("a", 1)
    assert len(state) == 1 and state.bytes == 0  # not checkpointed yet
    state.prepare((1, 1))
    assert state.bytes == len(b'"a"') + len(b"1")
    state.put("a", 1000)
    state.put("bb", "xy")
    assert state.bytes == 4
    state.prepare((1, 2))  # checkpoint 1 not committed: its change of "a" comes again
    assert state.bytes == len(b'"a"') + len(b"1000") + len(b'"bb"') + len(b'"xy"')
    state.prepare((1, 3))  # nothing new, the uncommitted changes again: not counted twice
    assert state.bytes == 15
    state.committed((1, 3))
    state.delete("a")
    assert len(state) == 1 and state.bytes == 15
    state.prepare((1, 4))
    assert state.bytes == len(b'"bb"') + len(b'"xy"')
    state.delete("bb")
    state.prepare((1, 5))
    assert state.bytes == 0 and len(state) == 0


@pytest.mark.parametrize("key", ["word", "", "é☃\U0001f600", 7, -1, 0, 2**63 - 1, 2.5, True, False, None,
                                 ("user", 7), ("a", None, False, 1.5), ()])
@pytest.mark.parametrize("value", [0, -5, 2**63 - 1, 1.5, True, None, "é☃", [1, [2, "x"]], {"a": {"b": [None]}}])
def test_keys_and_values_come_back_from_a_checkpoint_as_they_were_put(key: Hashable, value: Any) -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    state.put(key, value)
    again = restored(state)
    assert list(again.items()) == [(key, value)]
    (back,) = again
    assert type(back) is type(key)


NON_FINITE = [float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("where", ["value", "key"])
@pytest.mark.parametrize("number", NON_FINITE, ids=["inf", "-inf", "nan"])
def test_a_non_finite_float_comes_back_or_is_refused(where: str, number: float) -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    key, value = ("k", number) if where == "value" else (number, "v")
    try:
        state.put(key, value)
    except StateCodecError:
        return  # refusing it is fine too
    ((back_key, back_value),) = restored(state).items()
    back = back_value if where == "value" else back_key
    assert isinstance(back, float) and (math.isnan(back) if math.isnan(number) else back == number)


def test_an_int_key_beyond_64_bits_comes_back_or_raises_state_codec_error() -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    try:
        state.put(2**64, 1)
    except StateCodecError as refused:
        assert "int" in str(refused)
        return
    assert list(restored(state)) == [2**64]


def test_an_int_value_beyond_64_bits_is_refused_with_a_state_codec_error() -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    with pytest.raises(StateCodecError, match="^state value: an int beyond 64 bits cannot be encoded$"):
        state.put("k", 2**64)


@pytest.mark.parametrize("value, as_is", [
    ("word", True), ("", True), (True, True), (None, True), (0, True), (-(2**63), True), (2**64 - 1, True),
    (1.5, True), (2**64, False), (-(2**63) - 1, False), (math.inf, False), (math.nan, False),
    ([1], False), ((1,), False), ({"n": 1}, False), (b"x", False), ({1}, False),
])
def test_encodes_as_is_holds_for_the_immutable_scalars_the_codec_takes(value: Any, as_is: bool) -> None:
    assert encodes_as_is(value) is as_is
    if as_is:
        assert decode_value(encode_value(value)) == value


def test_a_value_changed_in_place_after_put_is_saved_as_it_was_put() -> None:
    state = KeyValueState("count", 0, 1, GROUPS)
    counts, label = [1], "a"
    state.put("list", counts)
    state.put("str", label)
    counts.append(2)
    assert state.prepare((1, 1)) == changes({"list": [1], "str": "a"}, GROUPS)


# ----------------------------------------------------------------------------- key groups


def test_the_key_groups_of_the_tasks_partition_the_groups_in_contiguous_balanced_ranges() -> None:
    for tasks in (1, 2, 3, 5, 7, 16, 100, 127, GROUPS):
        ranges = [groups_of_task(i, GROUPS, tasks) for i in range(tasks)]
        assert [g for r in ranges for g in r] == list(range(GROUPS)), tasks
        assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
        for index, owned in enumerate(ranges):
            assert all(task_of_group(g, GROUPS, tasks) == index for g in owned)
            assert len(owned) >= 1


WORDS = [f"w{i}" for i in range(600)] + ["", "é", "☃", "the", "The", "a b"]
INTS = [*range(-300, 300), 2**40, -(2**40), 2**70]
PAIRS = [(f"u{i % 40}", i) for i in range(400)] + [("", 0), ("a", -1)]


@pytest.mark.parametrize("tasks", [1, 2, 3, 5, 8, 13, 64, GROUPS])
def test_the_fields_grouping_sends_a_key_to_the_task_that_owns_its_key_group(tasks: int) -> None:
    targets = list(range(20, 20 + tasks))
    fields = ["word", "n", "other"]
    one = make_router("fields", targets, fields, ["word"], key_groups=GROUPS)
    two = make_router("fields", targets, fields, ["word", "n"], key_groups=GROUPS)
    seen: Counter[int] = Counter()
    for _ in range(2):  # the second time from the router's memo of str keys
        for key in [*WORDS, *INTS]:
            owner = targets[task_of_group(key_group(key, GROUPS), GROUPS, tasks)]
            assert one((key, 0, "x")) == (owner,), key
            seen[owner] += 1
        for pair in PAIRS:
            owner = targets[task_of_group(key_group(pair, GROUPS), GROUPS, tasks)]
            assert two((*pair, "x")) == (owner,), pair
    if tasks <= 8:
        assert set(seen) == set(targets)  # every task gets keys


def test_the_task_a_key_is_routed_to_is_the_one_task_whose_state_takes_it() -> None:
    tasks = 3
    targets = [4, 5, 6]
    router = make_router("fields", targets, ["word", "n"], ["word"], key_groups=GROUPS)
    pair_router = make_router("fields", targets, ["word", "n"], ["word", "n"], key_groups=GROUPS)
    states = [KeyValueState("count", i, tasks, GROUPS) for i in range(tasks)]
    for key, route in [*((w, router((w, 0))) for w in WORDS[:200]), *((i, router((i, 0))) for i in INTS[:200]),
                       *((p, pair_router(p)) for p in PAIRS[:200])]:
        (target,) = route
        for index, state in enumerate(states):
            if targets[index] == target:
                state.put(key, 1)
            else:
                with pytest.raises(KeyError):
                    state.put(key, 1)


def test_a_stateless_bolt_with_more_tasks_than_key_groups_spreads_keys_over_all_its_tasks() -> None:
    targets = list(range(1, 7))
    router = make_router("fields", targets, ["word"], ["word"], key_groups=4)
    groups = effective_groups(4, len(targets))
    assert groups == 6
    for word in WORDS:
        assert router((word,)) == (targets[task_of_group(key_group(word, groups), groups, 6)],)
    assert {router((w,))[0] for w in WORDS} == set(targets)


def test_a_single_grouped_field_whose_value_is_a_tuple_keys_the_state_of_its_task() -> None:
    targets = [1, 2, 3]
    router = make_router("fields", targets, ["pair", "n"], ["pair"], key_groups=GROUPS)
    for i in range(50):
        pair = (f"u{i}", i)
        (target,) = router((pair, 0))
        KeyValueState("count", targets.index(target), 3, GROUPS).put(pair, 1)


# ----------------------------------------------------------------------------- config and validation


class Count(StatefulBolt):
    outputs = ["word", "count"]


class Split(BasicBolt):
    outputs = ["word"]


def stateful(parallelism: int = 2, config: Mapping[str, Any] | None = None,
             bolt_config: Mapping[str, Any] | None = None) -> Any:
    builder = TopologyBuilder("stateful")
    builder.set_spout("words", ListSpout([("a",)], ["word"]))
    builder.set_bolt("count", Count(), parallelism, bolt_config).fields_grouping("words", ["word"])
    builder.set_bolt("sink", CollectBolt(Ledger())).shuffle_grouping("count")
    return builder.build(config)


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


def test_the_state_settings_have_defaults() -> None:
    config = stateful().config
    assert config["topology.state.provider"] == "memory"
    assert config["topology.state.redis.url"] is None
    assert config["topology.state.checkpoint.interval.ms"] == 1000
    assert config["topology.state.key.groups"] == 128


def test_an_unknown_state_provider_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        stateful(config={"topology.state.provider": "nope"})
    message = one_line(refused.value)
    assert "'topology.state.provider'" in message and "memory, redis" in message and "'nope'" in message


def test_the_redis_provider_without_a_url_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        stateful(config={"topology.state.provider": "redis"})
    message = one_line(refused.value)
    assert "topology.state.redis.url" in message and "redis://" in message


def test_a_malformed_redis_url_is_refused_without_connecting() -> None:
    with pytest.raises(ConfigError) as refused:
        stateful(config={"topology.state.provider": "redis", "topology.state.redis.url": "http://h:1/0"})
    assert "scheme" in one_line(refused.value)


@pytest.mark.parametrize("key, value", [("topology.state.checkpoint.interval.ms", 0),
                                        ("topology.state.checkpoint.interval.ms", 1.5),
                                        ("topology.state.key.groups", 0),
                                        ("topology.state.key.groups", "many")])
def test_state_numbers_out_of_range_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as refused:
        stateful(config={key: value})
    assert key in one_line(refused.value)


def test_a_stateful_bolt_with_more_tasks_than_key_groups_is_refused() -> None:
    with pytest.raises(TopologyError) as refused:
        stateful(parallelism=5, config={"topology.state.key.groups": 4})
    message = one_line(refused.value)
    assert "'count'" in message and "parallelism 5 exceeds its 4 key groups" in message
    with pytest.raises(TopologyError, match="parallelism 3 exceeds its 2 key groups"):
        stateful(parallelism=3, bolt_config={"topology.state.key.groups": 2})  # the bolt's own setting
    assert stateful(parallelism=4, config={"topology.state.key.groups": 4}).is_stateful


def test_a_stateless_bolt_may_have_more_tasks_than_key_groups() -> None:
    builder = TopologyBuilder("stateless")
    builder.set_spout("words", ListSpout([("a",)], ["word"]))
    builder.set_bolt("split", Split(), 6).fields_grouping("words", ["word"])
    topology = builder.build({"topology.state.key.groups": 4})
    assert not topology.is_stateful


def test_a_stateful_bolt_without_acking_is_refused() -> None:
    with pytest.raises(TopologyError) as refused:
        stateful(config={"topology.acker.executors": 0})
    message = one_line(refused.value)
    assert "'count'" in message and "needs acking" in message and "topology.acker.executors" in message


def test_a_stateful_topology_has_one_checkpoint_task_and_no_acker() -> None:
    topology = stateful(parallelism=3, config={"topology.acker.executors": 2})
    layout = topology.task_layout()
    assert layout["__acker"] == () and layout["__checkpoint"] == (6,)
    described = topology.describe()
    assert described["components"]["count"]["stateful"] is True
    assert described["components"]["sink"]["stateful"] is False
    assert list(described["tasks"]["__checkpoint"]) == [6]


# ----------------------------------------------------------------------------- the CLI


def run_elsewhere(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``streamflow ARGS`` run from ``cwd``, not from the repository."""
    return subprocess.run([sys.executable, "-m", "streamflow.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_the_cli_refuses_an_unknown_state_provider_in_one_line_from_any_directory(tmp_path: Path) -> None:
    result = run_elsewhere(tmp_path, "local", str(WORDCOUNT), "-c", "topology.state.provider=nope")
    assert_one_line_error(result, "topology.state.provider", "'nope'", "memory, redis")


def test_the_cli_refuses_the_redis_provider_without_a_url_in_one_line(tmp_path: Path) -> None:
    result = run_elsewhere(tmp_path, "local", str(WORDCOUNT), "-c", "topology.state.provider=redis")
    assert_one_line_error(result, "topology.state.redis.url")


def test_the_default_wordcount_still_prints_the_top_words() -> None:
    spec = importlib.util.spec_from_file_location("wordcount_example", WORDCOUNT)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    counts = Counter(w for line in Path(example.SAMPLE).read_text().splitlines()
                     for w in example.WORD.findall(line.lower()))
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
    result = streamflow("local", "topologies/wordcount.py")
    assert result.returncode == 0, result.stderr
    printed = [(m.group(2), int(m.group(1))) for m in re.finditer(r"^\s*(\d+)  (\S+)$", result.stdout, re.M)]
    assert printed == top
    assert "__checkpoint" in result.stderr and "finished in" in result.stderr


# ----------------------------------------------------------------------------- status


def component(kind: str, metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
    return {"kind": kind, "tasks": 1, "emitted": 0, "executed": 0, "acked": 0, "failed": 0,
            "metrics": dict(metrics or {})}


def status(components: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": "wc", "id": "wc-1", "status": "active", "uptime": 10.0, "workers": [],
            "components": dict(components), "errors": {}}


def test_status_prints_a_state_line_per_stateful_component() -> None:
    committed_at = time.time()
    text = format_status(status({
        "split": component("bolt"),
        "count": component("bolt", {"state.keys": 1234, "state.bytes": 56_789, "state.rollbacks": 2}),
        "totals": component("bolt", {"state.keys": 3, "state.bytes": 120, "state.rollbacks": 0}),
        "__checkpoint": component("checkpoint", {"checkpoint.committed_txid": 7.0,
                                                 "checkpoint.committed_time": committed_at,
                                                 "checkpoint.seconds": 0.0123, "checkpoint.failures": 1.0}),
    }))
    when = time.strftime("%H:%M:%S", time.localtime(committed_at))
    last = f"checkpoint 7 committed at {when}, took 0.01 s, 1 failed"
    lines = text.splitlines()
    assert f"state of count: 1,234 keys, 56.8 kB, 2 task rollbacks since start; {last}" in lines
    assert f"state of totals: 3 keys, 120 B, 0 task rollbacks since start; {last}" in lines
    assert not any(line.startswith("state of split") for line in lines)


def test_status_says_when_no_checkpoint_has_committed_yet() -> None:
    text = format_status(status({
        "count": component("bolt", {"state.keys": 0, "state.bytes": 0, "state.rollbacks": 0}),
        "__checkpoint": component("checkpoint", {"checkpoint.committed_txid": 0, "checkpoint.committed_time": 0,
                                                 "checkpoint.seconds": 0, "checkpoint.failures": 0}),
    }))
    assert "state of count: 0 keys, 0 B, 0 task rollbacks since start; no checkpoint committed yet" in text


def test_a_stateless_topology_has_no_state_line() -> None:
    text = format_status(status({"split": component("bolt"), "sink": component("bolt", {"kafka.lag": 3})}))
    assert "state of" not in text and "checkpoint" not in text
