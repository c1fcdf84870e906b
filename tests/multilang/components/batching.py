"""A pystorm BatchingBolt for the multilang tests: holds every tuple until a tick tuple,
then emits one count per word and acks the batch."""

from pystorm import BatchingBolt


class CountBatch(BatchingBolt):
    ticks_between_batches = 1

    def group_key(self, tup):
        return tup.values[0]

    def process_batch(self, key, tups):
        self.emit([key, len(tups)])


if __name__ == "__main__":
    CountBatch().run()
