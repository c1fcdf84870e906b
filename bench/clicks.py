"""topologies/clicks.py on 2 workers with Redis state: clicks/s, and the workers' peak
memory with the aggregate window (a count per user and window) against the list window
(``-c clicks.aggregate=false``: the window keeps the clicks), on the same input.

    .venv/bin/python bench/clicks.py [--clicks 1000000] [--users 10000] [--minutes 10]
        [--only aggregate|list] [-c KEY=VALUE ...]

Starts what it needs and stops it at the end: ZooKeeper, a local cluster (one nimbus, 2
supervisors of one slot each, tests/cluster.py), a Redis server (tests/redis_server.py)
and, for each run, a Tansu broker of its own holding only the input: ``--clicks`` JSON
clicks ``{"user", "url", "ts"}`` of ``--users`` users over ``--minutes`` minutes of event
time (so a 60 s window holds ``clicks / minutes`` clicks), each up to 9 s behind the
highest ts before it (within the topology's 10 s lag), written round-robin to 2
partitions, each read by a spout task of its own (``-c spout.parallelism=2``, one per
worker): lateness is judged per spout task, in the order it reads. Each run keeps its
state in Redis under a namespace of its own; ``-c`` values go to both topologies.

Each run goes until the spout has acked every click (a click is acked when the
checkpoint that holds it in the window state commits, every second). Printed per run:

- clicks/s from the first click acked to the last, and from submission (acks from
  ``status``, polled every 0.25 s; its heartbeats are a second apart, so each end is
  up to a second late);
- the peak RSS of each worker process (``VmHWM`` in /proc), and their sum;
- the count bolt's state (keys and bytes, from ``status``), the clicks that went late,
  and whether the last count written per (user, window) is exact for every window the
  watermark passed (on a cluster the input never ends, so the last windows do not
  fire).

Nothing is asserted. This machine is shared: compare only figures of one invocation.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from streamflow.client import NimbusClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster, wait_for  # noqa: E402  (tests/cluster.py)
from kafka import KafkaBroker  # noqa: E402  (tests/kafka.py)
from kafka_wordcount import produce  # noqa: E402  (bench/, beside this file)
from redis_server import RedisServer  # noqa: E402  (tests/redis_server.py)
from topics import TopicReader  # noqa: E402  (tests/topics.py)
from zookeeper import ZooKeeperServer  # noqa: E402  (tests/zookeeper.py)

CLICKS = ROOT / "topologies" / "clicks.py"
T0 = 1_767_268_800_000
"""2026-01-01 12:00:00 UTC in epoch ms: a window's start."""
WINDOW, LAG, BEHIND = 60_000, 10_000, 9_000
PARTITIONS = 2


@dataclass
class Input:
    values: list[bytes]
    counts: Counter[tuple[str, int]]
    """(user, window start) -> clicks in that window."""
    fire_limit: int
    """Windows ending at or before this have fired once the spouts read everything: the
    least, over the partitions, of their highest ts, less the lag."""


def clicks(n: int, users: int, minutes: int, seed: int = 7) -> Input:
    rng = random.Random(seed)
    names = [f"user{i}" for i in range(users)]
    pages = [f"/page/{i}" for i in range(50)]
    values, counts = [], Counter[tuple[str, int]]()
    highest = [T0] * PARTITIONS
    for i in range(n):
        ts = max(T0, T0 + i * minutes * WINDOW // n - rng.randrange(BEHIND))
        user = rng.choice(names)
        values.append(orjson.dumps({"user": user, "url": rng.choice(pages), "ts": ts}))
        counts[user, ts - ts % WINDOW] += 1
        highest[i % PARTITIONS] = max(highest[i % PARTITIONS], ts)
    return Input(values, counts, min(highest) - LAG)


def peak_rss(pid: int) -> int | None:
    """The process's peak resident set size in bytes (VmHWM), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


@contextmanager
def fresh_broker(directory: Path, values: list[bytes]) -> Iterator[KafkaBroker]:
    """A broker of its own for one run, holding only the input (Tansu slows as it fills)."""
    broker = KafkaBroker(directory)
    broker.start()
    try:
        broker.create_topic("clicks", PARTITIONS)
        broker.create_topic("click-counts", PARTITIONS)
        broker.create_topic("clicks-late", 1)
        produce(broker.bootstrap, "clicks", values, PARTITIONS)
        yield broker
    finally:
        broker.stop()


def read_counts(bootstrap: str) -> tuple[dict[tuple[str, int], int], int]:
    """The last count written per (user, window start), and the records read."""
    reader = TopicReader(bootstrap, "click-counts")
    try:
        idle = 0
        while idle < 3:
            idle = 0 if reader.poll(0.5) else idle + 1
        last = {}
        for record in sorted(reader.records, key=lambda r: (r.partition, r.offset)):
            r = orjson.loads(record.value or b"")
            last[r["user"], r["window_start"]] = r["count"]
        return last, len(reader.records)
    finally:
        reader.close()


def run(cluster: Cluster, redis: RedisServer, workdir: Path, data: Input, aggregate: bool,
        extra: list[str]) -> None:
    label = "aggregate" if aggregate else "list"
    name = f"clicks-{label}"
    n = len(data.values)
    with fresh_broker(workdir / f"kafka-{label}", data.values) as broker:
        submitted = time.time()
        result = cluster.cli(
            "submit", str(CLICKS), "--name", name, "--workers", "2", "-c", f"kafka.bootstrap={broker.bootstrap}",
            "-c", "spout.parallelism=2", "-c", f"clicks.aggregate={str(aggregate).lower()}",
            "-c", "topology.state.provider=redis", "-c", f"topology.state.redis.url={redis.url}",
            "-c", f"topology.state.namespace=bench-{label}-{uuid.uuid4().hex[:8]}", *extra)
        assert result.returncode == 0, result.stderr
        nimbus = NimbusClient(cluster.url)  # in this process: a CLI per poll would cost a core's third

        def status() -> dict[str, Any]:
            return cast(dict[str, Any], nimbus.call("GET", "status", name))

        def acked() -> int:
            return int(status()["components"]["clicks"]["acked"])

        try:
            wait_for(lambda: acked() or None, 180, "the first click acked", every=0.25)
            first = time.time()
            wait_for(lambda: acked() >= n, 1800, "every click acked", every=0.25)
            last = time.time()
            time.sleep(2)  # the windows the last clicks closed fire; their counts go out
            workers = {w["port"]: w["pid"] for w in status()["workers"]}
            peaks = {port: peak_rss(pid) or 0 for port, pid in sorted(workers.items())}
            components = status()["components"]
            count = components["count"].get("metrics", {})
            spout = components["clicks"]
        finally:
            cluster.cli("kill", name, "--wait", "0")
            wait_for(lambda: not cluster.api("list")["topologies"] and not cluster.worker_pids(), 60,
                     f"{name} and its workers gone", every=0.2)
        written, records = read_counts(broker.bootstrap)
    due = {k: v for k, v in data.counts.items() if k[1] + WINDOW <= data.fire_limit}
    wrong = sum(1 for k, v in due.items() if written.get(k) != v)
    beyond = sum(1 for k in written if k not in data.counts)
    exact = "exact" if not wrong and not beyond else \
        f"NOT EXACT: {wrong:,} wrong or missing, {beyond:,} unexpected"
    print(f"{label:<9}: {n / (last - first):>8,.0f} clicks/s from the first ack to the last "
          f"({n / (last - submitted):,.0f} from submission)", flush=True)
    print(f"           peak RSS of the workers: {' + '.join(mib(p) for p in peaks.values())} = "
          f"{mib(sum(peaks.values()))}", flush=True)
    print(f"           count state: {count.get('state.keys', 0):,.0f} keys, {mib(count.get('state.bytes', 0))}; "
          f"late clicks {count.get('window.late', 0):,.0f}; spout failed {spout.get('failed', 0):,}; "
          f"{records:,} counts written, the last per (user, window) {exact} for the {len(due):,} "
          f"(user, window)s the watermark passed", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=10, help="event time the clicks span")
    parser.add_argument("--only", choices=["aggregate", "list"])
    parser.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                        help="topology config for every run")
    args = parser.parse_args()
    extra = [arg for pair in args.config for arg in ("-c", pair)]
    began = time.monotonic()
    data = clicks(args.clicks, args.users, args.minutes)
    print(f"{args.clicks:,} clicks of {args.users:,} users over {args.minutes} minutes of event time "
          f"({args.clicks // args.minutes:,} clicks a window) on {PARTITIONS} partitions; 2 workers, "
          f"-c spout.parallelism=2, Redis state", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        zookeeper = ZooKeeperServer(workdir / "zookeeper")
        cluster = redis = None
        try:
            zookeeper.start()
            cluster = Cluster(zookeeper.hosts, "/bench-clicks", workdir / "cluster", nimbus_count=1,
                              supervisors=2, slots=1).start()
            cluster.env["STREAMFLOW_LOG_LEVEL"] = "WARNING"  # for CLI calls: no INFO lines
            redis = RedisServer(workdir / "redis").start()
            for aggregate in (True, False):
                if args.only in (None, "aggregate" if aggregate else "list"):
                    run(cluster, redis, workdir, data, aggregate, extra)
        except KeyboardInterrupt:
            print("interrupted; everything is stopped", file=sys.stderr)
            return 130
        finally:
            if cluster is not None:
                cluster.stop()
            if redis is not None:
                redis.stop()
            zookeeper.stop()
            print(f"total {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
