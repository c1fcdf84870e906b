"""Client quotas of the Kafka spout: token buckets per task (connectors/kafka/quota.py)."""

from __future__ import annotations

import math

import pytest
from streamflow_connectors.kafka.quota import Quota, task_rates


def greedy(quota: Quota, seconds: float, step: float = 0.001, batch: int = 500, size: int = 100,
           start: float = 0.0) -> list[tuple[float, int]]:
    """A spout that fetches as much as the quota lets it, every ``step`` seconds of a fake
    clock; returns (time, records taken) per fetch."""
    taken = []
    now = start
    while now < start + seconds:
        if quota.throttle_delay(now) == 0:
            allowance = quota.allowance(now)
            n = batch if allowance is None else max(1, min(batch, allowance))
            quota.consume(n, n * size)
            taken.append((now, n))
        now += step
    return taken


def test_no_rates_means_no_limit() -> None:
    q = Quota()
    assert q.allowance(0.0) is None and q.throttle_delay(0.0) == 0
    q.consume(10**6, 10**9)
    assert q.throttle_delay(0.0) == 0
    assert (q.consumed_records, q.consumed_bytes) == (10**6, 10**9)


def test_a_records_rate_allows_one_second_of_burst_then_throttles() -> None:
    q = Quota(records_rate=100)
    assert q.allowance(0.0) == 100
    q.consume(100, 0)
    assert q.allowance(0.0) == 0
    assert q.throttle_delay(0.0) == pytest.approx(0.01)  # one record's worth of refill
    assert q.throttle_delay(0.005) == pytest.approx(0.005)
    assert q.throttle_delay(0.01) == 0
    assert q.allowance(0.5) == 50
    assert q.allowance(100.0) == 100  # idle time does not build a burst beyond one second


@pytest.mark.parametrize("rate", [1.0, 7.0, 200.0, 5000.0])
def test_a_greedy_consumer_gets_the_rate_and_one_seconds_burst(rate: float) -> None:
    q = Quota(records_rate=rate)
    taken = greedy(q, 10.0)
    total = sum(n for _, n in taken)
    assert rate * 10 <= total <= rate * 11 + 1
    # after the burst, every 1-second window holds about `rate` records
    for t in range(2, 9):
        window = sum(n for at, n in taken if t <= at < t + 1)
        assert window <= rate + 1, (t, window)


def test_a_rate_below_one_record_per_second_still_flows() -> None:
    # 2 records/s shared by 4 tasks: 0.5/s each. The bucket must hold a whole record.
    q = Quota(records_rate=0.5)
    taken = greedy(q, 20.0, step=0.01)
    assert 10 <= sum(n for _, n in taken) <= 11


def test_a_bytes_rate_turns_the_overdraft_into_a_delay() -> None:
    q = Quota(bytes_rate=1000)
    assert q.throttle_delay(0.0) == 0
    q.consume(3, 3000)  # one fetch may overshoot: the debt is 2000 bytes
    assert q.throttle_delay(0.0) == pytest.approx(2.0)
    assert q.throttle_delay(1.0) == pytest.approx(1.0)
    assert q.throttle_delay(2.0) == 0
    assert q.allowance(2.0) is None  # no record limit


def test_both_rates_take_the_longer_delay() -> None:
    q = Quota(bytes_rate=1000, records_rate=10)
    q.consume(10, 5000)
    assert q.throttle_delay(0.0) == pytest.approx(4.0)
    q2 = Quota(bytes_rate=10**6, records_rate=10)
    q2.consume(30, 10)
    assert q2.throttle_delay(0.0) == pytest.approx(2.1)


def test_lowering_a_rate_caps_the_tokens_at_the_new_burst() -> None:
    q = Quota(records_rate=1000)
    assert q.allowance(0.0) == 1000
    q.set_rates(None, 10)
    assert q.allowance(0.0) == 10
    taken = greedy(q, 5.0, start=0.0)
    assert 50 <= sum(n for _, n in taken) <= 61


def test_raising_a_rate_takes_effect_at_once() -> None:
    q = Quota(records_rate=10)
    greedy(q, 2.0)
    q.set_rates(None, 1000)
    taken = greedy(q, 3.0, start=2.0)
    assert sum(n for _, n in taken) >= 2900


def test_removing_and_restoring_a_limit() -> None:
    q = Quota(records_rate=10)
    q.consume(10, 0)
    q.set_rates(None, None)
    assert q.throttle_delay(0.0) == 0 and q.allowance(0.0) is None
    q.set_rates(None, 10)  # back under a limit: still in debt, so it waits first
    assert q.throttle_delay(0.0) > 0
    unlimited_first = Quota()
    unlimited_first.set_rates(None, 5)
    assert sum(n for _, n in greedy(unlimited_first, 4.0)) <= 4 * 5 + 1


def test_a_rate_of_zero_stops_consumption_without_dividing_by_zero() -> None:
    q = Quota(records_rate=0)
    assert q.throttle_delay(0.0) == math.inf
    assert greedy(q, 2.0) == []
    q.set_rates(None, 100)
    assert q.throttle_delay(2.1) == 0  # flows again once the rate is raised (greedy ran to 2.0)
    b = Quota(bytes_rate=0)
    assert b.throttle_delay(0.0) == math.inf


def test_consumed_counters_add_up() -> None:
    q = Quota(bytes_rate=10**6, records_rate=10**6)
    q.consume(3, 30)
    q.consume(2, 5)
    assert (q.consumed_records, q.consumed_bytes) == (5, 35)
    assert q.throttled_seconds == 0.0


def test_each_task_takes_its_share_of_its_client_ids_rates() -> None:
    quotas = {"wc-sentences": {"records_per_sec": 200, "bytes_per_sec": 1000}, "other": {"records_per_sec": 1}}
    assert task_rates(quotas, "wc-sentences", (None, 7.0), 2) == (500.0, 100.0)  # the topology's entry wins
    assert task_rates({"wc-sentences": {"records_per_sec": 50}}, "wc-sentences", (10.0, 20.0), 2) == (None, 25.0)
    assert task_rates(quotas, "mine", (10.0, None), 4) == (2.5, None)  # no entry: the spout's own rates
    assert task_rates(None, "mine", (None, None), 3) == (None, None)
