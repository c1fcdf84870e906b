"""The Kafka examples, topologies/wordcount.py and topologies/etl.py, against a real broker
(Tansu, tests/kafka.py).

They run through the real CLI in local mode (``-c kafka.stop_at_end=true`` ends the run at
the end offsets seen at start) and on a real cluster (tests/cluster.py), where the run goes
on until killed, so the tests wait for the output to be complete; and in this process
(:class:`live.LiveRun`) to watch the ETL's errors through a broker outage.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, metric_samples, wait_for
from commands import ROOT, streamflow, summary_rows
from kafka import KafkaBroker, moto_available
from live import LiveRun
from servers import free_port
from streamflow_connectors.kafka.assignment import owner
from topics import header, produce

from streamflow.loader import load_topology

WORDCOUNT = str(ROOT / "topologies" / "wordcount.py")
ETL = str(ROOT / "topologies" / "etl.py")
FAST = ["-c", "topology.message.timeout.secs=5"]
CLUSTER_NIMBUS = 1
"""The module's cluster (conftest's ``cluster``) has one nimbus: the quota test measures
rates, on a machine the cluster shares."""


def sentences(count: int, seed: int, words: tuple[int, int] = (1, 3)) -> tuple[list[bytes], Counter[str]]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(300)]
    expected: Counter[str] = Counter()
    values = []
    for i in range(count):
        chosen = rng.choices(vocabulary, k=rng.randint(*words))
        expected.update(chosen)
        values.append(json.dumps({"id": i, "text": " ".join(chosen)}).encode())
    return values, expected


def best_counts(records: Sequence[Any]) -> dict[str, int]:
    """The highest count written per word: its final count."""
    best: dict[str, int] = {}
    for record in records:
        r = json.loads(record.value)
        assert record.key == r["word"].encode()
        best[r["word"]] = max(best.get(r["word"], 0), r["count"])
    return best


def etl_events(count: int, seed: int) -> tuple[list[bytes], set[int], set[str], set[bytes]]:
    """ETL input: values, the valid ids, the malformed lines (not JSON, a missing field, a
    field of the wrong type) and the values that are not UTF-8 (the spout dead-letters those)."""
    rng = random.Random(seed)
    values: list[bytes] = []
    valid: set[int] = set()
    malformed: set[str] = set()
    not_utf8: set[bytes] = set()
    for i in range(count):
        draw = rng.random()
        if draw < 0.01:
            value = b"\xff\xfe event %d \xc3\x28" % i
            not_utf8.add(value)
        elif draw < 0.04:
            line = rng.choice([f"not json {i}", f'{{"id": {i}, "user": "u1"}}',
                               f'{{"id": "{i}", "user": "u2", "amount": 1}}',
                               f'{{"id": {i}, "user": "u3", "amount": "x"}}'])
            malformed.add(line)
            value = line.encode()
        else:
            event = {"id": i, "user": f"user{rng.randrange(40)}", "amount": rng.randint(1, 99)}
            value = json.dumps(event).encode()
            valid.add(i)
        values.append(value)
    return values, valid, malformed, not_utf8


def split_dead_letters(records: Sequence[Any]) -> tuple[Counter[str], Counter[bytes]]:
    """ETL's dead letters: lines the topology rejected ({"line", "error"} from its
    deadletter bolt) and raw values the spout sent itself (with origin headers)."""
    lines: Counter[str] = Counter()
    raw: Counter[bytes] = Counter()
    for record in records:
        if header(record, "origin.topic") is not None:
            raw[record.value] += 1
        else:
            lines[json.loads(record.value)["line"]] += 1
    return lines, raw


# -- wordcount, exact counts ---------------------------------------------------------------------


def test_wordcount_keeps_a_checkpoint_interval_of_trees_in_flight_unless_told_otherwise() -> None:
    # Its trees complete when the checkpoint covering their counts commits, so it sets
    # 50,000 trees in flight per spout task, in both forms; a -c value still wins.
    bootstrap = f"127.0.0.1:{free_port()}"
    assert load_topology(WORDCOUNT, {"kafka.bootstrap": bootstrap}).config["topology.max.spout.pending"] == 50_000
    told = load_topology(WORDCOUNT, {"kafka.bootstrap": bootstrap, "topology.max.spout.pending": 200})
    assert told.config["topology.max.spout.pending"] == 200
    assert load_topology(WORDCOUNT, {}).config["topology.max.spout.pending"] == 50_000


def test_wordcount_local_counts_50000_sentences_exactly(kafka: KafkaBroker, topic_prefix: str,
                                                        readers: Any) -> None:
    source, output = f"{topic_prefix}sentences", f"{topic_prefix}counts"
    values, expected = sentences(50_000, seed=1)
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(output, 4)
    result = streamflow("local", WORDCOUNT, "-c", f"kafka.bootstrap={kafka.bootstrap}",
                        "-c", "kafka.stop_at_end=true", "-c", f"input.topic={source}",
                        "-c", f"output.topic={output}", "--timeout", "120")
    assert result.returncode == 0, result.stderr
    assert "finished in" in result.stderr, result.stderr
    rows = summary_rows(result.stderr)
    assert rows["sentences"][5] == "50000" and rows["sentences"][6] == "0", result.stderr
    reader = readers(kafka.bootstrap, output)
    total = sum(expected.values())
    try:
        wait_for(lambda: reader.poll() is not None and len(reader.records) >= total, 60, "every count written")
    except AssertionError as exc:  # say how far the reader got, for a failure seen under load
        raise AssertionError(f"{exc}: {len(reader.records):,} of {total:,} records read; "
                             f"{reader.describe()}") from None
    assert best_counts(reader.records) == dict(expected)
    assert len(reader.records) == total  # nothing replayed in a clean run
    assert kafka.committed("wordcount-sentences", source) == {p: 12_500 for p in range(4)}


# -- on a cluster ------------------------------------------------------------------------------


def submit(c: Cluster, topology: str, name: str, *options: str) -> None:
    result = c.cli("submit", topology, "--name", name, *options)
    assert result.returncode == 0, result.stderr


def test_wordcount_on_two_workers_counts_50000_sentences_exactly(
        cluster: Cluster, kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    source, output = f"{topic_prefix}sentences", f"{topic_prefix}counts"
    values, expected = sentences(50_000, seed=2)
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(output, 4)
    submit(cluster, WORDCOUNT, "wc-kafka", "--workers", "2", "-c", f"kafka.bootstrap={kafka.bootstrap}",
           "-c", f"input.topic={source}", "-c", f"output.topic={output}", "-c", "spout.parallelism=2")
    reader = readers(kafka.bootstrap, output)
    wait_for(lambda: reader.poll(0.5) is not None and best_counts(reader.records) == dict(expected), 120,
             "exact word counts in the output topic")
    status = cluster.status("wc-kafka")
    assert len(status["workers"]) == 2 and all(w["alive"] for w in status["workers"])
    wait_for(lambda: cluster.status("wc-kafka")["components"]["sentences"]["acked"] == 50_000, 30,
             "every sentence acked at the spout")
    wait_for(lambda: kafka.committed("wordcount-sentences", source) == {p: 12_500 for p in range(4)}, 30,
             "every offset committed")

    def kafka_samples(name: str) -> dict[str, float]:
        """``streamflow_NAME`` from every worker's /metrics: label value -> value."""
        samples = [metric_samples(f"http://{w['host']}:{w['port']}") for w in status["workers"]]
        return {label: v for s in samples for (metric, labels), v in s.items() if metric == name
                for key, label in labels if key in ("partition", "client_id")}

    # The spout tasks' partitions (two per task, one task per worker) and the client id.
    wait_for(lambda: kafka_samples("streamflow_kafka_committed_offset") == {f"{source}/{p}": 12_500
                                                                            for p in range(4)},
             30, "each partition's committed offset in the workers' /metrics")
    consumed = [metric_samples(f"http://{w['host']}:{w['port']}").get(
        ("streamflow_kafka_consumed_records", (("client_id", "wordcount-sentences"), ("component", "sentences"),
                                               ("task", str(task)), ("topology", "wc-kafka"))), 0)
        for w in status["workers"] for task in w["tasks"]]
    assert sum(consumed) == 50_000  # the client id's records, counted by its two tasks


def test_etl_on_two_workers_survives_kill_9_of_a_spout_worker(
        cluster: Cluster, kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    source, clean, dlq = f"{topic_prefix}events", f"{topic_prefix}events-clean", f"{topic_prefix}events-dlq"
    values, valid, malformed, not_utf8 = etl_events(30_000, seed=3)
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(clean, 4)
    kafka.create_topic(dlq, 1)
    submit(cluster, ETL, "etl-kafka", "--workers", "2", *FAST, "-c", "topology.max.spout.pending=50",
           "-c", f"kafka.bootstrap={kafka.bootstrap}", "-c", f"input.topic={source}",
           "-c", f"output.topic={clean}", "-c", f"deadletter.topic={dlq}", "-c", "spout.parallelism=2")
    out, dead = readers(kafka.bootstrap, clean), readers(kafka.bootstrap, dlq)
    wait_for(lambda: out.poll() is not None and len(out.records) > len(valid) // 10, 120,
             "a tenth of the events in events-clean")
    workers = cluster.status("etl-kafka")["workers"]
    description = json.loads(cluster.cli("describe", ETL, "-c", "kafka.bootstrap=x", "-c", "spout.parallelism=2",
                                         "-c", "topology.workers=2").stdout)
    spout_tasks = sorted(description["tasks"]["events"])
    victim = next(w for w in workers if set(spout_tasks) & set(w["tasks"]))
    index = spout_tasks.index(next(t for t in spout_tasks if t in victim["tasks"]))
    victim_partitions = [p for p in range(4) if owner(source, p, 2) == index]

    def committed() -> dict[int, int | None]:
        return kafka.committed("etl-events", source, victim_partitions)

    # Mid-run, with offsets committed: the restarted task resumes from them, not from the start.
    at_kill = wait_for(lambda: (c := committed()) and any(c.values()) and c, 60, "a commit of the victim's")
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = len(out.records)

    def ids() -> Counter[int]:
        return Counter(json.loads(r.value)["id"] for r in out.records)

    try:
        wait_for(lambda: out.poll(0.3) is not None and set(ids()) >= valid, 180, "every valid id in events-clean")
    except AssertionError as exc:  # say what was missing and what the topology reports
        components = cluster.status("etl-kafka")["components"]
        raise AssertionError(
            f"{exc}: {len(valid - set(ids())):,} of {len(valid):,} valid ids missing; "
            + "; ".join(f"{name} acked {c['acked']} failed {c['failed']} last error {c['last_error']}"
                        for name, c in components.items())) from None

    def dead_complete() -> bool:
        dead.poll(0.3)
        lines, raw = split_dead_letters(dead.records)
        return set(lines) >= malformed and set(raw) >= not_utf8

    wait_for(dead_complete, 60, "every malformed record in events-dlq")
    counted = ids()
    assert set(counted) == valid
    lines, raw = split_dead_letters(dead.records)
    assert set(lines) == malformed and set(raw) == not_utf8
    duplicates = sum(n - 1 for n in counted.values())
    print(f"\nkill -9 of worker {victim['slot']} (spout task {spout_tasks[index]}, committed {at_kill}) "
          f"after {killed_at} outputs: {duplicates} duplicate outputs of {len(valid)} valid ids; "
          f"{sum(n - 1 for n in lines.values()) + sum(n - 1 for n in raw.values())} duplicate dead letters")
    restarted = wait_for(lambda: cluster.worker_pids().get(victim["port"]), 30, "worker restarted")
    assert restarted != victim["pid"]


def test_quota_holds_across_two_spout_tasks_and_follows_set_config(
        cluster: Cluster, kafka: KafkaBroker, topic_prefix: str, readers: Any) -> None:
    rate, new_rate = 200, 400
    source, output = f"{topic_prefix}sentences", f"{topic_prefix}counts"
    # One word per sentence: one output record per sentence consumed.
    values = [json.dumps({"id": i, "text": f"w{i % 100}"}).encode() for i in range(16_000)]
    produce(kafka, source, values, partitions=4)
    kafka.create_topic(output, 4)
    quota = json.dumps({"wordcount-sentences": {"records_per_sec": rate}})
    submit(cluster, WORDCOUNT, "wc-quota", "--workers", "2", "-c", f"kafka.bootstrap={kafka.bootstrap}",
           "-c", f"input.topic={source}", "-c", f"output.topic={output}", "-c", "spout.parallelism=2",
           "-c", f"kafka.quotas={quota}")
    status = cluster.status("wc-quota")
    description = json.loads(cluster.cli("describe", WORDCOUNT, "-c", "kafka.bootstrap=x",
                                         "-c", "spout.parallelism=2", "-c", "topology.workers=2").stdout)
    spout_tasks = set(description["tasks"]["sentences"])
    assert len(status["workers"]) == 2
    assert all(len(spout_tasks & set(w["tasks"])) == 1 for w in status["workers"]), status["workers"]

    reader = readers(kafka.bootstrap, output)
    wait_for(lambda: reader.poll() and True, 60, "the first output")
    first = min(r.timestamp for r in reader.records) / 1000

    def consumed() -> float:
        metrics = cluster.api("status", "wc-quota")["components"]["sentences"].get("metrics", {})
        return float(metrics.get("kafka.consumed_records", {}).get("client_id=wordcount-sentences", 0))

    before = (time.time(), consumed())
    wait_for(lambda: reader.poll(0.5) is not None and time.time() > first + 11, 30, "11 s of output")
    after = (time.time(), consumed())
    stamps = sorted(r.timestamp / 1000 for r in reader.records)

    def rate_in(start: float, seconds: float) -> float:
        return sum(1 for t in stamps if start <= t < start + seconds) / seconds

    windows = [rate_in(first + 0.25 * i, 10.0) for i in range(5)]
    from_metrics = (after[1] - before[1]) / (after[0] - before[0])
    print(f"\nquota {rate}/s over 2 spout tasks: {[round(w) for w in windows]} records/s in 10 s windows "
          f"of output; {from_metrics:.0f}/s from the spout's kafka.consumed_records")
    assert max(windows) <= 1.2 * rate
    assert min(windows) >= 0.7 * rate  # the quota limits, it does not starve
    assert from_metrics <= 1.2 * rate

    refused = cluster.cli("set-config", "wc-quota", "-c", 'kafka.quotas={"wordcount-sentences": 400}')
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "config 'kafka.quotas': expected an object {client id:" in refused.stderr, refused.stderr
    quota = json.dumps({"wordcount-sentences": {"records_per_sec": new_rate}})
    result = cluster.cli("set-config", "wc-quota", "-c", f"kafka.quotas={quota}")
    assert result.returncode == 0, result.stderr
    changed = time.time()
    wait_for(lambda: reader.poll(0.5) is not None and time.time() > changed + 8, 30, "8 s of output")
    stamps = sorted(r.timestamp / 1000 for r in reader.records)
    followed = rate_in(changed + 2, 5.0)
    print(f"after set-config to {new_rate}/s: {followed:.0f} records/s")
    assert 0.7 * new_rate <= followed <= 1.2 * new_rate


# -- a broker restart ----------------------------------------------------------------------------


@pytest.mark.skipif(not moto_available(), reason="moto's S3 server is not installed: "
                    "pip install 'moto[s3]' flask flask-cors")
def test_etl_reports_a_broker_outage_and_recovers_losing_nothing(tmp_path: Path, readers: Any) -> None:
    # S3 storage keeps records and offsets across the restart. Its end offsets lag (see
    # tests/kafka.py), so no stop_at_end: the run goes on until every id is out. The ETL
    # example runs here in this process (as `streamflow local` runs it) to watch its errors.
    with KafkaBroker(tmp_path / "kafka", persistent=True) as broker:
        values = [json.dumps({"id": i, "user": f"u{i % 13}", "amount": 1}).encode() for i in range(4000)]
        produce(broker, "events", values, partitions=4)
        broker.create_topic("events-clean", 4)
        broker.create_topic("events-dlq", 1)
        topology = load_topology(ETL, {"kafka.bootstrap": broker.bootstrap, "topology.max.spout.pending": 200,
                                       "topology.message.timeout.secs": 5})
        run = LiveRun(topology, timeout=150)
        try:
            out = readers(broker.bootstrap, "events-clean")
            wait_for(lambda: out.poll() is not None and len(out.records) >= 500, 60, "500 events out")
            broker.kill()  # an outage: SIGKILL, no clean shutdown
            before = len(out.records)
            error = wait_for(lambda: run.last_error("events"), 30, "the spout's error while the broker is away")
            assert f"Kafka at {broker.bootstrap}" in error, error
            broker.start()
            wait_for(lambda: out.poll(0.5) is not None and len({json.loads(r.value)["id"] for r in out.records})
                     == len(values), 120, "every id in events-clean after the restart")
        finally:
            run.stop()
        assert run.join(60) == "stopped"
        broker.kill()  # Tansu may take its whole stop timeout (5 s) to honour a SIGTERM
        ids = Counter(json.loads(r.value)["id"] for r in out.records)
        print(f"\nbroker killed after {before} outputs, spout error: {error!r}; restarted: "
              f"{sum(ids.values()) - len(ids)} duplicates")
        assert set(ids) == set(range(len(values)))
