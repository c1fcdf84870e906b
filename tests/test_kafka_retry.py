"""When the Kafka spout retries a failed record (connectors/kafka/retry.py)."""

from __future__ import annotations

import pytest
from streamflow_connectors.kafka.retry import Backoff, RetrySchedule

from streamflow import backoff


def test_delays_grow_exponentially_up_to_the_maximum() -> None:
    b = Backoff(initial=0.5, multiplier=2.0, maximum=3.0)
    assert [b.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert Backoff(initial=1, multiplier=1, maximum=10).delay(50) == 1.0
    assert isinstance(Backoff(initial=1, multiplier=2, maximum=10).delay(2), float)


def test_the_delays_are_the_engines_backoff() -> None:
    policy = Backoff(initial=0.2, multiplier=3.0, maximum=5.0, max_retries=1)
    engine = backoff.Backoff(initial=0.2, multiplier=3.0, maximum=5.0)
    assert isinstance(policy, backoff.Backoff)
    assert [policy.delay(n) for n in range(1, 6)] == [engine.delay(n) for n in range(1, 6)]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_retries": -1}, "max_retries must be at least 0, or None to retry forever, got -1"),
    ({"initial": 0.0}, "back-off needs 0 < initial <= maximum and multiplier >= 1"),
    ({"initial": 5.0, "maximum": 1.0}, "back-off needs 0 < initial <= maximum and multiplier >= 1"),
])
def test_a_bad_retry_policy_is_refused_in_one_line(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Backoff(**kwargs)  # type: ignore[arg-type]
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_huge_retry_count_gives_the_maximum_not_an_overflow() -> None:
    # With max_retries=None a record may fail forever: 2.0 ** 1024 overflows a float.
    b = Backoff(initial=0.5, multiplier=2.0, maximum=30.0, max_retries=None)
    assert b.delay(1025) == 30.0
    assert b.delay(10**6) == 30.0


@pytest.mark.parametrize(("max_retries", "allowed"), [(5, 5), (1, 1), (0, 0)])
def test_a_record_is_exhausted_after_max_retries_retries(max_retries: int, allowed: int) -> None:
    b = Backoff(max_retries=max_retries)
    # failure 1 is the first delivery failing; each retry that fails adds one
    assert [b.exhausted(n) for n in range(1, allowed + 3)] == [False] * allowed + [True, True]


def test_no_retry_limit_never_exhausts() -> None:
    assert not Backoff(max_retries=None).exhausted(10**9)


def test_schedule_retries_each_failure_after_its_delay_then_gives_up() -> None:
    s: RetrySchedule[str] = RetrySchedule(Backoff(initial=1.0, multiplier=2.0, maximum=60, max_retries=2))
    assert s.failed("a", now=100.0) is True  # retry 1 at 101
    assert len(s) == 1 and s.next_due() == 101.0
    assert s.due(100.99) == [] and len(s) == 1
    assert s.due(101.0) == ["a"] and len(s) == 0 and s.next_due() is None
    assert s.failed("a", now=102.0) is True  # retry 2 at 104
    assert s.due(103.9) == []
    assert s.due(104.0) == ["a"]
    assert s.failed("a", now=105.0) is False  # no retries left: the caller dead-letters it
    assert s.failures["a"] == 3 and len(s) == 0
    s.forget("a")
    assert "a" not in s.failures


def test_due_keys_come_in_time_order_and_ties_in_failure_order() -> None:
    s: RetrySchedule[int] = RetrySchedule(Backoff(initial=1.0, max_retries=None))
    s.failed(1, now=10.0)
    s.failed(2, now=9.0)
    s.failed(3, now=10.0)
    s.failed(2, now=9.5)  # a second failure of 2 before its first retry: due at 11.5
    assert s.due(11.0) == [2, 1, 3]
    assert s.due(20.0) == [2]


def test_success_resets_the_failure_count() -> None:
    s: RetrySchedule[str] = RetrySchedule(Backoff(initial=0.1, max_retries=1))
    assert s.failed("k", now=0.0)
    assert s.due(1.0) == ["k"]
    s.forget("k")  # the retry succeeded
    assert s.failed("k", now=2.0)  # a later failure starts over with a retry
    assert s.failures["k"] == 1


def test_forgetting_an_unknown_key_is_harmless() -> None:
    s: RetrySchedule[str] = RetrySchedule(Backoff())
    s.forget("never-failed")
    assert len(s) == 0 and s.due(1e9) == []


def test_dropped_keys_leave_the_schedule_and_the_rest_keep_their_order() -> None:
    s: RetrySchedule[tuple[str, int]] = RetrySchedule(Backoff(initial=1.0, max_retries=None))
    for i, key in enumerate([("a", 1), ("b", 1), ("a", 2), ("b", 2)]):
        s.failed(key, now=10.0 + i)
    s.drop(lambda key: key[0] == "a")
    assert len(s) == 2 and set(s.failures) == {("b", 1), ("b", 2)}
    assert s.next_due() == 12.0 and s.due(1e9) == [("b", 1), ("b", 2)]
