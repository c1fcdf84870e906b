"""The pure functions of bench/bytewax_wordcount.py and the exactness check it shares with
bench/kafka_wordcount.py: interpolation of sampled counters, the wrong-count check, the
roles of processes and profile frames, and the profile report. No broker, no run."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from commands import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import bytewax_wordcount as bw  # noqa: E402  (bench/)
import kafka_wordcount as kw  # noqa: E402  (bench/)

SPLIT = "process (/tmp/code-1/topologies/wordcount.py:58)"
EMIT = "emit (/work/streamflow/collector.py:261)"
PRODUCE = "_write (/work/connectors/kafka/sink.py:90)"
RUN = "run (/usr/lib/python3.11/asyncio/runners.py:118)"
GENERATED = "__new__ (<string>:1)"


@pytest.mark.parametrize("when, value", [
    (0.0, 10.0),  # before the first sample: held at the first value
    (1.0, 10.0),
    (1.5, 15.0),
    (2.0, 20.0),
    (2.75, 35.0),
    (9.0, 40.0),  # after the last sample: held at the last value
])
def test_interpolate_is_linear_between_samples_and_held_outside(when: float, value: float) -> None:
    assert bw.interpolate([1.0, 2.0, 3.0], [10.0, 20.0, 40.0], when) == pytest.approx(value)


def test_interpolate_over_two_samples_of_one_time_does_not_divide_by_zero() -> None:
    assert bw.interpolate([1.0, 1.0], [5.0, 7.0], 1.0) == 5.0
    assert bw.interpolate([1.0, 1.0, 2.0], [5.0, 7.0, 9.0], 1.5) == pytest.approx(8.0)


def test_wrong_counts_lists_each_word_whose_highest_count_is_not_its_true_count_sorted() -> None:
    highest = {"b": 3, "a": 2, "c": 1, "extra": 4}
    expected = {"a": 2, "b": 5, "c": 1, "missing": 7}
    assert kw.wrong_counts(highest, expected) == [("b", 3, 5), ("extra", 4, 0), ("missing", 0, 7)]
    assert kw.wrong_counts(expected, expected) == []


def test_true_counts_counts_the_words_of_the_sentences_as_the_topology_does() -> None:
    values = [b'{"id": 0, "text": "The cat\'s cat"}', b'{"id": 1, "text": "the, END."}']
    assert kw.true_counts(values) == Counter({"the": 2, "cat's": 1, "cat": 1, "end": 1})


def test_parse_stacks_reads_py_spy_raw_lines_root_first_and_adds_repeats() -> None:
    raw = f"{RUN};{EMIT} 3\n{RUN};{SPLIT} 2\n{RUN};{EMIT} 4\n\nnot a stack line\n"
    assert bw.parse_stacks(raw) == Counter({(RUN, EMIT): 7, (RUN, SPLIT): 2})


@pytest.mark.parametrize("frame, role", [
    (SPLIT, "split/count user code"),
    (EMIT, "collector/emit"),
    (PRODUCE, "sink/produce"),
    ("fetch (/work/connectors/kafka/spout.py:10)", "Kafka spout/fetch"),
    ("put (/work/streamflow/state/kv.py:60)", "state/checkpoint"),
    (RUN, bw.ENTRY),
    ("select (/usr/lib/python3.11/selectors.py:468)", "event loop"),
    ("spin (/elsewhere/thing.py:1)", "other"),
])
def test_frame_role_is_the_first_pattern_found_in_the_frames_path(frame: str, role: str) -> None:
    assert bw.frame_role(frame) == role


def test_labelled_cuts_paths_to_two_parts_and_generated_code_takes_its_callers_role() -> None:
    assert bw.labelled([RUN, EMIT, GENERATED]) == [
        ("run (asyncio/runners.py:118)", bw.ENTRY),
        ("emit (streamflow/collector.py:261)", "collector/emit"),
        ("__new__ (<string>:1)", "collector/emit"),
    ]
    assert bw.labelled([GENERATED]) == [("__new__ (<string>:1)", "other")]  # no caller


def test_labelled_merges_one_function_of_the_two_workers_code_directories() -> None:
    other_worker = SPLIT.replace("code-1", "code-2")
    assert bw.labelled([SPLIT]) == bw.labelled([other_worker])


@pytest.mark.parametrize("argv, role", [
    ([], "?"),
    (["/opt/tansu/bin/tansu", "broker"], "Kafka broker (Tansu)"),
    (["java", "-cp", "x", "org.apache.zookeeper.server.quorum.QuorumPeerMain"], "ZooKeeper"),
    (["python", "-m", "streamflow.cli", "worker", "--port", "1"], "streamflow worker"),
    (["python", "-m", "streamflow.cli"], "streamflow cli"),
    (["python", "-m", "bytewax.run", "flow:build()"], "Bytewax process"),
    (["/usr/bin/redis-server", "--port", "0"], "redis-server"),
])
def test_role_of_names_a_process_by_its_command_line(argv: list[str], role: str) -> None:
    assert bw.role_of(argv) == role


def test_profile_report_ranks_functions_by_own_and_cumulative_time_and_shares_per_role() -> None:
    stacks = Counter({(RUN, SPLIT, EMIT): 6, (RUN, SPLIT): 3, (RUN, PRODUCE): 1})
    lines = bw.profile_report(stacks, top=2).splitlines()
    assert lines[0] == "  10 samples"
    own = lines[lines.index("  top 2 functions by own time:") + 1:][:2]
    assert own[0].split() == ["60.0%", "collector/emit", "emit", "(streamflow/collector.py:261)"]
    assert own[1].split()[:1] == ["30.0%"] and "wordcount.py" in own[1]
    cumulative = lines[next(i for i, line in enumerate(lines) if "by cumulative" in line) + 1:][:2]
    assert cumulative[0].split()[0] == "90.0%" and "wordcount.py" in cumulative[0]  # entry frames left out
    assert cumulative[1].split()[0] == "60.0%" and "collector.py" in cumulative[1]
    roles = {line.split("  ")[2].strip(): line.split()[-2:]
             for line in lines[lines.index("  by role:      own  cumulative") + 1:]}
    assert roles == {"collector/emit": ["60.0%", "60.0%"], "split/count user code": ["30.0%", "90.0%"],
                     "sink/produce": ["10.0%", "10.0%"]}


def test_profile_report_without_samples_says_so_in_one_line() -> None:
    assert "no samples" in bw.profile_report(Counter())
