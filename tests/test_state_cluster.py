"""Checkpointed state on a real cluster: the Kafka word count (topologies/wordcount.py)
keeps its counts in a real Redis (tests/redis_server.py) while a fault hits it mid-run.

Each test writes sentences to a topic of 4 partitions, submits the word count to 2
workers with ``topology.state.provider=redis`` under a namespace of its own, and strikes
once about 40% of the expected output is written: kill -9 of a worker (the one without
the spout, then the spout's), kill -9 of a supervisor with its workers, a restart of
redis-server, a rebalance of ``count`` to 4 tasks and back to 1. Then every word's final
count, the highest count written for it to the output topic, must be its true count
(the output itself is at least once: a replay writes some counts again), and the
topology's figures must show that the fault hit work in flight (a rollback, failed or
replayed spout tuples, a failed checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from functools import partial
from typing import Any

from cluster import Cluster, wait_for
from kafka import KafkaBroker
from redis_server import RedisServer, unique_topology
from test_kafka_topologies import FAST, WORDCOUNT, best_counts, sentences, submit
from topics import TopicReader, produce

CLUSTER_NIMBUS = 1
"""The module's shared cluster has one nimbus: these tests load the machine enough."""

SENTENCES = 40_000
KILL_AT = 0.4
"""The share of the expected output records written when the fault strikes."""
RATE = 3000
"""Sentences a second the spout tasks read together (a Kafka quota of the spout's client
id): unthrottled, the run is over in about 4 s, before a fault at 40% can land in it."""


class WordCountRun:
    """One submitted Kafka word count with Redis state: its input, what it should count,
    its output, and what the cluster says of it."""

    def __init__(self, c: Cluster, kafka: KafkaBroker, redis_server: RedisServer, topic_prefix: str,
                 readers: Any, name: str, *options: str, seed: int = 1, count: int = SENTENCES) -> None:
        self.c, self.name = c, name
        self.source, self.output = f"{topic_prefix}sentences", f"{topic_prefix}counts"
        values, self.expected = sentences(count, seed=seed)
        self.total = sum(self.expected.values())
        """Output records of a run without replays: one per word of every sentence."""
        produce(kafka, self.source, values, partitions=4)
        kafka.create_topic(self.output, 4)
        self.options = ("--workers", "2", *FAST, "-c", f"kafka.bootstrap={kafka.bootstrap}",
                        "-c", f"input.topic={self.source}", "-c", f"output.topic={self.output}",
                        "-c", "topology.state.provider=redis",
                        "-c", f"topology.state.redis.url={redis_server.url}",
                        "-c", f"topology.state.namespace={unique_topology(name)}",
                        "-c", "kafka.quotas=" + json.dumps({"wordcount-sentences": {"records_per_sec": RATE}}),
                        *options)
        submit(c, WORDCOUNT, name, *self.options)
        self.reader: TopicReader = readers(kafka.bootstrap, self.output)
        self.started = time.monotonic()

    def tasks(self) -> dict[str, list[int]]:
        """Component -> task ids, as ``describe`` lays them out for the run's parallelism."""
        parallelism = [o for o in self.options if ".parallelism=" in o]
        result = self.c.cli("describe", WORDCOUNT, "-c", "kafka.bootstrap=x", "-c", "topology.workers=2",
                            *[arg for o in parallelism for arg in ("-c", o)])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["tasks"]  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return self.c.status(self.name)

    def wait_for_output(self, share: float, timeout: float = 120) -> int:
        """Wait until ``share`` of the expected output records are written; their number."""
        wait_for(lambda: self.reader.poll() is not None and len(self.reader.records) >= share * self.total,
                 timeout, f"{share:.0%} of {self.total:,} output records")
        return len(self.reader.records)

    def figures(self) -> dict[str, float]:
        """What shows a fault hit work in flight, and the state's size, from status."""
        components = self.status()["components"]
        checkpoint = components.get("__checkpoint", {}).get("metrics", {})
        count = components.get("count", {}).get("metrics", {})
        spout = components.get("sentences", {})
        return {"checkpoint.rollbacks": checkpoint.get("checkpoint.rollbacks", 0),
                "checkpoint.failures": checkpoint.get("checkpoint.failures", 0),
                "checkpoint.committed_txid": checkpoint.get("checkpoint.committed_txid", 0),
                "state.rollbacks": count.get("state.rollbacks", 0), "state.keys": count.get("state.keys", 0),
                "spout.acked": spout.get("acked", 0), "spout.failed": spout.get("failed", 0),
                "spout.replayed": spout.get("replayed", 0)}

    def wait_for_recovery_figures(self) -> dict[str, float]:
        """Wait until status shows a rollback or failed/replayed spout tuples; the figures."""
        def hit() -> dict[str, float] | None:
            f = self.figures()
            signs = ("checkpoint.rollbacks", "state.rollbacks", "spout.failed", "spout.replayed")
            return f if any(f[sign] > 0 for sign in signs) else None

        return wait_for(hit, 60, "a rollback, or failed or replayed spout tuples, in status")  # type: ignore[no-any-return]

    def assert_exact(self, timeout: float = 150) -> dict[str, Any]:
        """Wait until every word's highest count written is its true count; then check that
        status shows every word in the state. Returns the run's figures for the report."""
        expected = dict(self.expected)
        try:
            wait_for(lambda: self.reader.poll(0.5) is not None and best_counts(self.reader.records) == expected,
                     timeout, "exact word counts in the output topic")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.explain()}") from None
        # The last heartbeats may still be a checkpoint behind: wait for every key.
        figures = wait_for(lambda: (f := self.figures()) and f["state.keys"] == len(expected) and f, 30,
                           f"state.keys of count == {len(expected)} distinct words")
        written = Counter((r.value, r.key) for r in self.reader.records)
        return {**figures, "seconds": round(time.monotonic() - self.started, 1),
                "records": len(self.reader.records), "expected records": self.total,
                "duplicates": sum(n - 1 for n in written.values())}

    def explain(self) -> str:
        """Which words are counted wrong and how, the figures, the errors and worker logs."""
        best = best_counts(self.reader.records)
        over = {w: (best[w], n) for w, n in self.expected.items() if best.get(w, 0) > n}
        under = {w: (best.get(w, 0), n) for w, n in self.expected.items() if best.get(w, 0) < n}
        status = self.status()
        logs = sorted(str(p) for p in self.c.workdir.glob(f"*/logs/{status['id']}-*.log*"))
        return (f"{len(self.reader.records):,} records read of {self.total:,} expected; "
                f"{len(over)} words over (written, true): {dict(list(over.items())[:5])}; "
                f"{len(under)} under: {dict(list(under.items())[:5])}; figures {self.figures()}; "
                f"errors {status['errors']}; worker logs {logs}")


def victim_of(run: WordCountRun, holds: str, lacks: str | None = None) -> dict[str, Any]:
    """The worker whose tasks include one of component ``holds`` and none of ``lacks``."""
    layout = run.tasks()
    for worker in run.status()["workers"]:
        tasks = set(worker["tasks"])
        if tasks & set(layout[holds]) and not (lacks and tasks & set(layout[lacks])):
            return worker  # type: ignore[no-any-return]
    raise AssertionError(f"no worker holds {holds} but not {lacks}: {run.status()['workers']}, layout {layout}")


def report(what: str, figures: dict[str, Any], at_fault: int, total: int) -> None:
    print(f"\n{what} after {at_fault:,} of {total:,} output records: {figures}")


def kill_worker(run: WordCountRun, victim: dict[str, Any]) -> None:
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: run.c.worker_pids().get(victim["port"]) not in (None, victim["pid"]), 30,
             "the supervisor restarted the worker")


# -- the tests -------------------------------------------------------------------------------


def test_kill_9_of_a_count_worker_without_the_spout_keeps_counts_exact(
        cluster: Cluster, kafka: KafkaBroker, redis_server: RedisServer, topic_prefix: str, readers: Any) -> None:
    # With two spout tasks each worker holds one: one spout task leaves a worker without.
    run = WordCountRun(cluster, kafka, redis_server, topic_prefix, readers, "wc-state-kill-count",
                       "-c", "spout.parallelism=1")
    at_fault = run.wait_for_output(KILL_AT)
    victim = victim_of(run, holds="count", lacks="sentences")
    kill_worker(run, victim)
    figures = run.wait_for_recovery_figures()
    final = run.assert_exact()
    report(f"kill -9 of worker {victim['slot']} (tasks {victim['tasks']})", {**final, "at recovery": figures},
           at_fault, run.total)


def test_kill_9_of_the_spout_worker_keeps_counts_exact(
        cluster: Cluster, kafka: KafkaBroker, redis_server: RedisServer, topic_prefix: str, readers: Any) -> None:
    run = WordCountRun(cluster, kafka, redis_server, topic_prefix, readers, "wc-state-kill-spout",
                       "-c", "spout.parallelism=1", seed=2)
    at_fault = run.wait_for_output(KILL_AT)
    victim = victim_of(run, holds="sentences")
    kill_worker(run, victim)
    figures = run.wait_for_recovery_figures()
    final = run.assert_exact()
    report(f"kill -9 of spout worker {victim['slot']} (tasks {victim['tasks']})",
           {**final, "at recovery": figures}, at_fault, run.total)


def test_kill_9_of_a_supervisor_and_its_workers_keeps_counts_exact(
        own_cluster: Cluster, kafka: KafkaBroker, redis_server: RedisServer, topic_prefix: str,
        readers: Any) -> None:
    c = own_cluster
    run = WordCountRun(c, kafka, redis_server, topic_prefix, readers, "wc-state-kill-sup",
                       "-c", "spout.parallelism=2", seed=3)
    at_fault = run.wait_for_output(KILL_AT)
    workers = run.status()["workers"]
    # The supervisor of the first worker: with 2 slots each, the workers may share one.
    victim = workers[0]["slot"].split(":")[0]
    doomed = {w["port"]: w["pid"] for w in workers if w["slot"].startswith(victim + ":")}
    c.supervisors[victim].kill()
    for pid in doomed.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (ws := run.status()["workers"]) and len(ws) == 2
             and all(w["alive"] and not w["slot"].startswith(victim + ":") for w in ws), 60,
             "nimbus moved the dead supervisor's workers")
    figures = run.wait_for_recovery_figures()
    final = run.assert_exact()
    report(f"kill -9 of supervisor {victim} and its workers on ports {sorted(doomed)}",
           {**final, "at recovery": figures}, at_fault, run.total)


def test_redis_restart_mid_run_keeps_counts_exact(
        cluster: Cluster, kafka: KafkaBroker, redis_server: RedisServer, topic_prefix: str, readers: Any) -> None:
    run = WordCountRun(cluster, kafka, redis_server, topic_prefix, readers, "wc-state-redis",
                       "-c", "spout.parallelism=2", seed=4)
    at_fault = run.wait_for_output(KILL_AT)
    before = run.figures()
    redis_server.kill()
    try:
        down = wait_for(lambda: (f := run.figures()) and f["checkpoint.failures"] > before["checkpoint.failures"]
                        and f, 60, "a failed checkpoint in status while Redis is down")
        later = wait_for(lambda: (f := run.figures()) and f["checkpoint.failures"] > down["checkpoint.failures"]
                         and f, 30, "a second failed checkpoint while Redis is down")
        errors = run.status()["errors"].get("__checkpoint", [])
    finally:
        redis_server.start()  # the session's server: it keeps its port and, appendonly, its data
    final = run.assert_exact()
    # A tree timing out on a loaded machine may roll back meanwhile, and its "cannot restore
    # state" can come last: the save failure must be among the errors, not necessarily last.
    assert any("cannot save state" in error["message"] for error in errors), errors
    # Work is blocked while the store is away: no checkpoint commits, so no sentence is acked.
    assert (later["checkpoint.committed_txid"], later["spout.acked"]) == (down["checkpoint.committed_txid"],
                                                                          down["spout.acked"]), (down, later)
    report("redis-server killed, then restarted", {
        **final, "while down": down, "later while down": later, "last error": errors[-1]["message"]},
        at_fault, run.total)


def test_rebalance_of_count_to_4_then_1_task_keeps_counts_exact(
        cluster: Cluster, kafka: KafkaBroker, redis_server: RedisServer, topic_prefix: str, readers: Any) -> None:
    run = WordCountRun(cluster, kafka, redis_server, topic_prefix, readers, "wc-state-rebalance",
                       "-c", "spout.parallelism=2", seed=5, count=60_000)
    steps = []

    def moved(tasks: int, old: set[int]) -> bool:
        """Whether new workers, none of pids ``old``, run ``tasks`` count tasks."""
        s = run.status()
        return (s["components"].get("count", {}).get("tasks") == tasks and len(s["workers"]) == 2
                and all(w["alive"] and w["pid"] not in old for w in s["workers"]))

    for share, tasks in ((0.3, 4), (0.6, 1)):
        at = run.wait_for_output(share)
        old = {w["pid"] for w in run.status()["workers"]}
        result = cluster.cli("rebalance", run.name, "--parallelism", f"count={tasks}")
        assert result.returncode == 0, result.stderr
        wait_for(partial(moved, tasks, old), 60, f"new workers running {tasks} count tasks")
        steps.append((at, tasks))
    final = run.assert_exact()
    report("rebalance count=4, then count=1", {**final, "steps (records at rebalance, count tasks)": steps},
           steps[0][0], run.total)
    # Every worker restarted at each step; the last coordinator counts its first rollback.
    assert final["checkpoint.rollbacks"] > 0, final
