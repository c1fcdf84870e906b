"""Routers of every grouping (streamflow.groupings.make_router) and the stable key hash."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from streamflow import groupings
from streamflow.groupings import (
    GROUPINGS,
    KEYED_GROUPINGS,
    LoadAwareShuffleRouter,
    key_bytes,
    make_router,
    stable_hash,
)

TARGETS = (4, 5, 6, 7, 8)
FIELDS = ("word", "count", "extra")


def route_all(router, rows):
    return [router(row) for row in rows]


def single_targets(results):
    """The one task of each routed tuple (asserting there is exactly one)."""
    tasks = []
    for result in results:
        assert isinstance(result, tuple)
        assert len(result) == 1, result
        tasks.append(result[0])
    return tasks


# --------------------------------------------------------------------------- shuffle / none


@pytest.mark.parametrize("grouping", ["shuffle", "none"])
@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_shuffle_is_round_robin_and_even_at_every_prefix(grouping, seed):
    router = make_router(grouping, TARGETS, FIELDS, rng=random.Random(seed))
    counts = Counter({t: 0 for t in TARGETS})
    for i in range(1000):
        (task,) = router(("w", i, None))
        assert task in TARGETS
        counts[task] += 1
        assert max(counts.values()) - min(counts.values()) <= 1, (i, counts)
    assert sorted(counts) == sorted(TARGETS)
    assert set(counts.values()) == {200}


@pytest.mark.parametrize("grouping", ["shuffle", "none"])
def test_shuffle_repeats_one_permutation(grouping):
    router = make_router(grouping, TARGETS, FIELDS, rng=random.Random(3))
    tasks = single_targets(route_all(router, [("w", 0, None)] * (len(TARGETS) * 4)))
    first = tasks[: len(TARGETS)]
    assert sorted(first) == sorted(TARGETS)
    for k in range(4):
        assert tasks[k * len(TARGETS): (k + 1) * len(TARGETS)] == first


def test_shuffle_without_rng_is_still_even():
    router = make_router("shuffle", TARGETS, FIELDS)
    counts = Counter(single_targets(route_all(router, [("x", 1, 2)] * 503)))
    assert set(counts) == set(TARGETS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_shuffle_ignores_values():
    router = make_router("shuffle", TARGETS, FIELDS, rng=random.Random(0))
    same = single_targets(route_all(router, [("same", 1, 1)] * 500))
    assert Counter(same) == Counter({t: 100 for t in TARGETS})


def test_shuffle_single_target():
    router = make_router("shuffle", [9], FIELDS, rng=random.Random(0))
    assert all(router(("a", i, None)) == (9,) for i in range(20))


def test_shuffle_order_differs_between_emitters():
    """Emitters with different rngs start at different tasks (no herd on one task)."""
    firsts = {
        make_router("shuffle", range(1, 11), FIELDS, rng=random.Random(seed))(("a", 1, 2))
        for seed in range(30)
    }
    assert len(firsts) > 1


# --------------------------------------------------------------------------- fields


def test_fields_equal_keys_same_task():
    router = make_router("fields", TARGETS, FIELDS, ["word"])
    words = [f"word{i}" for i in range(100)]
    first = {w: router((w, 0, None)) for w in words}
    for rep in range(1, 5):
        for w in words:
            # other fields differ: only the grouped field decides
            assert router((w, rep, f"x{rep}")) == first[w]
    for task in first.values():
        assert len(task) == 1 and task[0] in TARGETS


def test_fields_spreads_distinct_keys():
    router = make_router("fields", TARGETS, FIELDS, ["word"])
    counts = Counter(single_targets(router((f"k{i}", 0, 0)) for i in range(5000)))
    assert set(counts) == set(TARGETS)
    expected = 5000 / len(TARGETS)
    for _task, n in counts.items():
        assert 0.8 * expected < n < 1.2 * expected, counts


def test_fields_is_stable_hash_mod_targets():
    targets = [12, 3, 7, 30]  # unsorted on purpose: routing uses the sorted ids
    router = make_router("fields", targets, FIELDS, ["word"])
    ordered = sorted(targets)
    for i in range(200):
        key = f"key-{i}"
        assert router((key, 0, 0)) == (ordered[stable_hash(key) % len(ordered)],)


def test_fields_routes_remembered_and_unremembered_keys_alike(monkeypatch):
    """A router remembers the task of its first FIELDS_MEMO text keys: a remembered key,
    one past the bound, and keys of other types equal to a text key's value all route by
    their own stable hash."""
    monkeypatch.setattr(groupings, "FIELDS_MEMO", 50)
    router = make_router("fields", TARGETS, FIELDS, ["word"])
    ordered = sorted(TARGETS)
    keys = [f"key-{i}" for i in range(200)] + [1, 1.0, True, b"key-3"]
    for _ in range(3):  # the first pass fills the memo, the others read it (or miss it)
        for key in keys:
            assert router((key, 0, 0)) == (ordered[stable_hash(key) % len(ordered)],)


def test_fields_does_not_depend_on_target_order():
    a = make_router("fields", [1, 2, 3, 4], FIELDS, ["word"])
    b = make_router("fields", [4, 2, 3, 1], FIELDS, ["word"])
    for i in range(300):
        row = (f"w{i}", i, i)
        assert a(row) == b(row)


def test_fields_multi_field_key():
    router = make_router("fields", TARGETS, FIELDS, ["word", "count"])
    seen = {}
    for i in range(300):
        for rep in range(3):
            row = (f"w{i % 30}", i % 7, f"noise{rep}")  # the ungrouped field varies
            task = router(row)
            key = (row[0], row[1])
            assert seen.setdefault(key, task) == task
    assert {task for (task,) in seen.values()} == set(TARGETS)


def test_fields_multi_field_key_uses_every_grouped_field():
    router = make_router("fields", range(1, 1001), FIELDS, ["word", "count"])
    # with the word fixed, the count alone moves the key around
    assert len({router(("same", i, None)) for i in range(50)}) > 40
    # with the count fixed, the word alone moves the key around
    assert len({router((f"w{i}", 1, None)) for i in range(50)}) > 40


def test_fields_multi_field_values_do_not_run_together():
    """("ab", "c") and ("a", "bc") are different keys, not one concatenated string."""
    router = make_router("fields", range(1, 1001), ["a", "b"], ["a", "b"])
    text = "abcdefghijklmnop"
    tasks = {router((text[:k], text[k:])) for k in range(len(text) + 1)}
    assert len(tasks) > len(text) - 3


def test_fields_multi_field_order_of_grouped_fields():
    """Grouping on [count, word] is consistent too, whatever the declared field order."""
    a = make_router("fields", TARGETS, FIELDS, ["count", "word"])
    b = make_router("fields", TARGETS, FIELDS, ["count", "word"])
    for i in range(100):
        assert a((f"w{i}", i, 0)) == b((f"w{i}", i, "other"))


def test_fields_single_field_key_is_stable_hash_of_value():
    for grouping_field, index in (("word", 0), ("count", 1), ("extra", 2)):
        router = make_router("fields", TARGETS, FIELDS, [grouping_field])
        ordered = sorted(TARGETS)
        for i in range(50):
            row = [f"w{i}", i, (i, "x")]
            assert router(row) == (ordered[stable_hash(row[index]) % len(ordered)],)


def test_fields_multi_field_spreads():
    router = make_router("fields", TARGETS, FIELDS, ["word", "count"])
    counts = Counter(single_targets(router(("w", i, None)) for i in range(2000)))
    assert set(counts) == set(TARGETS)


@pytest.mark.parametrize(
    "keys",
    [
        list(range(-50, 250)),
        [i * 1_000_003 for i in range(300)],
        [f"b{i}".encode() for i in range(300)],
        [i / 4 for i in range(300)],
        [(i, f"t{i}") for i in range(300)],
        ["ünïcødé-" + chr(0x4E00 + i) for i in range(300)],
    ],
    ids=["small-int", "large-int", "bytes", "float", "tuple", "non-ascii-str"],
)
def test_fields_non_str_keys(keys):
    router = make_router("fields", TARGETS, FIELDS, ["count"])
    ordered = sorted(TARGETS)
    tasks = {}
    for key in keys:
        task = router(("w", key, None))
        assert task == (ordered[stable_hash(key) % len(ordered)],)
        assert router(("other", key, "z")) == task  # same key, same task
        tasks[repr(key)] = task
    assert len(set(tasks.values())) == len(TARGETS)  # distinct keys spread over all tasks


def test_fields_str_fast_path_matches_stable_hash():
    """The inlined str path and the generic path agree (also for a lone surrogate)."""
    router = make_router("fields", range(1, 12), ["k"], ["k"])
    for key in ["", "a", "é", "\ud800", "x" * 1000, "\x00"]:
        assert router((key,)) == (1 + stable_hash(key) % 11,)


def test_fields_bool_none_and_nested_keys():
    router = make_router("fields", TARGETS, ["k"], ["k"])
    for key in [True, False, None, [1, [2, "x"]], {"a": 1}]:
        assert router((key,)) == router((key,))
        assert router((key,))[0] in TARGETS


def test_fields_unencodable_key_raises_type_error():
    router = make_router("fields", TARGETS, ["k"], ["k"])
    with pytest.raises(TypeError, match="cannot group on a object value"):
        router((object(),))
    multi = make_router("fields", TARGETS, ["k", "v"], ["k", "v"])
    with pytest.raises(TypeError, match="cannot group on"):
        multi(("a", object()))


def test_fields_equal_dicts_same_task():
    """Equal dicts are equal keys whatever their insertion order."""
    router = make_router("fields", range(1, 1001), ["k"], ["k"])
    assert {"a": 1, "b": 2} == {"b": 2, "a": 1}
    assert router(({"a": 1, "b": 2},)) == router(({"b": 2, "a": 1},))
    assert key_bytes({"b": [1, {"d": 1, "c": 2}], "a": None}) == key_bytes(
        {"a": None, "b": [1, {"c": 2, "d": 1}]})
    for i in range(30):
        forward = {f"k{j}": j for j in range(i + 2)}
        backward = dict(reversed(list(forward.items())))
        assert router((forward,)) == router((backward,))
        multi = make_router("fields", range(1, 1001), ["k", "n"], ["k", "n"])
        assert multi((forward, i)) == multi((backward, i))


@pytest.mark.parametrize("grouping", KEYED_GROUPINGS)
def test_keyed_grouping_multi_field_with_bytes_value(grouping):
    """A bytes value works in a multi-field key as it does alone."""
    router = make_router(grouping, range(1, 6), ["k", "n"], ["k", "n"])
    per_key: dict[tuple, set] = {}
    for i in range(500):
        key = (f"raw{i % 40}".encode(), i % 3)
        per_key.setdefault(key, set()).update(router(key))
    limit = 1 if grouping == "fields" else 2
    assert all(len(tasks) <= limit for tasks in per_key.values())
    assert set().union(*per_key.values()) == {1, 2, 3, 4, 5}


@pytest.mark.parametrize("key", [2**64, -(2**63) - 1, 10**40, -(10**40)])
def test_fields_big_int_key(key):
    """Ints of any size are keys (beyond orjson's 64-bit range too)."""
    router = make_router("fields", range(1, 1001), ["k", "n"], ["k"])
    assert router((key, 1)) == router((key, 2))
    assert len({router((key + j, 1)) for j in range(20)}) > 15  # neighbours spread
    multi = make_router("fields", range(1, 1001), ["k", "n"], ["k", "n"])
    assert multi((key, 1)) == multi((key, 1))


@pytest.mark.parametrize("key", [[b"x"], (1, b"x"), [2**64]], ids=["list-bytes", "tuple-bytes",
                                                                   "list-big-int"])
def test_fields_nested_bytes_and_big_ints(key):
    router = make_router("fields", TARGETS, ["k"], ["k"])
    assert router((key,)) == router((key,))


# --------------------------------------------------------------------------- all / global


def test_all_returns_every_target():
    router = make_router("all", [9, 3, 5], FIELDS)
    for i in range(10):
        assert router(("w", i, None)) == (3, 5, 9)


def test_all_single_target():
    assert make_router("all", [2], FIELDS)(("w", 1, 2)) == (2,)


def test_global_returns_lowest_task_only():
    router = make_router("global", [9, 3, 5, 4], FIELDS)
    for i in range(10):
        assert router((f"w{i}", i, None)) == (3,)


# --------------------------------------------------------------------------- local_or_shuffle


def test_local_or_shuffle_prefers_local_tasks():
    router = make_router(
        "local_or_shuffle", [1, 2, 3, 4, 5, 6], FIELDS, local_tasks={2, 5, 99},
        rng=random.Random(4),
    )
    counts = Counter(single_targets(router(("w", i, None)) for i in range(100)))
    assert counts == Counter({2: 50, 5: 50})


def test_local_or_shuffle_single_local_task():
    router = make_router("local_or_shuffle", [1, 2, 3], FIELDS, local_tasks=[3])
    assert all(router(("w", i, None)) == (3,) for i in range(20))


@pytest.mark.parametrize("local", [(), {10, 11}, frozenset()])
def test_local_or_shuffle_falls_back_to_all_targets(local):
    router = make_router(
        "local_or_shuffle", [1, 2, 3, 4], FIELDS, local_tasks=local, rng=random.Random(5)
    )
    counts = Counter({t: 0 for t in (1, 2, 3, 4)})
    for i in range(400):
        (task,) = router(("w", i, None))
        counts[task] += 1
        assert max(counts.values()) - min(counts.values()) <= 1
    assert set(counts.values()) == {100}


# --------------------------------------------------------------------------- partial_key


def _candidates(key, n):
    """The tasks partial key routing may send ``key`` to, found by routing it alone."""
    router = make_router("partial_key", range(1, n + 1), ["k"], ["k"])
    return Counter(single_targets(router((key,)) for _ in range(100)))


def test_partial_key_sends_each_key_to_at_most_two_tasks():
    router = make_router("partial_key", range(1, 9), ["k", "v"], ["k"])
    rng = random.Random(11)
    keys = [f"key{i}" for i in range(200)]
    per_key: dict[str, set[int]] = {k: set() for k in keys}
    # a skewed stream: a few hot keys and a long tail
    for _ in range(20000):
        key = keys[min(int(rng.paretovariate(1.2)) - 1, len(keys) - 1)]
        (task,) = router((key, rng.random()))
        assert 1 <= task <= 8
        per_key[key].add(task)
    for key, tasks in per_key.items():
        assert len(tasks) <= 2, (key, tasks)


def test_partial_key_balances_a_hot_key_over_two_tasks():
    n = 8
    # find a key whose two hash choices differ (for a few keys they coincide)
    hot = next(k for k in (f"hot{i}" for i in range(100)) if len(_candidates(k, n)) == 2)
    router = make_router("partial_key", range(1, n + 1), ["k"], ["k"])
    counts = Counter()
    for _i in range(1001):
        (task,) = router((hot,))
        counts[task] += 1
        assert max(counts.values()) - min(counts.values()) <= 1
    assert len(counts) == 2
    assert sorted(counts.values()) == [500, 501]


def test_partial_key_most_keys_have_two_choices():
    n = 8
    split = sum(len(_candidates(f"k{i}", n)) == 2 for i in range(200))
    assert split > 150  # expected about 7/8 of keys


def test_partial_key_key_with_one_choice_stays_on_it():
    n = 4
    key = next(k for k in (f"k{i}" for i in range(200)) if len(_candidates(k, n)) == 1)
    assert sum(_candidates(key, n).values()) == 100


def test_partial_key_candidates_are_deterministic_per_key():
    """Two emitters see a key's same two candidate tasks."""
    for i in range(50):
        key = f"key{i}"
        assert set(_candidates(key, 6)) == set(_candidates(key, 6))


def test_partial_key_multi_field_and_non_str():
    router = make_router("partial_key", range(1, 6), ["a", "b"], ["a", "b"])
    per_key: dict[tuple, set] = {}
    for i in range(3000):
        key = (i % 13, i % 5 / 2)
        per_key.setdefault(key, set()).update(router(key))
    assert all(len(tasks) <= 2 for tasks in per_key.values())
    assert set().union(*per_key.values()) == {1, 2, 3, 4, 5}


def test_partial_key_spreads_distinct_keys():
    router = make_router("partial_key", TARGETS, ["k"], ["k"])
    counts = Counter(single_targets(router((f"k{i}",)) for i in range(5000)))
    assert set(counts) == set(TARGETS)
    assert max(counts.values()) - min(counts.values()) <= 0.2 * 5000 / len(TARGETS)


# --------------------------------------------------------------------------- misc


def test_direct_has_no_router():
    with pytest.raises(ValueError, match="direct"):
        make_router("direct", TARGETS, FIELDS)


def test_grouping_names():
    assert set(KEYED_GROUPINGS) <= set(GROUPINGS)
    assert set(GROUPINGS) == {
        "shuffle", "fields", "all", "global", "direct", "local_or_shuffle", "partial_key",
        "none",
    }


def test_router_results_are_tuples_of_targets():
    for grouping in GROUPINGS:
        if grouping == "direct":
            continue
        fields = ["word"] if grouping in KEYED_GROUPINGS else []
        router = make_router(grouping, TARGETS, FIELDS, fields, rng=random.Random(0))
        for i in range(20):
            result = router((f"w{i}", i, None))
            assert isinstance(result, tuple) and result
            assert set(result) <= set(TARGETS)


# --------------------------------------------------------------------------- key_bytes


def test_key_bytes_encodings():
    assert key_bytes("héllo") == "héllo".encode("utf-8")
    assert key_bytes(b"\x00\xff") == b"\x00\xff"
    assert key_bytes(42) == b"42"
    assert key_bytes(None) == b"null"
    assert key_bytes(True) == b"true"
    assert key_bytes([1, "a"]) == key_bytes((1, "a")) != key_bytes(["1a"])
    assert stable_hash("a") == stable_hash("a")
    assert 0 <= stable_hash("anything") < 2**32


@pytest.mark.parametrize("value", [object(), {1, 2}, [object()], {"a": object()}, 1j])
def test_key_bytes_unencodable_raises_type_error(value):
    with pytest.raises(TypeError) as info:
        key_bytes(value)
    message = str(info.value)
    assert "cannot group on" in message
    assert "grouping keys must be" in message
    assert "\n" not in message


def test_key_bytes_names_the_type():
    class Custom:
        pass

    with pytest.raises(TypeError, match=r"cannot group on a Custom value"):
        key_bytes(Custom())
    with pytest.raises(TypeError) as info:
        stable_hash(object())
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --------------------------------------------------------------------------- cross-process

_CHILD = r"""
import json, sys
from streamflow.groupings import make_router
keys = json.loads(sys.stdin.read())
router = make_router("fields", list(range(1, 8)), ["k"], ["k"])
multi = make_router("fields", list(range(1, 8)), ["k", "n"], ["k", "n"])
out = []
for key in keys:
    if isinstance(key, dict):
        key = bytes(key["bytes"])
    out.append([router((key,))[0], multi((key, 5))[0]])
print(json.dumps({"tasks": out, "hash_of_a": hash("a")}))
"""


def _cross_process_keys():
    keys = [f"word-{i}" for i in range(120)]
    keys += list(range(-20, 40))
    keys += [{"bytes": list(f"b{i}".encode())} for i in range(20)]
    return keys


def _route_in_process(keys):
    router = make_router("fields", list(range(1, 8)), ["k"], ["k"])
    multi = make_router("fields", list(range(1, 8)), ["k", "n"], ["k", "n"])
    out = []
    for key in keys:
        if isinstance(key, dict):
            key = bytes(key["bytes"])
        out.append([router((key,))[0], multi((key, 5))[0]])
    return out


def test_fields_grouping_is_stable_across_processes():
    keys = _cross_process_keys()
    assert len(keys) == 200
    src = str(Path(__file__).resolve().parents[1])
    results = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(keys), capture_output=True, text=True, env=env, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout))
    # the interpreters really hash differently ...
    assert results[0]["hash_of_a"] != results[1]["hash_of_a"]
    # ... yet route every key to the same task, as this process does
    assert results[0]["tasks"] == results[1]["tasks"]
    assert results[0]["tasks"] == _route_in_process(keys)
    assert len({t for t, _ in results[0]["tasks"]}) == 7


# --------------------------------------------------------------------------- load-aware shuffle


class Loads:
    """Loads by task, set by the test (the LoadSource a router reads)."""

    def __init__(self, loads):
        self.loads = dict(loads)
        self.load_version = 0

    def load_of(self, task):
        return self.loads.get(task)

    def set(self, **by_task):
        self.loads.update({int(k[1:]): v for k, v in by_task.items()})
        self.load_version += 1


def shares_after(router, loads, rounds, tuples=640, **by_task):
    """Measure anew ``rounds`` times with the given loads, routing ``tuples`` after each;
    returns each target's share of the last round's tuples."""
    for _ in range(rounds):
        loads.set(**by_task)
        counts = Counter(single_targets(router(("w", i, None)) for i in range(tuples)))
    return {t: n / tuples for t, n in counts.items()}


def test_shuffle_across_workers_is_load_aware_only_with_loads_and_remote_targets():
    loads = Loads({})
    assert isinstance(make_router("shuffle", [1, 2], FIELDS, local_tasks={1}, loads=loads),
                      LoadAwareShuffleRouter)
    assert isinstance(make_router("none", [1, 2], FIELDS, local_tasks=(), loads=loads),
                      LoadAwareShuffleRouter)
    assert not isinstance(make_router("shuffle", [1, 2], FIELDS, local_tasks={1, 2}, loads=loads),
                          LoadAwareShuffleRouter)  # all local: nothing to balance
    assert not isinstance(make_router("shuffle", [1, 2], FIELDS, local_tasks={1}),
                          LoadAwareShuffleRouter)  # local mode: no loads
    assert not isinstance(make_router("shuffle", [2], FIELDS, loads=loads), LoadAwareShuffleRouter)


def test_load_aware_shuffle_is_even_while_loads_are_equal_or_unknown():
    loads = Loads({})
    router = make_router("shuffle", [1, 2, 3], FIELDS, local_tasks={1}, rng=random.Random(2), loads=loads)
    assert shares_after(router, loads, 1) == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 1 / 3}, abs=0.02)
    assert shares_after(router, loads, 5, t1=0.6, t2=0.6, t3=0.6) == pytest.approx(
        {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}, abs=0.02)


def test_load_aware_shuffle_moves_tuples_to_the_idler_worker_until_the_floor():
    # The emitter's worker (task 1) is saturated, the other (task 2) is not: the share of
    # task 1 falls with every measurement while the gap lasts, down to MIN_SHARE of an
    # even share, and every task keeps receiving.
    loads = Loads({})
    router = make_router("shuffle", [1, 2], FIELDS, local_tasks={1}, rng=random.Random(3), loads=loads)
    first = shares_after(router, loads, 1, t1=1.0, t2=0.7)
    second = shares_after(router, loads, 1, t1=1.0, t2=0.7)
    assert 0.5 > first[1] > second[1]
    floor = LoadAwareShuffleRouter.MIN_SHARE / 2
    settled = shares_after(router, loads, 20, t1=1.0, t2=0.7)
    assert settled[1] == pytest.approx(floor, abs=0.02)
    assert router.shares[1] == pytest.approx(floor)


def test_load_aware_shuffle_settles_where_the_loads_meet():
    # A model of two workers: all the tuples would keep one worker's core 1.6 times busy,
    # and the emitter's worker spends another 0.3 of a core of its own: the loads are
    # equal when task 1 gets 1.3 / 3.2 of the tuples.
    loads = Loads({})
    router = make_router("shuffle", [1, 2], FIELDS, local_tasks={1}, rng=random.Random(4), loads=loads)
    share = 0.5
    for _ in range(30):
        shares_after(router, loads, 1, t1=0.3 + 1.6 * share, t2=1.6 * (1 - share))
        share = router.shares[1]
    assert share == pytest.approx(1.3 / 3.2, abs=0.01)


def test_load_aware_shuffle_takes_tuples_back_when_the_load_turns():
    loads = Loads({})
    router = make_router("shuffle", [1, 2], FIELDS, local_tasks={1}, rng=random.Random(5), loads=loads)
    low = shares_after(router, loads, 10, t1=1.0, t2=0.5)[1]
    high = shares_after(router, loads, 10, t1=0.5, t2=1.0)[1]
    assert low < 0.2 < 0.8 < high
