"""The streamparse quickstart's word count in local mode, through multilang, against the
same pipeline with native components: words/s and CPU seconds.

    python bench/multilang_wordcount.py [--seconds 10] [--repeat 3]

Each run is a fresh ``streamflow local ... --timeout SECONDS`` (start-up included, as a
user sees it). The multilang run is tests/multilang/wordcount, ``sparse quickstart``'s
project as generated, unchanged: a pystorm spout process cycling four words (unreliable
emits) and two pystorm count-bolt processes behind a fields grouping. The native run is
this file's ``build``: the same spout and bolts as streamflow components. Words/s is
what the count bolts executed over the run's seconds; CPU seconds are the run's, its
component processes included. Runs are interleaved and the median and best of
``--repeat`` are printed (shared machines vary by 20% from run to run).
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import statistics
import subprocess
import sys
from collections import Counter
from itertools import cycle
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "tests" / "multilang" / "wordcount" / "topologies" / "wordcount.py"


# -- the native pipeline: the quickstart's components as streamflow components ----------

def build(config: Mapping[str, Any]) -> Any:
    from streamflow import BasicBolt, Spout, TopologyBuilder

    class WordSpout(Spout):
        outputs = ["word"]

        def open(self, config: Mapping[str, Any], context: Any) -> None:
            self.words = cycle(["dog", "cat", "zebra", "elephant"])

        def next_tuple(self) -> None:
            self.emit([next(self.words)])

    class WordCountBolt(BasicBolt):
        outputs = ["word", "count"]

        def prepare(self, config: Mapping[str, Any], context: Any) -> None:
            self.counter: Counter[str] = Counter()
            self.total = 0
            self.log = logging.getLogger("wordcount")

        def process(self, tup: Any) -> None:
            word = tup.values[0]
            inc = 10 if word == "dog" else 1
            self.counter[word] += inc
            self.total += inc
            if self.total % 1000 == 0:
                self.log.info("counted [%s] words", f"{self.total:,}")
            self.emit([word, self.counter[word]])

    builder = TopologyBuilder("native_wordcount")
    builder.set_spout("word_spout", WordSpout())
    builder.set_bolt("count_bolt", WordCountBolt(), 2).fields_grouping("word_spout", ["word"])
    return builder.build()


# -- the benchmark ----------------------------------------------------------------------

def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(topology: Path, seconds: float) -> tuple[float, float]:
    """Words/s of the count bolts and CPU seconds of one run."""
    before = child_cpu()
    result = subprocess.run([sys.executable, "-m", "streamflow.cli", "local", str(topology), "--timeout",
                             str(seconds)], capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60)
    cpu = child_cpu() - before
    if result.returncode != 0:
        raise SystemExit(f"{topology} failed:\n{result.stderr[-2000:]}")
    executed = re.search(r"^count_bolt\s+bolt\s+\d+\s+\d+\s+(\d+)", result.stderr, re.M)
    took = re.search(r"^timeout in ([\d.]+) s", result.stderr, re.M)
    assert executed and took, result.stderr[-2000:]
    return int(executed.group(1)) / float(took.group(1)), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each pipeline, interleaved")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {"multilang": [], "native": []}
    for i in range(args.repeat):
        for name, topology in (("multilang", QUICKSTART), ("native", Path(__file__).resolve())):
            rate, cpu = run(topology, args.seconds)
            runs[name].append((rate, cpu))
            print(f"run {i + 1} {name:<9} {rate:>9,.0f} words/s  {cpu:5.1f} CPU s", flush=True)
    print()
    for name, results in runs.items():
        rates = [rate for rate, _ in results]
        cpu_per_word = statistics.median(cpu / (rate * args.seconds) for rate, cpu in results)
        print(f"{name:<9} median {statistics.median(rates):>9,.0f} words/s  best {max(rates):>9,.0f}  "
              f"{cpu_per_word * 1e6:6.1f} CPU us/word")
    multilang = statistics.median(rate for rate, _ in runs["multilang"])
    native = statistics.median(rate for rate, _ in runs["native"])
    print(f"multilang/native: {multilang / native:.0%}")


if __name__ == "__main__":
    main()
