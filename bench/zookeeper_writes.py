"""What a streamflow cluster writes to ZooKeeper: transactions and transaction-log bytes
per worker-hour, the figure deploy/README.md sizes ZooKeeper's volume and autopurge from.

    .venv/bin/python bench/zookeeper_writes.py [--workers 2] [--window 60] [--repeat 3]
        [--idle 30] [-c KEY=VALUE ...] [--keep]

Starts its own cluster on 127.0.0.1 (one ZooKeeper from tests/zookeeper.py; one nimbus and
one supervisor of ``--workers`` slots from tests/cluster.py), then:

1. Idle: for ``--idle`` seconds with no topology, what nimbus and the supervisor write on
   their own (their sessions' pings are not transactions, so this is near zero).
2. Running: submits ``topologies/wordcount.py`` (1 spout, 2 split, 2 count and 1 top-words
   task, one acker per worker and the checkpoint coordinator) on ``--workers`` workers,
   waits until every worker has sent a heartbeat, and measures ``--repeat`` windows of
   ``--window`` seconds one after the other. ``-c`` values go to the topology (e.g.
   ``-c split.parallelism=8 -c count.parallelism=8`` for more tasks per worker).

Each window reads, at its start and end, the server's last zxid (``srvr``: every write,
session creation or close is one transaction and increments it) and the bytes of the
records in its transaction logs (``version-2/log.*``, parsed record by record, since
ZooKeeper preallocates the files with zeros: their size on disk says nothing until it is
full). It prints per window, and the median over windows, transactions/s and bytes/s,
and per worker-hour (the running rate less the idle rate, over ``--workers``); since a
heartbeat carries every task's counters, also bytes per task per second, to scale the
figure to topologies with more tasks per worker. It also
prints ``mntr``'s ``zk_approximate_data_size`` after submission: the size of a snapshot,
which holds the code package (up to 32 MiB per topology) besides the heartbeats.

The wordcount reads topologies/sample.txt, which it finishes in the first second; the
workers go on heartbeating for as long as the topology runs, with every task's counters
and latency histograms, whose size does not depend on how fast tuples flow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster, wait_for  # noqa: E402  (tests/cluster.py)
from zookeeper import ZooKeeperServer  # noqa: E402  (tests/zookeeper.py)

TOPOLOGY = ROOT / "topologies" / "wordcount.py"
HEADER = struct.Struct(">iiq")  # magic "ZKLG", format version, database id
RECORD = struct.Struct(">qi")  # checksum, length of the transaction that follows


def txn_log_bytes(path: Path) -> int:
    """Bytes of the transaction records in one ZooKeeper transaction log: each is its
    checksum and length, the transaction, and an end-of-record byte. The file is
    preallocated with zeros past the last record, where a length of 0 ends the log."""
    data = path.read_bytes()
    offset, total = HEADER.size, 0
    while offset + RECORD.size <= len(data):
        _, length = RECORD.unpack_from(data, offset)
        if length <= 0 or offset + RECORD.size + length + 1 > len(data):
            break
        size = RECORD.size + length + 1
        total += size
        offset += size
    return total


@dataclass(frozen=True)
class Reading:
    at: float
    zxid: int
    log_bytes: int


@dataclass(frozen=True)
class Rate:
    txns_per_s: float
    bytes_per_s: float


def rate(a: Reading, b: Reading) -> Rate:
    seconds = b.at - a.at
    return Rate((b.zxid - a.zxid) / seconds, (b.log_bytes - a.log_bytes) / seconds)


def read(server: ZooKeeperServer) -> Reading:
    """The server's zxid (the counter of the current epoch: its low 32 bits) and the bytes
    of every transaction record in its logs, now."""
    srvr = dict(line.split(": ", 1) for line in server.command("srvr").splitlines() if ": " in line)
    logs = (server.data_dir / "version-2").glob("log.*")
    return Reading(time.monotonic(), int(srvr["Zxid"], 16) & 0xFFFFFFFF, sum(txn_log_bytes(p) for p in logs))


def measure(server: ZooKeeperServer, seconds: float) -> Rate:
    start = read(server)
    time.sleep(seconds)
    return rate(start, read(server))


def data_size(server: ZooKeeperServer) -> int:
    mntr = dict(line.split("\t", 1) for line in server.command("mntr").splitlines() if "\t" in line)
    return int(mntr["zk_approximate_data_size"])


def show(label: str, r: Rate) -> None:
    print(f"  {label:<12} {r.txns_per_s:8.2f} txn/s {r.bytes_per_s / 1024:9.2f} KiB/s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one supervisor's slots)")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per measured window")
    parser.add_argument("--repeat", type=int, default=3, help="windows with the topology running")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds measured with no topology")
    parser.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                        help="config value for the topology")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="zk-writes-"))
    server = ZooKeeperServer(workdir / "zookeeper")
    cluster: Cluster | None = None
    try:
        server.start()
        cluster = Cluster(server.hosts, f"/streamflow-zkbench-{os.getpid()}", workdir / "cluster",
                          nimbus_count=1, supervisors=1, slots=args.workers).start()
        cluster.env["STREAMFLOW_LOG_LEVEL"] = "WARNING"
        print(f"cluster: ZooKeeper {server.hosts}, 1 nimbus, 1 supervisor x {args.workers} slots", flush=True)
        idle = measure(server, args.idle)
        show("idle", idle)

        config = [x for kv in args.config for x in ("-c", kv)]
        described = cluster.cli("describe", str(TOPOLOGY), *config, "-c", f"topology.workers={args.workers}")
        tasks = sum(len(ids) for ids in json.loads(described.stdout)["tasks"].values())
        submitted = cluster.cli("submit", str(TOPOLOGY), "--name", "wc", "--workers", str(args.workers), *config)
        if submitted.returncode != 0:
            raise RuntimeError(f"submit failed: {submitted.stderr.strip()}")
        wait_for(lambda: sum(w["alive"] for w in cluster.status("wc")["workers"]) == args.workers,
                 120, f"{args.workers} workers heartbeating")
        print(f"  snapshot size (zk_approximate_data_size) with wordcount submitted: "
              f"{data_size(server) / 1024:.0f} KiB", flush=True)
        windows = []
        for i in range(args.repeat):
            windows.append(measure(server, args.window))
            show(f"running #{i + 1}", windows[-1])
        txns = statistics.median(w.txns_per_s for w in windows)
        size = statistics.median(w.bytes_per_s for w in windows)
        per_txn = size / txns if txns else 0.0
        per_worker_h = [(txns - idle.txns_per_s) * 3600 / args.workers,
                        (size - idle.bytes_per_s) * 3600 / args.workers]
        print(f"median of {len(windows)} windows: {txns:.2f} txn/s, {size / 1024:.2f} KiB/s, "
              f"{per_txn:.0f} bytes/txn")
        print(f"per worker-hour (running less idle, / {args.workers}): {per_worker_h[0]:,.0f} transactions, "
              f"{per_worker_h[1] / 2**20:.1f} MiB of transaction log")
        print(f"{tasks} tasks ({tasks / args.workers:g} per worker): "
              f"{per_worker_h[1] / 3600 / (tasks / args.workers):.0f} bytes per task per second")
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        server.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
