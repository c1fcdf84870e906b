"""Checkpoints, as spout and bolt tasks take part in them (the coordinator is
:mod:`streamflow.coordinator`).

Storm 2's protocol, with Flink's aligned barriers so that state is exact:

- **prepare**: the coordinator tells every spout task; each seals what it emitted so far
  as the checkpoint's (noting its :meth:`~streamflow.components.SpoutBase.position`) and
  sends a barrier to every task downstream, behind the tuples it sent before. A bolt
  that got the barrier from one input holds that input's later tuples until the barrier
  came in on all of them (alignment), so its state then reflects exactly the records
  emitted before the spouts' barriers. It waits until it has acked every tuple it took
  before the barrier (a sink: until the server confirmed them), saves its state's
  changes as the checkpoint's pending changes, forwards the barrier and reports done.
- **commit**: once every task reported, the coordinator writes the checkpoint record;
  stateful bolts make their pending changes their data, and spouts ack every tuple
  emitted before their barrier: a Kafka offset is committed only once the state that
  absorbed its record is durable. That is how a tree completes here, rather than by the
  ackers' XOR of its edges: the barrier passed every task behind the work it acked, so
  no edge is tracked (tuples carry only their roots, see :mod:`streamflow.collector`).
- **rollback**: after a failure (a tuple failed, a tree timed out, a task restarted),
  the coordinator sends a rollback the same way. Spouts forget what they emitted since
  the last committed checkpoint and seek back to its positions (or fail those tuples,
  for spouts without positions); bolts drop what comes in ahead of the rollback barrier
  on each input, then restore their state as the last committed checkpoint left it.
  The same rollback starts every run: it is how a task gets its state.

A task that has not yet been through a rollback (just started) drops the tuples it
gets: they were sent before its restart was noticed and will be replayed.
"""

from streamflow.checkpoint.bolt import BoltCheckpoints
from streamflow.checkpoint.party import COMMIT, DRAINED, END, FAILED, FINISHED, PREPARE, ROLLBACK, STARTED
from streamflow.checkpoint.spout import SpoutCheckpoints

__all__ = ["BoltCheckpoints", "COMMIT", "DRAINED", "END", "FAILED", "FINISHED", "PREPARE", "ROLLBACK",
           "STARTED", "SpoutCheckpoints"]
