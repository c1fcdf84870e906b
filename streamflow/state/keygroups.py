"""Key groups: the unit in which keyed state is stored, owned and moved.

A stateful component's keys fall into a fixed number of key groups (Flink's "max
parallelism", ``topology.state.key.groups``, 128 by default) by the same stable hash the
fields grouping routes by; each task owns a contiguous range of key groups. A rebalance
changes which task owns a range, never which group a key is in, so state moves with its
key groups and a key's tuples and its state always meet in one task.
"""

from __future__ import annotations

from typing import Any, Hashable
from zlib import crc32

from streamflow.groupings import key_bytes


def key_group(key: Hashable, groups: int) -> int:
    """The key group of ``key``, by the hash the fields grouping routes on: a tuple key
    is the values of several grouped fields, or one grouped field's tuple value, which
    hash alike."""
    return crc32(key_bytes(key)) % groups


def task_of_group(group: int, groups: int, tasks: int) -> int:
    """The index (0 .. tasks-1) of the task that owns ``group``: contiguous ranges."""
    return group * tasks // groups


def groups_of_task(index: int, groups: int, tasks: int) -> range:
    """The key groups that task ``index`` of ``tasks`` owns."""
    start = -(-index * groups // tasks)  # the first g with g * tasks // groups == index
    stop = -(-(index + 1) * groups // tasks)
    return range(start, stop)


def effective_groups(configured: Any, tasks: int) -> int:
    """Key groups a fields grouping spreads over: the configured count, or the task count
    when that is higher (a stateless bolt may have more tasks than key groups; a stateful
    one may not, as validation ensures). With as many groups as tasks this is plain
    ``hash % tasks``."""
    return max(int(configured), tasks)
