"""Storm's multilang protocol: components in any language, and streamparse projects.

:class:`ShellBolt` and :class:`ShellSpout` run a component as a process per task that
speaks Storm's multilang protocol on its stdin and stdout (JSON with ``end`` lines, or
msgpack), as Storm's ``ShellBolt``/``ShellSpout`` do, with no JVM: a pystorm or
streamparse component, a Node.js bolt on Storm's ``storm.js``, anything that speaks it.
:mod:`streamflow.multilang.streamparse` turns a streamparse project's ``Topology`` class
into a streamflow topology of such components; the loader calls it.

Modules: ``protocol.py`` (the wire format, pure), ``process.py`` (one process: start,
read, write, stop), ``shell.py`` (what both kinds share: handshake, supervision,
restarts), ``bolt.py``, ``spout.py``, ``streamparse.py``, ``virtualenvs.py`` (a
streamparse project's per-topology virtualenvs, built by a supervisor that allows them).
"""

from streamflow.multilang.bolt import ShellBolt
from streamflow.multilang.spout import ShellSpout

__all__ = ["ShellBolt", "ShellSpout"]
