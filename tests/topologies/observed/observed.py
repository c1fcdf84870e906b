"""A topology to watch: a throttled endless spout that replays what fails, and a bolt
that fails every 50th number the first time it sees it and logs each batch at DEBUG."""

import logging
import time

from streamflow import BasicBolt, Spout, TopologyBuilder

log = logging.getLogger("observed")


class Numbers(Spout):
    """Emits 0, 1, 2, ... at about ``rate`` per second; re-emits failed numbers."""

    outputs = ["n"]

    def __init__(self, rate):
        self.rate = rate

    def open(self, config, context):
        self.next, self.started, self.failed = 0, time.monotonic(), []

    def next_tuple(self):
        if self.failed:
            n = self.failed.pop()
        elif self.next < (time.monotonic() - self.started) * self.rate:
            n, self.next = self.next, self.next + 1
        else:
            return
        self.emit((n,), msg_id=n)

    def fail(self, msg_id):
        self.failed.append(msg_id)


class Check(BasicBolt):
    outputs = ["n"]

    def prepare(self, config, context):
        self.seen_failing = set()
        self.batch = 0

    def process(self, tup):
        n = tup["n"]
        if n % 50 == 0 and n not in self.seen_failing:
            self.seen_failing.add(n)
            raise ValueError(f"{n} is a multiple of 50")
        self.batch += 1

    def end_batch(self):
        log.debug("checked a batch of %d", self.batch)
        self.batch = 0


def build(config):
    b = TopologyBuilder("observed")
    b.set_spout("numbers", Numbers(config.get("rate", 500)))
    b.set_bolt("check", Check(), 2).fields_grouping("numbers", ["n"])
    return b.build()
