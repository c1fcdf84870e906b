"""XOR acking bookkeeping: AckerState (the acker task) and PendingTrees (the spout task)."""

from __future__ import annotations

import random
from functools import reduce
from operator import xor

import pytest

from streamflow.acking import COMPLETED, FAILED, PENDING, AckerState, PendingTrees, new_id
from streamflow.inbox import ACK_ACK, ACK_FAIL, ACK_INIT, TREE_DONE

SPOUT_TASK = 3


class Tree:
    """A random tuple tree and the acker messages it produces.

    The spout sends the root tuple to ``fanout`` tasks (edges of level 0); every tuple of
    level < ``depth`` is processed by a bolt that emits ``fanout`` anchored children.
    Messages: one ``init`` (XOR of the spout's edges) and one ``ack`` per edge (the edge
    XOR the edges of its children), so every edge is XORed in exactly twice.
    """

    def __init__(self, rng: random.Random, depth: int = 3, fanout: int = 3, root: int | None = None):
        self.root = root if root is not None else rng.getrandbits(64)
        used: set[int] = set()

        def edge() -> int:
            while True:
                e = rng.getrandbits(64)
                if e and e not in used:
                    used.add(e)
                    return e

        spout_edges = [edge() for _ in range(fanout)]
        self.init_xor = reduce(xor, spout_edges)
        self.acks: list[int] = []
        level = spout_edges
        for d in range(depth):
            nxt = []
            for e in level:
                children = [edge() for _ in range(fanout)] if d < depth - 1 else []
                self.acks.append(reduce(xor, children, e))
                nxt.extend(children)
            level = nxt
        self.edges = used

    def messages(self) -> list[tuple[str, int]]:
        return [("init", self.init_xor)] + [("ack", a) for a in self.acks]


def deliver(state: AckerState, root: int, message: tuple[str, int], now: float = 0.0):
    kind, value = message
    if kind == "init":
        return state.init(root, value, SPOUT_TASK, now)
    return state.ack(root, value, now)


def completed(message: tuple[str, int], result) -> bool:
    if message[0] == "init":
        assert result in (PENDING, COMPLETED), result
        return result == COMPLETED
    assert result in (None, SPOUT_TASK), result
    return result == SPOUT_TASK


# --------------------------------------------------------------------------- completion


def test_tree_shape():
    tree = Tree(random.Random(0), depth=3, fanout=3)
    assert len(tree.acks) == 3 + 9 + 27
    # every edge XORed in exactly twice: the whole set of messages XORs to zero
    assert reduce(xor, tree.acks, tree.init_xor) == 0
    assert reduce(xor, tree.acks[:-1], tree.init_xor) != 0


def test_init_then_acks_in_order():
    tree = Tree(random.Random(1))
    state = AckerState()
    assert state.init(tree.root, tree.init_xor, SPOUT_TASK, 0.0) == PENDING
    for a in tree.acks[:-1]:
        assert state.ack(tree.root, a, 0.0) is None
    assert len(state) == 1
    assert state.ack(tree.root, tree.acks[-1], 0.0) == SPOUT_TASK
    assert len(state) == 0


def test_acks_then_init_last_completes_on_init():
    tree = Tree(random.Random(2))
    state = AckerState()
    for a in tree.acks:
        assert state.ack(tree.root, a, 0.0) is None  # spout task unknown yet
    assert len(state) == 1
    assert state.init(tree.root, tree.init_xor, SPOUT_TASK, 0.0) == COMPLETED
    assert len(state) == 0


@pytest.mark.parametrize("seed", range(25))
def test_completes_exactly_at_last_message_in_any_order(seed):
    rng = random.Random(seed)
    tree = Tree(rng, depth=rng.randint(2, 4), fanout=rng.randint(1, 3))
    messages = tree.messages()
    rng.shuffle(messages)
    state = AckerState()
    for i, message in enumerate(messages):
        done = completed(message, deliver(state, tree.root, message))
        assert done == (i == len(messages) - 1), (i, message)
    assert len(state) == 0


@pytest.mark.parametrize("init_position", ["first", "middle", "last"])
def test_init_position_does_not_matter(init_position):
    rng = random.Random(99)
    tree = Tree(rng, depth=4, fanout=2)
    acks = [("ack", a) for a in tree.acks]
    rng.shuffle(acks)
    index = {"first": 0, "middle": len(acks) // 2, "last": len(acks)}[init_position]
    messages = acks[:index] + [("init", tree.init_xor)] + acks[index:]
    state = AckerState()
    results = [completed(m, deliver(state, tree.root, m)) for m in messages]
    assert results == [False] * (len(messages) - 1) + [True]


def test_missing_one_ack_never_completes():
    rng = random.Random(5)
    tree = Tree(rng, depth=3, fanout=3)
    for skip in range(len(tree.acks)):
        state = AckerState()
        messages = [("init", tree.init_xor)] + [
            ("ack", a) for i, a in enumerate(tree.acks) if i != skip
        ]
        rng.shuffle(messages)
        assert not any(completed(m, deliver(state, tree.root, m)) for m in messages)
        assert len(state) == 1


def test_interleaved_trees_complete_independently():
    rng = random.Random(7)
    trees = [Tree(rng, depth=rng.randint(1, 3), fanout=rng.randint(1, 3)) for _ in range(20)]
    schedule = [(t, m) for t in trees for m in t.messages()]
    rng.shuffle(schedule)
    total = {t.root: len(t.messages()) for t in trees}
    remaining = dict(total)
    state = AckerState()
    done = set()
    for tree, message in schedule:
        remaining[tree.root] -= 1
        if completed(message, deliver(state, tree.root, message)):
            assert remaining[tree.root] == 0
            assert tree.root not in done
            done.add(tree.root)
        else:
            assert remaining[tree.root] > 0
        # one entry per tree that has started and not completed
        assert len(state) == sum(1 for r, n in remaining.items() if 0 < n < total[r])
    assert done == {t.root for t in trees}
    assert len(state) == 0


def test_ack_before_init_waits_for_init_to_name_spout():
    state = AckerState()
    e1, e2 = 0x1234, 0xABCD
    # the bolt's ack of both edges arrives first: the value is already zero,
    # but the acker cannot tell anyone until init names the spout task
    assert state.ack(10, e1, 0.0) is None
    assert state.ack(10, e2, 0.0) is None
    assert len(state) == 1
    assert state.init(10, e1 ^ e2, 8, 0.0) == COMPLETED
    assert len(state) == 0


def test_init_reports_pending_with_acks_outstanding():
    state = AckerState()
    assert state.ack(10, 0x1, 0.0) is None
    assert state.init(10, 0x1 ^ 0x2, 8, 0.0) == PENDING
    assert state.ack(10, 0x2, 0.0) == 8


def test_roots_are_independent():
    state = AckerState()
    assert state.init(1, 0xF0, 4, 0.0) == PENDING
    assert state.init(2, 0xF0, 5, 0.0) == PENDING
    assert state.ack(2, 0xF0, 0.0) == 5
    assert len(state) == 1
    assert state.ack(1, 0xF0, 0.0) == 4
    assert len(state) == 0


# --------------------------------------------------------------------------- failure


def test_fail_after_init_returns_spout_task():
    state = AckerState()
    state.init(1, 0xAA, 6, 0.0)
    assert state.fail(1, 0.0) == 6
    assert len(state) == 0
    # late acks of the failed tree do not resurrect a completion
    assert state.ack(1, 0xAA, 0.0) is None


def test_fail_after_init_and_some_acks():
    state = AckerState()
    state.init(1, 0xAA ^ 0xBB, 6, 0.0)
    assert state.ack(1, 0xAA, 0.0) is None
    assert state.fail(1, 0.0) == 6
    assert len(state) == 0


def test_fail_before_init_marks_failed_and_init_reports_failed():
    state = AckerState()
    assert state.fail(1, 0.0) is None
    assert len(state) == 1
    assert state.init(1, 0xAA, 6, 0.0) == FAILED
    assert len(state) == 0


def test_fail_after_acks_before_init():
    state = AckerState()
    assert state.ack(1, 0xAA, 0.0) is None
    assert state.fail(1, 0.0) is None
    # further acks are ignored, even one that would zero the value
    assert state.ack(1, 0xAA, 0.0) is None
    assert state.init(1, 0xBB, 6, 0.0) == FAILED
    assert len(state) == 0


def test_acks_after_fail_before_init_do_not_complete():
    tree = Tree(random.Random(3), depth=2, fanout=2)
    state = AckerState()
    assert state.fail(tree.root, 0.0) is None
    for a in tree.acks:
        assert state.ack(tree.root, a, 0.0) is None
    assert state.init(tree.root, tree.init_xor, SPOUT_TASK, 0.0) == FAILED
    assert len(state) == 0


def test_second_fail_before_init_still_waits():
    state = AckerState()
    assert state.fail(1, 0.0) is None
    assert state.fail(1, 0.0) is None
    assert len(state) == 1
    assert state.init(1, 0x5, 2, 0.0) == FAILED


# --------------------------------------------------------------------------- apply


def test_apply_reports_completed_trees_by_spout_task_in_one_batch():
    # Two trees of two spout tasks, each completing within one batch of inbox messages,
    # whatever the order: init before acks for one, after them for the other.
    rng = random.Random(11)
    first, second = Tree(rng, depth=2, fanout=2), Tree(rng, depth=2, fanout=2)
    state = AckerState()
    messages = [
        (ACK_INIT, [(first.root, first.init_xor, 3)]),
        (ACK_ACK, {first.root: first.acks[0]}),
        (ACK_ACK, dict([(second.root, reduce(xor, second.acks))])),
        (ACK_ACK, {first.root: reduce(xor, first.acks[1:])}),
        (ACK_INIT, [(second.root, second.init_xor, 5)]),
    ]
    assert state.apply(messages, 0.0) == ({3: [first.root], 5: [second.root]}, {})
    assert len(state) == 0


def test_apply_keeps_incomplete_trees_and_reports_nothing():
    tree = Tree(random.Random(12))
    state = AckerState()
    messages = [(ACK_INIT, [(tree.root, tree.init_xor, 3)]), (ACK_ACK, {tree.root: tree.acks[0]})]
    assert state.apply(messages, 0.0) == ({}, {})
    assert len(state) == 1
    assert state.apply([(ACK_ACK, {tree.root: reduce(xor, tree.acks[1:])})], 1.0) == ({3: [tree.root]}, {})


def test_apply_reports_failures_whether_the_fail_comes_before_or_after_the_init():
    state = AckerState()
    messages = [
        (ACK_INIT, [(1, 0xAB, 3)]),
        (ACK_FAIL, [1, 2]),  # root 2: no init yet, so no spout task to tell
        (ACK_INIT, [(2, 0xCD, 4)]),  # ... which its init names
    ]
    assert state.apply(messages, 0.0) == ({}, {3: [1], 4: [2]})
    assert len(state) == 0


def test_apply_refuses_a_message_that_is_not_acker_traffic():
    with pytest.raises(ValueError, match="cannot take a 'tree_done' message"):
        AckerState().apply([(TREE_DONE, [1])], 0.0)


# --------------------------------------------------------------------------- expiry


def test_expire_drops_only_old_entries():
    state = AckerState()
    state.init(1, 0x1, 9, 10.0)
    state.ack(2, 0x2, 11.0)       # ack before init
    state.fail(3, 12.0)           # fail before init
    state.init(4, 0x4, 9, 20.0)
    state.init(5, 0x5, 9, 30.0)
    assert state.expire(5.0) == 0
    assert len(state) == 5
    assert state.expire(20.0) == 3  # first seen strictly before the cutoff
    assert len(state) == 2
    # the survivors still work
    assert state.ack(4, 0x4, 31.0) == 9
    assert state.ack(5, 0x5, 31.0) == 9
    # the expired ones are forgotten: a late message starts a fresh entry
    assert state.ack(1, 0x1, 40.0) is None
    assert state.init(3, 0x3, 9, 40.0) == PENDING
    assert state.expire(100.0) == 2
    assert len(state) == 0


def test_expire_keeps_first_seen_time_not_last_update():
    state = AckerState()
    state.init(1, 0x3, 9, 10.0)
    state.ack(1, 0x1, 50.0)  # a later update does not refresh the entry's age
    state.init(2, 0x1, 9, 20.0)
    assert state.expire(15.0) == 1
    assert state.ack(2, 0x1, 60.0) == 9
    assert len(state) == 0


def test_expire_empty():
    assert AckerState().expire(1e9) == 0


# --------------------------------------------------------------------------- PendingTrees


def test_pending_trees_add_and_complete():
    pending = PendingTrees()
    pending.add(100, "a", 1.0)
    pending.add(200, ("b", 2), 2.0)
    assert len(pending) == 2
    assert pending.complete(200) == (("b", 2), 2.0)
    assert len(pending) == 1
    assert pending.complete(200) is None
    assert pending.complete(999) is None
    assert pending.complete(100) == ("a", 1.0)
    assert len(pending) == 0


def test_pending_trees_expired_in_emit_order():
    pending = PendingTrees()
    for i in range(10):
        pending.add(1000 + i, f"m{i}", float(i))
    assert list(pending.expired(0.0)) == []
    assert list(pending.expired(4.0)) == ["m0", "m1", "m2", "m3"]
    assert len(pending) == 6
    assert list(pending.expired(4.0)) == []
    assert pending.complete(1006) == ("m6", 6.0)
    assert list(pending.expired(100.0)) == ["m4", "m5", "m7", "m8", "m9"]
    assert len(pending) == 0


def test_pending_trees_complete_of_expired_root_returns_none():
    pending = PendingTrees()
    pending.add(1, "old", 1.0)
    pending.add(2, "young", 5.0)
    assert list(pending.expired(3.0)) == ["old"]
    assert pending.complete(1) is None  # the ack came after the timeout
    assert pending.complete(2) == ("young", 5.0)


def test_pending_trees_msg_id_none_and_duplicates():
    pending = PendingTrees()
    pending.add(1, None, 1.0)
    pending.add(2, None, 2.0)  # same message id, different roots (a replay)
    assert len(pending) == 2
    assert list(pending.expired(1.5)) == [None]
    assert pending.complete(2) == (None, 2.0)


def test_pending_trees_expired_boundary():
    pending = PendingTrees()
    pending.add(1, "a", 5.0)
    assert list(pending.expired(5.0)) == []  # emitted at the cutoff: still young
    assert list(pending.expired(5.000001)) == ["a"]


# --------------------------------------------------------------------------- ids


def test_new_id_is_64_bit_and_varies():
    ids = [new_id(64) for _ in range(1000)]
    assert all(0 <= i < 2**64 for i in ids)
    assert len(set(ids)) == 1000


def test_ack_all_completes_the_trees_of_a_batch_for_their_spout_tasks():
    state = AckerState()
    state.init(1, 0b011, 7, 0.0)  # completes with this batch
    state.init(2, 0b101, 8, 0.0)  # completes with this batch
    state.init(3, 0b110, 7, 0.0)  # stays pending
    state.fail(4, 0.0)  # failed before its init: acks change nothing
    done: dict[int, list[int]] = {}
    state.ack_all({1: 0b011, 2: 0b101, 3: 0b010, 4: 0b1, 5: 0b111}, 0.0, done)  # 5: ack before init
    assert done == {7: [1], 8: [2]}
    assert len(state) == 3  # 3 pending, 4 failed, 5 awaiting its init
    assert state.init(5, 0b111, 8, 0.0) == COMPLETED
    assert state.init(4, 0b1, 8, 0.0) == FAILED
