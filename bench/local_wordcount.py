"""Wordcount in local mode, acking on and off: sentences/s and words/s.

    python bench/local_wordcount.py [--lines 100000] [--words-per-line 10] [--repeat 3]

Generates its input (random words from a Zipf-like vocabulary, seeded), runs
``topologies/wordcount.py`` through ``streamflow local`` in a fresh process per run (so
the figures include start-up and shut-down, as a user sees them), checks the output's
final counts against the input, and prints the best and the median of ``--repeat`` runs
per mode (shared machines vary by +-20% from run to run). The target of the foundation
issue is 150,000 words/s with acking on, in one process.

Beside wall-clock time it prints the CPU seconds the run used (user + system, from the
child's rusage): on a machine busy with other work, wall time moves with the load while
CPU time barely does, so CPU time is the figure to compare two versions of the hot path
by (run both, interleaved, with ``--repeat``).

Measurements behind the hot path's design (local wordcount; instructions counted by
callgrind, or nanoseconds per call on one core):

- ``GC_YOUNG_THRESHOLD`` (streamflow/worker.py): at Python's default of 700 allocations a
  sentence cost 6.5% more instructions than at 10,000, 50,000 or 200,000, which are alike.
- Collectors keep columns, not tuples: a tuple built and taken apart cost 190 ns more than
  two appends.
- ``BoltOutputCollector.anchored_emitter`` (the common case of one root inline): 4.7% fewer
  instructions per sentence of the Kafka wordcount with the fields router's memo, against
  2.2% with the memo alone.
- ``BoltOutputCollector.ack_all``: 124 ns a tuple, against 190-222 ns for a call of ``ack``
  per tuple.
- Routers are closures: calling one costs two thirds of calling an object's ``__call__``
  (150 against 235 ns for fields grouping); a wordcount sentence calls twenty.
- ``FIELDS_MEMO``: a dict lookup costs a third of hashing the key again (113 against
  171 ns a route); 16,384 keys hold at most 0.4 MB, 2 MB with keys of 50 characters.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "topologies" / "wordcount.py"


def generate(path: Path, lines: int, words_per_line: int, seed: int = 7) -> collections.Counter[str]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(5000)]
    weights = [1.0 / (i + 1) for i in range(len(vocabulary))]  # Zipf-like, as real text
    counts: collections.Counter[str] = collections.Counter()
    with path.open("w") as f:
        for _ in range(lines):
            words = rng.choices(vocabulary, weights, k=words_per_line)
            counts.update(words)
            f.write(" ".join(words) + "\n")
    return counts


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(input_path: Path, output: Path, acking: bool, extra: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one ``streamflow local`` run."""
    if output.exists():
        output.unlink()
    cmd = [
        sys.executable, "-m", "streamflow.cli", "local", str(TOPOLOGY),
        "-c", f"input.path={input_path}", "-c", f"output.path={output}",
        "-c", f"topology.acker.executors={1 if acking else 0}", *extra,
    ]
    started, cpu = time.perf_counter(), child_cpu()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, child_cpu() - cpu


def final_counts(output: Path) -> dict[str, int]:
    best: dict[str, int] = {}
    with output.open("rb") as f:
        for line in f:
            record = json.loads(line)
            if record["count"] > best.get(record["word"], 0):
                best[record["word"]] = record["count"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--words-per-line", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-c", dest="config", action="append", default=[],
                        help="extra -c KEY=VALUE passed to the topology")
    args = parser.parse_args()
    extra = [x for kv in args.config for x in ("-c", kv)]
    with tempfile.TemporaryDirectory() as tmp:
        input_path, output = Path(tmp) / "in.txt", Path(tmp) / "out.jsonl"
        expected = generate(input_path, args.lines, args.words_per_line)
        words = sum(expected.values())
        print(f"input: {args.lines:,} sentences, {words:,} words; {os.cpu_count()} CPUs; "
              f"python {sys.version.split()[0]}")
        for acking in (True, False):
            times, cpus = [], []
            for _ in range(args.repeat):
                wall, cpu = run(input_path, output, acking, extra)
                times.append(wall)
                cpus.append(cpu)
                if final_counts(output) != dict(expected):
                    sys.exit(f"acking {'on' if acking else 'off'}: WRONG counts")
            for label, pick in (("best", min), ("median", statistics.median)):
                seconds, cpu = pick(times), pick(cpus)
                print(f"acking {'on ' if acking else 'off'} {label:6}: {seconds:6.2f} s  "
                      f"{args.lines / seconds:>9,.0f} sentences/s  {words / seconds:>10,.0f} words/s  "
                      f"cpu {cpu:6.2f} s  {words / cpu:>10,.0f} words/cpu-s")
        print("counts exact in every run")


if __name__ == "__main__":
    main()
