"""A topology with a cycle (a -> b -> a): refused by validation wherever it is checked."""
from streamflow import BasicBolt, TopologyBuilder
from streamflow.testing import ListSpout


class Echo(BasicBolt):
    outputs = ["n"]
    def process(self, tup):
        self.emit(tup.values)

def build(config):
    b = TopologyBuilder("cyclic")
    b.set_spout("source", ListSpout([(1,)], ["n"]))
    b.set_bolt("a", Echo()).shuffle_grouping("source").shuffle_grouping("b")
    b.set_bolt("b", Echo()).shuffle_grouping("a")
    return b.build()
