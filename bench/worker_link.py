"""The cost of one tuple crossing from one worker to another: CPU per tuple, both ends.

    python bench/worker_link.py [--batches 8000] [--words 100] [--repeat 5]
                                [--serializer msgpack|pickle|both]

One process plays both workers on one event loop (uvloop), over real TCP on 127.0.0.1:
a sender's :class:`~streamflow.transport.tcp.TcpTransport` sends batches of word tuples,
each anchored in one tree as a split bolt's are, plus one batch of 10 acks per batch of
tuples, to a receiver's transport, whose inbox a consumer task drains. The process's CPU
time (user + system) over the run, divided by the tuples, is what a tuple costs to encode,
write, read, decode and rebuild: the part of cluster mode that local mode does not pay.
The batches are built before the clock starts. Prints every run and the median; with
``--serializer both``, runs of the two serializers alternate (so the machine's load
moves both alike) and each gets its median.

A marshal frame (what topologies of built-in values send with the pickle serializer)
was about a third faster to encode and decode than pickle.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import resource
import socket
import statistics
import time
from typing import Any, Sequence

import uvloop
from streamflow_connectors.files import LineSpout

from streamflow import BasicBolt, TopologyBuilder
from streamflow.acking import new_id
from streamflow.inbox import ACK_ACK, TUPLES, Inbox
from streamflow.transport.codec import Codec
from streamflow.transport.tcp import TcpTransport
from streamflow.tuples import Anchors, Origin

WORD = re.compile(r"[\w']+")


class Split(BasicBolt):
    outputs = ["word"]


class Count(BasicBolt):
    outputs = ["word", "count"]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_run(batches: int, words: int, serializer: str) -> tuple[float, float]:
    """CPU microseconds per tuple and tuples per second of one run."""
    builder = TopologyBuilder("link")
    builder.set_spout("sentences", LineSpout("/dev/null"))
    builder.set_bolt("split", Split(), 2).shuffle_grouping("sentences")
    builder.set_bolt("count", Count(), 2).fields_grouping("split", ["word"])
    topology = builder.build({"topology.serializer": serializer})
    layout = topology.task_layout()
    source, target = layout["split"][0], layout["count"][0]
    codec = Codec(topology)
    origin = Origin("split", source, "default", ("word",))
    rng = random.Random(1)
    vocabulary = [f"w{i}" for i in range(5000)]
    sentences = [" ".join(rng.choices(vocabulary, k=words)) for _ in range(50)]
    batch_words = [WORD.findall(sentences[i % 50]) for i in range(batches + 1)]
    prepared: list[tuple[list[Sequence[Any]], list[Anchors]]] = [
        ([(w,) for w in words], [(new_id(64), new_id(64)) for _ in words]) for words in batch_words]
    acks = [{new_id(64): new_id(64) for _ in range(10)} for _ in range(batches)]

    inbox = Inbox(1_000_000)
    receiver = TcpTransport({target: inbox}, codec, b"secret")
    port = free_port()
    await receiver.serve("127.0.0.1", port)
    sender = TcpTransport({}, codec, b"secret")
    sender.update_routes({target: ("127.0.0.1", port)})
    received = 0

    async def drain(until: int) -> None:
        nonlocal received
        while received < until:
            message = inbox.get_nowait()
            if message is None:
                await inbox.wait()
            elif message[0] == TUPLES:
                received += len(message[1])

    await sender.send_tuples(target, origin, *prepared[0])  # connect before the clock starts
    await drain(words)
    received, total = 0, batches * words
    consumer = asyncio.create_task(drain(total))
    cpu, wall = cpu_seconds(), time.perf_counter()
    for (values, anchors), ack in zip(prepared[1:], acks, strict=True):
        await sender.send_tuples(target, origin, values, anchors)
        sender.send_control(target, ACK_ACK, ack)
        await asyncio.sleep(0)  # one executor turn: one flush per batch
    await consumer
    cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    await sender.close()
    await receiver.close()
    return cpu / total * 1e6, total / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8000)
    parser.add_argument("--words", type=int, default=100, help="tuples per batch")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--serializer", choices=["msgpack", "pickle", "both"], default="msgpack",
                        help="topology.serializer of the run (both: alternate the two)")
    args = parser.parse_args()
    serializers = ["msgpack", "pickle"] if args.serializer == "both" else [args.serializer]
    costs: dict[str, list[float]] = {s: [] for s in serializers}
    rates: dict[str, list[float]] = {s: [] for s in serializers}
    for run in range(1, args.repeat + 1):
        for serializer in serializers:
            cost, rate = uvloop.run(one_run(args.batches, args.words, serializer))
            costs[serializer].append(cost)
            rates[serializer].append(rate)
            print(f"run {run} {serializer}: {cost:.3f} us CPU per tuple across the link  ({rate:,.0f} tuples/s)")
    for serializer in serializers:
        print(f"median {serializer}: {statistics.median(costs[serializer]):.3f} us CPU per tuple, "
              f"{statistics.median(rates[serializer]):,.0f} tuples/s ({args.batches:,} batches of {args.words})")


if __name__ == "__main__":
    main()
