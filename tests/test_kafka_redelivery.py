"""Retries and dead letters of the Kafka spout's failed records
(connectors/kafka/redelivery.py): no broker (no dead-letter topic, so dead letters are
dropped when sent, and done at once)."""

from __future__ import annotations

from typing import Any, cast

from streamflow_connectors.kafka.assignment import Assignment
from streamflow_connectors.kafka.redelivery import Redelivery, msg_id
from streamflow_connectors.kafka.retry import Backoff
from test_kafka_intake import StandInMessage, record


def redelivering(taken: int, backoff: Backoff | None = None) -> tuple[Redelivery, list[StandInMessage]]:
    """Redelivery for partition t/0, with records 0 .. ``taken`` - 1 in flight."""
    assignment = Assignment("wc-source", ["t"], None, 0, 1, "earliest")
    assignment.join({("t", 0): 0})
    records = [record(0, offset) for offset in range(taken)]
    for r in records:
        assignment.partitions["t", 0].fetched(r.offset(), r)
    backoff = backoff or Backoff(initial=1.0, multiplier=2.0, maximum=10.0, max_retries=2)
    return Redelivery(assignment, backoff, "127.0.0.1:9", None, "wc-dlq", None), records


def test_a_failed_record_is_retried_after_its_backoff_then_dead_lettered() -> None:
    r, records = redelivering(3)
    partition = r.assignment.partitions["t", 0]
    r.failed(("t", 0, 1), now=0.0)
    assert r.due(0.5) is None and r.due(1.0) is records[1] and partition.retries == 1
    r.failed(("t", 0, 1), now=1.0)
    assert r.due(2.9) is None and r.due(3.0) is records[1] and partition.retries == 2
    r.failed(("t", 0, 1), now=3.0)  # past its two retries
    assert r.due(100.0) is None and not r.retries.failures and len(r.dead) == 1 and not r.idle()
    r.dead.send()  # no dead-letter topic: dropped, and done
    assert partition.dead_letters == 1 and partition.record(1) is None and r.idle()


def test_a_retry_of_a_record_done_meanwhile_is_skipped() -> None:
    r, records = redelivering(3)
    r.failed(("t", 0, 0), now=0.0)
    r.failed(("t", 0, 2), now=0.0)
    r.assignment.partitions["t", 0].done(0)
    assert r.due(5.0) is records[2] and r.due(5.0) is None


def test_failure_counts_of_a_checkpointed_spout_outlast_seeks() -> None:
    r, records = redelivering(3, Backoff(initial=1.0, max_retries=0))
    r.checkpointed = True
    r.failed(("t", 0, 1), now=0.0)  # no retry: to the dead letters, count kept
    assert r.retries.failures == {("t", 0, 1): 1} and len(r.dead) == 1
    r.seek({("t", 0): 1})  # read again from 1: its dead letter, not written yet, is taken back
    assert not r.dead and r.retries.failures == {("t", 0, 1): 1}
    again = record(0, 1)
    assert r.exhausted(again) and len(r.dead) == 1  # read again: dead-lettered, not emitted
    assert not r.exhausted(records[2])
    r.seek({("t", 0): 2})  # counts below a seek are done with
    assert not r.retries.failures


def test_a_failure_of_a_partition_that_left_is_forgotten() -> None:
    r, _ = redelivering(2)
    r.failed(("t", 0, 0), now=0.0)
    r.forget({("t", 0)})
    assert len(r.retries) == 0 and not r.retries.failures
    r.assignment.leave([("t", 0)])
    r.failed(("t", 0, 1), now=0.0)
    assert len(r.retries) == 0 and not r.retries.failures
    r.acked(("t", 0, 1))


def test_positions_go_back_to_records_waiting_for_a_retry() -> None:
    r, _ = redelivering(5)
    r.failed(("t", 0, 3), now=0.0)
    positions = {("t", 0): 5, ("u", 0): 7}
    r.lower(positions)
    assert positions == {("t", 0): 3, ("u", 0): 7}


def test_a_dead_letter_confirmed_after_a_seek_does_not_finish_the_record_read_again() -> None:
    r, records = redelivering(2)
    partition = r.assignment.partitions["t", 0]
    partition.restart_at(0)  # a seek: read again
    again = record(0, 1)
    partition.fetched(1, again)
    r.dead_lettered(cast(Any, records[1]))  # the delivery report of a dead letter written before
    assert partition.record(1) is again and partition.dead_letters == 1
    assert msg_id(cast(Any, again)) == ("t", 0, 1)
