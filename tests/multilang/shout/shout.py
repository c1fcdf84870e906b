"""A topology of the native API with a multilang bolt: lines -> shout (a pystorm bolt in
shout_bolt.py, run by the Python that runs streamflow) -> JSON lines.

    streamflow local shout.py -c input.path=IN -c output.path=OUT
"""

import sys

from streamflow_connectors.files import JsonLinesSink, LineSpout

from streamflow import TopologyBuilder
from streamflow.multilang import ShellBolt


def build(config):
    builder = TopologyBuilder("shout")
    builder.set_spout("lines", LineSpout(config["input.path"]))
    shout = ShellBolt(sys.executable, "shout_bolt.py", outputs=["line", "pid"])  # run in this directory
    builder.set_bolt("shout", shout, 2).shuffle_grouping("lines")
    builder.set_bolt("sink", JsonLinesSink(config["output.path"])).shuffle_grouping("shout")
    return builder.build()
