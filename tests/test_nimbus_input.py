"""What nimbus's API accepts, checked without a server: each body into typed values, or
a one-line 400 naming the field."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from streamflow.httpapi import ApiError
from streamflow.nimbus_input import (
    MAX_PARALLELISM,
    MAX_TASKS,
    MAX_WAIT_SECS,
    kill_wait,
    parse_rebalance,
    parse_submission,
)
from streamflow.records import TopologyRecord


def record(components: int = 3, parallelism: int = 1, stateful: bool = False,
           config: dict[str, Any] | None = None) -> TopologyRecord:
    specs = {f"c{i}": {"kind": "bolt", "parallelism": parallelism, "stateful": stateful, "inputs": []}
             for i in range(components)}
    return TopologyRecord("t-1", "t", "t.py", "00", config=config or {},
                          description={"components": specs, "config": {"topology.message.timeout.secs": 12}})


def refused(call: Any, reason: str) -> None:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.status == 400 and reason in str(caught.value) and "\n" not in str(caught.value)


def test_kill_wait_defaults_to_the_message_timeout_and_takes_finite_seconds() -> None:
    assert kill_wait({}, record()) == 12
    assert kill_wait({"wait": 0}, record()) == 0
    assert kill_wait({"wait": 2.5}, record()) == 2.5


@pytest.mark.parametrize("wait", [float("nan"), float("inf"), float("-inf"), -1, MAX_WAIT_SECS + 1, True, "3",
                                  [1]])
def test_kill_wait_refuses_what_is_not_a_finite_number_of_seconds(wait: Any) -> None:
    refused(lambda: kill_wait({"wait": wait}, record()), "wait must be a number of seconds from 0 to")


def test_a_rebalance_within_the_bounds_is_taken() -> None:
    asked = parse_rebalance({"workers": 3, "parallelism": {"c1": MAX_PARALLELISM}}, record())
    assert (asked.workers, asked.parallelism) == (3, {"c1": MAX_PARALLELISM})


@pytest.mark.parametrize(("body", "reason"), [
    ({"workers": 0}, "workers must be an integer from 1 to"),
    ({"workers": True}, "workers must be an integer from 1 to"),
    ({"workers": MAX_TASKS + 1}, "workers must be an integer from 1 to"),
    ({"parallelism": ["c1", 2]}, "parallelism must be an object"),
    ({"parallelism": {"nope": 2}}, "has no component 'nope'"),
    ({"parallelism": {"c1": MAX_PARALLELISM + 1}}, "parallelism must be an integer from 1 to"),
    ({"parallelism": {"c1": 2.0}}, "parallelism must be an integer from 1 to"),
])
def test_a_rebalance_past_a_bound_is_refused(body: dict[str, Any], reason: str) -> None:
    refused(lambda: parse_rebalance(body, record()), reason)


def test_a_rebalance_past_the_total_task_bound_is_refused() -> None:
    many = record(components=MAX_TASKS // MAX_PARALLELISM + 1)
    refused(lambda: parse_rebalance({"parallelism": {c: MAX_PARALLELISM for c in many.components}}, many),
            f"tasks, over the {MAX_TASKS} allowed")


def test_a_rebalance_that_would_lose_state_in_memory_or_pass_the_key_groups_is_refused() -> None:
    refused(lambda: parse_rebalance({"parallelism": {"c0": 2}}, record(stateful=True)),
            "keeps the state of c0, c1, c2 in its workers' memory")
    durable = record(stateful=True, config={"topology.state.provider": "redis", "topology.state.key.groups": 4})
    refused(lambda: parse_rebalance({"parallelism": {"c0": 5}}, durable), "exceeds its 4 key groups")
    assert parse_rebalance({"parallelism": {"c0": 4}}, durable).parallelism == {"c0": 4}


def test_a_submission_is_parsed_with_its_workers_in_the_config() -> None:
    package = base64.b64encode(b"zip").decode()
    submission = parse_submission({"name": "words", "file": "t.py", "package": package, "workers": 2})
    assert (submission.name, submission.package, submission.config) == ("words", b"zip", {"topology.workers": 2})


@pytest.mark.parametrize(("body", "reason"), [
    ({"name": "../x"}, "invalid topology name"),
    ({"name": "x" * 65}, "invalid topology name"),
    ({"name": "ok", "file": 1, "package": ""}, "submit needs file"),
    ({"name": "ok", "file": "t.py", "package": "!!"}, "package is not base64"),
])
def test_a_malformed_submission_is_refused(body: dict[str, Any], reason: str) -> None:
    refused(lambda: parse_submission(body), reason)
