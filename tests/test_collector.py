"""The output collector: routing, anchoring and acker choice, without a running worker."""

from __future__ import annotations

from typing import Any

from streamflow import BasicBolt, TopologyBuilder
from streamflow.acking import PendingTrees
from streamflow.collector import SpoutOutputCollector
from streamflow.inbox import ACK_INIT
from streamflow.stats import TaskStats
from streamflow.testing import ListSpout


class Sink(BasicBolt):
    pass


class Recorder:
    """A transport that keeps what it was given."""

    loads = None

    def __init__(self) -> None:
        self.control: list[tuple[int, str, Any]] = []

    async def send_tuples(self, task: int, tuples: list[Any]) -> None:
        pass

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        self.control.append((task, kind, payload))


def test_a_spout_picks_roots_whose_acker_runs_in_its_worker() -> None:
    builder = TopologyBuilder("ackers")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("sink", Sink(), 2).shuffle_grouping("source")
    topology = builder.build({"topology.acker.executors": 4})
    layout = topology.task_layout()
    spout_task = layout["source"][0]
    local_acker = layout["__acker"][2]
    transport = Recorder()
    collector = SpoutOutputCollector(topology, "source", spout_task, transport, {spout_task, local_acker},
                                     TaskStats("source", spout_task), pending=PendingTrees())
    for i in range(200):
        collector.emit((i,), msg_id=i)
    collector._flush_control()
    assert {task for task, kind, _ in transport.control if kind == ACK_INIT} == {local_acker}
    roots = [root for _, _, inits in transport.control for root, _, _ in inits]
    assert len(set(roots)) == 200  # still distinct random ids
