"""KafkaBolt: writes tuples to Kafka and acks each only once the broker has it."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping, Sequence

from confluent_kafka import KafkaError, Producer
from streamflow_connectors.kafka.client import ClientErrors, KafkaClientError, blocking, settings
from streamflow_connectors.kafka.records import encoder

from streamflow import Batch, Bolt, TaskContext, Tuple
from streamflow.tuples import Anchors, Origin

Write = Callable[[Sequence[Sequence[Any]], Callable[..., None], list[tuple[int, Exception]]], int]
"""Hands the records of a stream's rows to ``produce(topic, value, key)``, appending
(row index, exception) for each row it could not hand over, and returns the bytes of
keys and values handed over (made per stream by ``KafkaBolt._write_of``)."""

DELIVERY_POLL = 0.001
"""Seconds between looks for delivery reports while writes await them, once the broker
may have answered (``linger_ms`` after the writer took its first record): about what a
broker on the same network takes to acknowledge a write."""

POLL_ALL_EVERY = 10
"""Every this many looks, every writer awaiting answers is polled, not only the oldest
(see ``KafkaBolt._settle``)."""

OPEN_WRITER_RECORDS = 20_000
"""Records a writer takes, over several batches while every other writer awaits the
broker, before the sink waits for a writer to be free (librdkafka holds at most
100,000 records per producer by default). Acking bounds them sooner: a record's tuple
stays pending at its spout until the broker has it."""


class _Writer:
    """A producer and the batch it writes. The batch is answered in full once the
    producer holds no write: with one batch per producer, that needs no delivery report
    per write (librdkafka reports only failed writes, to ``failed``)."""

    __slots__ = ("producer", "anchors", "rows", "bytes", "failed", "answer_at")

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.anchors: list[list[Anchors]] = []
        """The anchors of the rows written, a list per batch they came in (less any refused
        row): all that acking or failing them needs. Their values are let go once written."""
        self.rows = 0
        self.bytes = 0
        self.answer_at = 0.0
        """The event loop's time before which the broker cannot have answered the batch:
        librdkafka holds its first record for ``linger_ms``."""
        self.failed: list[tuple[KafkaError, Any]] = []
        self.producer = Producer({**config, "delivery.report.only.error": True, "on_delivery": self._failed})

    def _failed(self, error: KafkaError, message: Any) -> None:
        self.failed.append((error, message))


class KafkaBolt(Bolt):
    """Produces one record per input tuple, with acks=all.

    The topic is fixed (``topic``) or taken per tuple from ``topic_field``; the key from
    ``key_field`` (as UTF-8 text, or bytes as they are); the value is ``value_field`` or,
    by default, the whole tuple as a dict, encoded as ``value_format`` (json, str, or
    bytes: bytes as they are, text as UTF-8). ``config`` adds librdkafka settings
    (``security.protocol``, ``sasl.*``, ``compression.type``...).

    A tuple is acked only once the broker has acknowledged its write, and failed if the
    write failed, so that its spout replays it. The writes of a batch share librdkafka's
    batching, and the batch is answered once the broker has answered all of them. Each of
    ``writers`` producers writes one batch at a time, so a batch is answered when its
    producer holds no write, and librdkafka need report only the writes that failed.
    If any write of a producer's batch failed, every tuple of that batch fails and is
    replayed, those written too (at-least-once: they are written again). A report names
    a record, not its tuple, and the sink keeps only the tuples' anchors until the broker
    answers, not their values: holding every value written for the few batches that
    fail cost 170 ns a row in freeing them late, out of the CPU's cache (3.5% of the
    Kafka word count's time).
    It takes its input as columns (``process_columns``), in a plain function, not a
    coroutine, looping over the batch with its lookups done once: a coroutine or a Tuple
    per record costs about as much as the write itself.

    Order: with one writer (the default), ``end_batch`` waits for the broker's answers
    before the next batch, so a batch's records land after those of the batch before.
    Within a batch, librdkafka sends a partition several requests at once and retries one
    that failed (after a leader change, say), which then lands after those sent later.
    For a partition's records in the order of their tuples even then, add
    ``"enable.idempotence": True`` to ``config`` (librdkafka then retries in order) or
    ``"max.in.flight.requests.per.connection": 1`` (one request at a time per broker:
    slower the longer a broker takes to answer). Idempotence is off by default, as it
    costs throughput (bench/kafka_wordcount.py gives the figures). No setting orders a
    replay: a tuple whose write failed is written again when its spout replays it, after
    the tuples that followed it. With more writers, a batch can overtake the one before it
    (records of one key from two batches may land out of order), and the sink never waits
    for the broker: while the other writers await answers, the last one keeps taking
    batches, up to :data:`OPEN_WRITER_RECORDS`, and goes to the broker as soon as another
    is free.

    ``linger_ms`` is short by default, as with one writer every batch's writes wait for
    it; 0 sends a request per record, which a broker cannot keep up with. With several
    writers nothing waits for it, and a longer one makes fewer, larger requests. A write
    the broker has not acknowledged within ``delivery_timeout`` seconds fails (an
    unreachable broker does not stop the task: its tuples fail, the error shows in
    ``status``, and librdkafka reconnects by itself).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str | None = None,
        *,
        topic_field: str | None = None,
        key_field: str | None = None,
        value_field: str | None = None,
        fields: Sequence[str] | None = None,
        value_format: str = "json",
        client_id: str | None = None,
        linger_ms: float = 1,
        delivery_timeout: float = 10.0,
        writers: int = 1,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if (topic is None) == (topic_field is None):
            raise ValueError("KafkaBolt needs a topic or a topic_field, not both")
        encoder(value_format)  # refuse an unknown format now, not in a worker
        self.bootstrap_servers = bootstrap_servers
        self.topic, self.topic_field = topic, topic_field
        self.key_field, self.value_field = key_field, value_field
        self.fields = tuple(fields) if fields else None
        self.value_format = value_format
        self.client_id = client_id
        # "not >=" refuses NaN too. librdkafka reads a message.timeout.ms of 0 as never.
        if not delivery_timeout >= 0.001:
            raise ValueError(f"KafkaBolt needs a delivery_timeout of at least 0.001 s, not {delivery_timeout}")
        if not linger_ms >= 0:  # librdkafka would refuse it, but only in the worker
            raise ValueError(f"KafkaBolt needs a linger_ms of 0 or more, not {linger_ms}")
        self.linger_ms, self.delivery_timeout = linger_ms, delivery_timeout
        if writers < 1:
            raise ValueError("KafkaBolt needs at least one writer")
        self.writers = writers
        self.client_config = dict(config or {})

    async def prepare(self, config: Mapping[str, Any], context: TaskContext) -> None:
        self._encode = encoder(self.value_format)
        client_id = self.client_id or f"{context.topology}-{context.component}"
        self._errors = ClientErrors(self.bootstrap_servers)
        config = settings(self.bootstrap_servers, client_id, self._errors, self.client_config,
                          **{"acks": "all", "linger.ms": self.linger_ms,
                             "message.timeout.ms": int(self.delivery_timeout * 1000)})
        self._free = [_Writer(config) for _ in range(self.writers)]
        self._writing: list[_Writer] = []
        """Writers whose batch awaits the broker's answers, oldest first."""
        self._writer: _Writer | None = None
        """The writer taking records (one batch, or several while the others await answers)."""
        self._answers: asyncio.Task[None] | None = None
        """Polls the writing producers and settles their batches: the one poller."""
        self._freed = asyncio.Event()
        """Set when a writer is freed, for ``end_batch`` waiting on one."""
        self._looks = 0
        """Looks for answers so far (every :data:`POLL_ALL_EVERY`-th polls every writer)."""
        self._failures: list[tuple[KafkaError, Any]] = []
        self._refused: list[Exception] = []
        """Why tuples of the batch could not be handed to librdkafka (they were failed)."""
        self._writes: dict[Origin, Write] = {}
        self.produced = self.produced_bytes = self.delivery_errors = 0

    def process(self, tup: Tuple) -> None:
        self.process_columns(Batch(tup.origin, [tup.values], [tup.anchors]))

    def process_columns(self, batch: Batch) -> None:
        """Hand each row's record to the writer taking records. A row whose record cannot
        be built or handed over (a value its format refuses, librdkafka's queue full) is
        failed alone, and ``end_batch`` raises for it once. Ticks write nothing."""
        if batch.is_tick():
            return
        writer = self._writer
        if writer is None:  # the first batch since a writer was sent: one is free
            writer = self._writer = self._free.pop()
            writer.answer_at = asyncio.get_running_loop().time() + self.linger_ms / 1000
        refused: list[tuple[int, Exception]] = []
        try:
            write = self._writes.get(batch.origin) or self._write_of(batch.origin)
        except KeyError as exc:  # the stream lacks a field the sink reads
            refused = [(i, exc) for i in range(len(batch))]
        else:
            writer.bytes += write(batch.values, writer.producer.produce, refused)
        anchors = self._refuse(batch.anchors, refused) if refused else batch.anchors
        writer.anchors.append(anchors)
        writer.rows += len(anchors)

    def _refuse(self, anchors: list[Anchors], refused: list[tuple[int, Exception]]) -> list[Anchors]:
        """Fail the rows that were not handed over, keep why for ``end_batch``, and return
        the anchors of the others."""
        self.fail_rows([anchors[i] for i, _ in refused])
        self._refused.extend(exc for _, exc in refused)
        gone = {i for i, _ in refused}
        return [row for i, row in enumerate(anchors) if i not in gone]

    def _write_of(self, origin: Origin) -> Write:
        """How the rows of one stream are written, as one small function made for the
        stream: this loop runs for every record written, so field positions are looked
        up once, the record is built inline (no call per row), and the value's dict is a
        literal with its keys written in (no ``dict(zip(names, values))`` per record).
        Raises KeyError if the stream lacks a field the sink reads."""
        def at(field: str) -> str:
            try:
                return f"v[{origin.fields.index(field)}]"
            except ValueError:
                raise KeyError(f"stream {origin.source}:{origin.stream} has no field {field!r} "
                               f"(fields: {', '.join(origin.fields)})") from None

        topic = "topic" if self.topic_field is None else f"str({at(self.topic_field)})"
        # A text key, the common case, is encoded inline: a call per record costs.
        key = "None" if self.key_field is None else \
            f"(k.encode() if (k := {at(self.key_field)}).__class__ is str else key_bytes(k))"
        if self.value_field is not None:
            value = at(self.value_field)
        else:
            names = self.fields if self.fields is not None else origin.fields
            value = "{" + ", ".join(f"{name!r}: {at(name)}" for name in names) + "}"
        if self.value_format == "bytes":  # bytes and text inline too, the rest to encode
            value = f"(x if (x := {value}).__class__ is bytes else x.encode() if x.__class__ is str " \
                    "else encode(x))"
        else:
            value = f"encode({value})"
        size = "len(x or b'')" + ("" if self.key_field is None else " + len(k or b'')")
        source = (
            "def write(rows, produce, refused):\n"
            "    size = 0\n"
            "    for i, v in enumerate(rows):\n"
            "        try:\n"
            f"            k = {key}\n"
            f"            x = {value}\n"
            f"            produce({topic}, x, k)\n"
            "        except Exception as exc:\n"
            "            refused.append((i, exc))\n"
            "        else:\n"
            f"            size += {size}\n"
            "    return size\n")
        scope = {"topic": self.topic, "key_bytes": _key_bytes, "encode": self._encode}
        exec(source, scope)
        write: Write = scope["write"]
        self._writes[origin] = write
        return write

    async def end_batch(self) -> None:
        """Send the batch's writer to the broker when another writer can take the next
        batch; otherwise let it take the next batch too, unless it is the only writer or
        holds :data:`OPEN_WRITER_RECORDS`, in which case wait until a writer is free.
        ``process_columns`` never waits, so the wait is here, once per batch, not a coroutine
        per tuple. Raises once for the tuples the batch could not hand over, and once for
        writes that failed since the last batch (their tuples were failed)."""
        writer = self._writer
        if writer is not None and (self._free or not self._writing or writer.rows >= OPEN_WRITER_RECORDS):
            self._send(writer)
            while not self._free:  # every writer awaits answers: the answer task frees one
                self._freed.clear()
                await self._freed.wait()
        if self._refused:
            refused, self._refused = self._refused, []
            raise KafkaClientError(f"{len(refused)} tuples could not be written to Kafka (failed); the last: "
                                   f"{type(refused[-1]).__name__}: {refused[-1]}")
        if self._failures:
            failed, self._failures = self._failures, []
            client = f"; last client error: {self._errors.last.str()}" if self._errors.last is not None else ""
            self._errors.last = None
            raise KafkaClientError(f"Kafka at {self.bootstrap_servers}: {len(failed)} writes failed: "
                                   f"{failed[-1][0].str()}{client}")

    def _send(self, writer: _Writer) -> None:
        """Stop ``writer`` taking records: its writes now only await the broker's answers."""
        self._writer = None
        self._writing.append(writer)
        if self._answers is None or self._answers.done():
            self._answers = asyncio.create_task(self._await_answers())

    async def _await_answers(self) -> None:
        """Settle batches as the broker answers them, sending their acks and fails at once
        (the executor would send them only with the next batch)."""
        loop = asyncio.get_running_loop()
        while self._writing:
            await asyncio.sleep(max(self._writing[0].answer_at - loop.time(), DELIVERY_POLL))
            if self._settle():
                self.flush_acks()

    def _settle(self) -> bool:
        """Ack (or fail) the tuples of each batch whose writes are all answered, and free
        its writer; then send the writer still taking batches, if any, as the next batch
        has a free writer. Runs between the sink's batches (the answer task runs only
        while the executor awaits). Returns whether a batch was answered.

        Only the oldest batch is polled until it is answered: the broker answers batches
        about in the order they were sent, and each poll costs the event loop's time.
        Every :data:`POLL_ALL_EVERY` looks, all are: a batch that waits on a broker that
        is down does not hold back the answers of batches written to the others."""
        self._looks += 1
        everyone = self._looks % POLL_ALL_EVERY == 0
        answered = []
        for writer in self._writing:
            writer.producer.poll(0)
            if not len(writer.producer):
                answered.append(writer)
            elif not everyone:
                break
        for writer in answered:
            self._writing.remove(writer)
            if writer.failed:
                self._answer_failed(writer)
            else:
                for anchors in writer.anchors:
                    self.ack_rows(anchors)
                self.produced += writer.rows
                self.produced_bytes += writer.bytes
            writer.anchors, writer.rows, writer.bytes, writer.failed = [], 0, 0, []
            self._free.append(writer)
        if answered:
            if self._writer is not None:
                self._send(self._writer)
            self._freed.set()
        return bool(answered)

    def _answer_failed(self, writer: _Writer) -> None:
        """Fail every tuple of a batch some of whose writes failed (see the class), and
        keep the failures for ``end_batch`` to raise."""
        self._failures.extend(writer.failed)
        for anchors in writer.anchors:
            self.fail_rows(anchors)
        self.delivery_errors += len(writer.failed)
        self.produced += writer.rows - len(writer.failed)
        self.produced_bytes += writer.bytes - sum(len(m.key() or b"") + len(m.value() or b"")
                                                  for _, m in writer.failed)

    def metrics(self) -> dict[str, float]:
        return {"kafka.produced_records": self.produced, "kafka.produced_bytes": self.produced_bytes,
                "kafka.delivery_errors": self.delivery_errors}

    async def cleanup(self) -> None:
        """Close the producers. Writes still unanswered (the task stopped mid-batch) are
        dropped: their tuples are not acked, so their spouts replay them."""
        if self._answers is not None:
            self._answers.cancel()
        for writer in self._free + self._writing + ([self._writer] if self._writer else []):
            writer.producer.purge()
            writer.producer.poll(0)
            await blocking(writer.producer.close)


def _key_bytes(key: Any) -> bytes | None:
    """A record key: text as UTF-8, bytes as they are, anything else as its text."""
    if key is None or isinstance(key, bytes):
        return key
    return (key if isinstance(key, str) else str(key)).encode("utf-8")
