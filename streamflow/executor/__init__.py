"""Executors: the loop that runs one task, one module per kind of task.

:mod:`~streamflow.executor.base` holds what they share, :mod:`~streamflow.executor.spout`,
:mod:`~streamflow.executor.bolt` and :mod:`~streamflow.executor.acker` one kind each (the
checkpoint coordinator's is :mod:`streamflow.coordinator`).
"""

from streamflow.executor.acker import AckerExecutor
from streamflow.executor.base import ComponentExecutor, Executor, TaskFailed
from streamflow.executor.bolt import MAX_TUPLES_PER_TURN, BoltExecutor
from streamflow.executor.spout import SpoutExecutor

__all__ = ["AckerExecutor", "BoltExecutor", "ComponentExecutor", "Executor", "MAX_TUPLES_PER_TURN",
           "SpoutExecutor", "TaskFailed"]
