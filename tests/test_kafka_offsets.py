"""Which offsets of a partition the Kafka spout may commit (connectors/kafka/offsets.py)."""

from __future__ import annotations

import random

from streamflow_connectors.kafka.offsets import WALK, PartitionOffsets, start_offset


def fetch(partition: PartitionOffsets, *offsets: int) -> None:
    for offset in offsets:
        partition.fetched(offset, f"record@{offset}")


def test_a_fresh_partition_commits_nothing_new() -> None:
    p = PartitionOffsets(42)
    assert p.committed == p.fetched_to == p.commit_point() == 42
    assert p.to_commit() is None
    assert len(p) == 0


def test_the_commit_point_is_the_lowest_offset_in_flight() -> None:
    p = PartitionOffsets(0)
    fetch(p, 0, 1, 2, 3)
    assert p.commit_point() == 0 and p.to_commit() is None and len(p) == 4
    assert p.done(2) == "record@2"  # acked out of order: 0 and 1 still hold the point back
    assert p.commit_point() == 0
    p.done(0)
    assert p.to_commit() == 1
    p.done(1)
    assert p.to_commit() == 3  # 2 was done already; 3 is in flight
    p.done(3)
    assert p.to_commit() == 4 and len(p) == 0  # nothing in flight: just past the highest fetched


def test_an_unacked_record_is_never_committed_whatever_is_acked_after_it() -> None:
    p = PartitionOffsets(100)
    fetch(p, *range(100, 200))
    for offset in range(100, 200):
        if offset != 150:
            p.done(offset)
    assert p.to_commit() == 150
    p.commit_asked(150)
    assert p.to_commit() is None  # nothing new until 150 is done
    p.done(150)
    assert p.to_commit() == 200


def test_offsets_may_have_gaps() -> None:
    # Compacted topics and transaction markers leave holes: the point jumps over them.
    p = PartitionOffsets(10)
    fetch(p, 10, 12, 15)
    assert p.fetched_to == 16
    p.done(10)
    assert p.commit_point() == 12
    p.done(15)
    assert p.commit_point() == 12
    p.done(12)
    assert p.commit_point() == 16


def test_a_late_duplicate_ack_changes_nothing() -> None:
    p = PartitionOffsets(0)
    fetch(p, 0, 1)
    assert p.done(0) == "record@0"
    assert p.done(0) is None
    assert p.done(7) is None  # never fetched
    assert p.commit_point() == 1 and len(p) == 1


def test_a_retried_record_keeps_its_place() -> None:
    p = PartitionOffsets(0)
    fetch(p, 0, 1, 2)
    p.done(1)
    p.done(2)
    fetch(p, 0)  # emitted again after a failure
    assert p.fetched_to == 3 and p.commit_point() == 0 and p.record(0) == "record@0"
    p.done(0)
    assert p.commit_point() == 3 and p.record(0) is None


def test_random_ack_orders_commit_exactly_the_done_prefix() -> None:
    rng = random.Random(3)
    for _ in range(200):
        start = rng.randrange(1000)
        offsets = sorted(rng.sample(range(start, start + 60), rng.randint(1, 40)))
        p = PartitionOffsets(start)
        fetch(p, *offsets)
        order = offsets[:]
        rng.shuffle(order)
        done: set[int] = set()
        for offset in order:
            p.done(offset)
            done.add(offset)
            pending = [o for o in offsets if o not in done]
            expected = pending[0] if pending else offsets[-1] + 1
            assert p.commit_point() == expected
            point = p.to_commit()
            if point is not None:
                assert point > p.commit_sent and all(o in done for o in offsets if o < point)
                p.commit_asked(point)
                p.commit_confirmed(point)
        assert p.committed == offsets[-1] + 1 or (offsets[-1] + 1 == start)


def test_a_point_is_asked_for_once_and_again_only_after_a_failed_commit() -> None:
    p = PartitionOffsets(0)
    fetch(p, 0, 1, 2)
    p.done(0)
    p.done(1)
    assert p.to_commit() == 2
    p.commit_asked(2)
    assert p.to_commit() is None and p.committed == 0  # asked for, not confirmed yet
    p.commit_failed()
    assert p.to_commit() == 2  # asked for again at the next commit
    p.commit_asked(2)
    p.done(2)
    p.commit_asked(3)
    p.commit_confirmed(3)
    p.commit_confirmed(2)  # a late answer to the earlier commit does not move the point back
    assert p.committed == 3 and p.to_commit() is None


def test_uncommitted_counts_every_offset_from_the_commit_point() -> None:
    p = PartitionOffsets(10)
    assert p.uncommitted() == 0
    fetch(p, *range(10, 30))
    assert p.uncommitted() == 20 and len(p) == 20
    for offset in range(10, 30):
        if offset != 12:
            p.done(offset)
    assert len(p) == 1  # one record in flight, but a restart would read 18 again
    assert p.uncommitted() == 18
    p.done(12)
    assert p.uncommitted() == 0


def test_an_idle_partition_skips_a_gap_and_counts_its_bound_from_there() -> None:
    # Retention deleted offsets 100 .. 4,999,999 (or compaction, or an aborted transaction):
    # the next record is far past where the partition was read up to.
    p = PartitionOffsets(100)
    p.skip_to(5_000_000)
    assert p.fetched_to == p.commit_point() == p.to_commit() == 5_000_000 and p.uncommitted() == 0
    fetch(p, 5_000_000)
    p.done(5_000_000)
    assert p.to_commit() == 5_000_001


def test_a_recreated_topic_takes_the_commit_points_back() -> None:
    p = PartitionOffsets(1000)
    fetch(p, 1000)
    p.done(1000)
    p.commit_asked(1001)
    p.commit_confirmed(1001)
    p.skip_to(0)  # the topic was recreated: its log starts again at 0
    assert p.fetched_to == p.committed == p.commit_sent == 0
    fetch(p, 0, 1)
    p.done(0)
    assert p.to_commit() == 1  # not held back until the new log passes 1001


def test_reading_starts_at_the_committed_offset_but_never_below_the_log_start() -> None:
    assert start_offset(100, 0, 500, "latest") == 100
    assert start_offset(100, 5_000_000, 5_000_100, "earliest") == 5_000_000  # the rest went to retention
    assert start_offset(-1001, 20, 500, "earliest") == 20  # none committed (OFFSET_INVALID)
    assert start_offset(-1001, 20, 500, "latest") == 500


def test_a_point_that_did_not_move_is_committed_again_when_asked() -> None:
    p = PartitionOffsets(7)
    assert p.to_commit() is None and p.to_commit(again=True) == 7
    fetch(p, 7)
    assert p.to_commit(again=True) == 7  # 7 is in flight: the point stays


def test_the_commit_point_is_the_lowest_in_flight_however_offsets_come_and_go() -> None:
    # commit_point walks up from the last point it found: records fetched in order, done
    # in any order, gaps wider than its walk, and a log that goes back below it.
    rng = random.Random(7)
    for _ in range(300):
        p = PartitionOffsets(rng.randrange(100))
        nxt = p.fetched_to
        for _ in range(rng.randint(1, 80)):
            action = rng.random()
            if action < 0.5:
                nxt += rng.choice([1, 1, 1, 2, WALK + rng.randrange(3 * WALK)])
                p.fetched(nxt, None)
            elif action < 0.9 and p.in_flight:
                p.done(rng.choice(list(p.in_flight)))
            elif action < 0.95:
                p.fetched(rng.randrange(max(1, nxt)), None)  # a log read again from lower down
            else:
                p.commit_point()
            assert p.commit_point() == (min(p.in_flight) if p.in_flight else p.fetched_to)
