"""streamflow: real-time stream processing in the model of Apache Storm.

Write spouts and bolts, wire them with a :class:`TopologyBuilder`, and run the topology
in this process with :func:`run_local` (or ``streamflow local FILE``).
"""

from streamflow.components import (
    AsyncBasicBolt,
    AsyncBolt,
    AsyncSpout,
    AsyncStatefulBolt,
    BasicBolt,
    Bolt,
    BoltBase,
    Spout,
    SpoutBase,
    Stateful,
    StatefulBolt,
    TaskContext,
)
from streamflow.errors import ConfigError, LoadError, StreamflowError, TopologyError
from streamflow.groupings import stable_hash
from streamflow.local import LocalRun, run_local
from streamflow.state import KeyValueState, StateCodecError
from streamflow.topology import Topology, TopologyBuilder
from streamflow.tuples import DEFAULT_STREAM, Batch, Tuple

__version__ = "0.1.0"

__all__ = [
    "AsyncBasicBolt", "AsyncBolt", "AsyncSpout", "AsyncStatefulBolt", "BasicBolt", "Batch", "Bolt", "BoltBase",
    "ConfigError", "DEFAULT_STREAM", "KeyValueState", "LoadError", "LocalRun", "Spout", "SpoutBase",
    "StateCodecError", "Stateful", "StatefulBolt", "StreamflowError", "TaskContext", "Topology",
    "TopologyBuilder", "TopologyError", "Tuple", "run_local", "stable_hash",
]
