from collections import Counter

from streamparse import Bolt, Spout, Stream

SENTENCES = ["the quick brown fox", "jumps over the lazy dog", "and the dog sleeps"] * 100


class Sentences(Spout):
    """Emits each sentence once with its index as id; replays failed ones."""

    outputs = ["sentence"]

    def initialize(self, conf, context):
        self.todo = list(range(len(SENTENCES)))
        self.acked = 0

    def next_tuple(self):
        if self.todo:
            i = self.todo.pop()
            self.emit([SENTENCES[i]], tup_id=i)

    def ack(self, tup_id):
        self.acked += 1
        if self.acked == len(SENTENCES):
            self.logger.info("all %d sentences acked", self.acked)

    def fail(self, tup_id):
        self.todo.append(tup_id)


class Router(Bolt):
    """Splits sentences: each word on stream 'words', and 'the' directly to the first
    tally task on stream 'direct'."""

    outputs = [Stream(["word"], "words"), Stream(["word"], "direct", direct=True)]

    def initialize(self, conf, context):
        tasks = context["task->component"]
        self.first_tally = min(int(task) for task, name in tasks.items() if name == "tally")

    def process(self, tup):
        for word in tup.values.sentence.split():
            self.emit([word], stream="words")
            if word == "the":
                self.emit([word], stream="direct", direct_task=self.first_tally)


class Tally(Bolt):
    """Counts words per stream; logs its counts on each tick."""

    outputs = []

    def initialize(self, conf, context):
        self.counts = Counter()

    def process(self, tup):
        self.counts[tup.stream] += 1

    def process_tick(self, tup):
        self.logger.info("tally task=%s words=%d direct=%d", self.task_id,
                         self.counts["words"], self.counts["direct"])
