"""How task messages reach their inbox: in process (local mode) or over TCP (cluster).

Executors only see :class:`Transport`; which implementation carries a message is the
worker's choice, so tuples, groupings and acking run the same code in both modes.
"""

from streamflow.transport.base import Transport
from streamflow.transport.inproc import InProcessTransport

__all__ = ["Transport", "InProcessTransport"]
