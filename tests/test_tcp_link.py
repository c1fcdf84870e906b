"""PeerLink over real TCP: against the one failure that real TCP has and a fake would
not (a connection attempt to a port nobody serves yet that the kernel connects to
itself), carrying load reports back to the sender, reconnecting to a restarted peer, and
carrying on past a value it cannot encode (real worker processes). The handshake, TLS and
hostile peers: tests/test_link_security.py."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, free_port_run, wait_for, wait_for_async

from streamflow import BasicBolt, TopologyBuilder
from streamflow.inbox import Inbox
from streamflow.testing import ListSpout
from streamflow.topology import Topology
from streamflow.transport.codec import Codec
from streamflow.transport.frames import LENGTH, read_frame
from streamflow.transport.handshake import HELLO, answer
from streamflow.transport.link import PeerLink
from streamflow.transport.tcp import TcpTransport
from streamflow.tuples import Origin


def test_a_link_that_connected_to_itself_lets_go_of_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # When a worker dials a peer whose worker is not listening yet, and the kernel picks the
    # peer's port as the source port (possible when it lies in the ephemeral range), TCP's
    # simultaneous open connects the socket to itself. Binding the source port forces that
    # here. A link that kept such a connection would hold the port: its worker could not
    # start, and the link would write its frames to itself.
    port, secret = free_port_run(1), b"s3cret"
    connect = asyncio.open_connection
    attempts: list[Any] = []

    async def self_connecting(host: str, to: int, **kwargs: Any) -> Any:
        attempts.append(to)
        if len(attempts) <= 3:
            kwargs["local_addr"] = (host, to)
        return await connect(host, to, **kwargs)

    async def main() -> bytes:
        monkeypatch.setattr(asyncio, "open_connection", self_connecting)
        link = PeerLink(("127.0.0.1", port), secret, Codec(one_bolt()))
        try:
            # A link that kept its first connection would dial no more.
            await wait_for_async(lambda: len(attempts) > 3, 5, "a fourth dial")
            received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

            async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                size = struct.unpack(">I", await reader.readexactly(4))[0]
                received.set_result(await reader.readexactly(size))
                writer.close()

            server = await asyncio.start_server(serve, "127.0.0.1", port)  # the port is free again
            async with server:
                return await asyncio.wait_for(received, 10)
        finally:
            await link.close()

    assert asyncio.run(main()).startswith(HELLO)  # its handshake, to the real listener
    assert len(attempts) >= 4


def one_bolt() -> Topology:
    builder = TopologyBuilder("link")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("sink", BasicBolt(), 2).shuffle_grouping("source")
    return builder.build()


def test_a_worker_learns_the_load_of_the_worker_it_sends_to() -> None:
    # The receiving worker measures its load and writes it back over the connection the
    # sender opened; the sender's routers read it by task (load-aware shuffle).
    builder = TopologyBuilder("loads")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    builder.set_bolt("sink", BasicBolt(), 2).shuffle_grouping("source")
    topology = builder.build()
    near, far = topology.task_layout()["sink"]
    source = topology.task_layout()["source"][0]
    port, secret = free_port_run(1), b"s3cret"

    async def main() -> tuple[float | None, float | None, int]:
        codec = Codec(topology)
        receiver = TcpTransport({far: Inbox(100)}, codec, secret)
        await receiver.serve("127.0.0.1", port)
        sender = TcpTransport({near: Inbox(100)}, codec, secret)
        sender.update_routes({far: ("127.0.0.1", port)})
        origin = Origin("source", source, "default", ("n",))
        try:
            await sender.send_tuples(far, origin, [(1,)], [None])  # opens the link
            await wait_for_async(lambda: sender.loads.load_of(far) is not None, 10, "the far worker's load",
                                 every=0.05)
            return sender.loads.load_of(far), sender.loads.load_of(near), receiver.loads.load_version
        finally:
            await sender.close()
            await receiver.close()

    far_load, near_load, measurements = asyncio.run(main())
    assert far_load is not None and 0.0 <= far_load <= 1.0
    assert near_load is None  # the sender serves no port here, so it measures nothing
    assert measurements >= 1


def test_a_message_sent_after_an_idle_peer_died_reaches_its_next_process() -> None:
    # The peer worker dies (its connections close) while the link has nothing to send; a
    # new process serves the port again. The link's next message must reach it: a link
    # that learned of the death only from its next write lost that write to the dead
    # connection (a killed worker's checkpoint reports went that way).
    port, secret = free_port_run(1), b"s3cret"
    codec = Codec(one_bolt())

    async def main() -> list[Any]:
        frames: list[Any] = []
        peers: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer)
            try:
                await answer(reader, writer, secret, await reader.readexactly(LENGTH.size))
                while True:
                    frames.append(codec.decode(await read_frame(reader)))
            except asyncio.IncompleteReadError:
                pass

        link = PeerLink(("127.0.0.1", port), secret, codec)
        try:
            server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True)
            link.enqueue(1, codec.encode_control(1, "checkpoint_done", "first"))
            await wait_for_async(lambda: len(frames) == 1, 10, "the first frame")
            server.close()
            for peer in peers:  # the process dies: the kernel closes its connections
                peer.transport.abort()
            await server.wait_closed()
            server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True)
            async with server:
                await wait_for_async(lambda: len(peers) == 2, 10, "the link reconnecting by itself")
                link.enqueue(1, codec.encode_control(1, "checkpoint_done", "second"))
                await wait_for_async(lambda: len(frames) == 2, 10, "the second frame")
            return frames
        finally:
            await link.close()

    assert asyncio.run(main()) == [[(1, "checkpoint_done", "first")], [(1, "checkpoint_done", "second")]]


UNENCODABLE = """
import threading
from streamflow import BasicBolt, TopologyBuilder
from streamflow.testing import ListSpout

class Explode(BasicBolt):
    outputs = ["n", "payload"]

    def prepare(self, config, context):
        self.seen = set()

    def process(self, tup):
        n = tup[0]
        first = n not in self.seen
        self.seen.add(n)
        self.emit((n, threading.Lock() if first and n % 10 == 0 else n))

class Sink(BasicBolt):
    def prepare(self, config, context):
        self.path = config["output.path"]

    def process(self, tup):
        with open(self.path, "a") as out:
            out.write(f"{tup[0]}\\n")

def build(config):
    b = TopologyBuilder("unencodable")
    b.set_spout("numbers", ListSpout([(i,) for i in range(200)], ["n"]))
    b.set_bolt("explode", Explode(), 2).fields_grouping("numbers", ["n"])
    b.set_bolt("sink", Sink(), 4).fields_grouping("explode", ["n"])
    return b.build()
"""


def test_a_value_that_cannot_cross_to_another_worker_fails_its_tuple_and_the_link_goes_on(
        cluster: Cluster, tmp_path: Path) -> None:
    # Every tenth number is first emitted with a lock beside it. Those routed to a sink task
    # in the other worker cannot be encoded: the tuple fails (its number is replayed, and
    # goes through the second time), the error names the component and the type, and the
    # other tuples to that worker keep flowing over the same link.
    (tmp_path / "code").mkdir()
    topology, out = tmp_path / "code" / "unencodable.py", tmp_path / "numbers.txt"
    topology.write_text(UNENCODABLE)
    result = cluster.cli("submit", str(topology), "--name", "unencodable", "--workers", "2",
                         "-c", "topology.message.timeout.secs=5", "-c", f"output.path={out}")
    assert result.returncode == 0, result.stderr

    def written() -> set[int]:
        return {int(line) for line in out.read_text().split("\n")[:-1]} if out.exists() else set()

    wait_for(lambda: written() == set(range(200)), 90, "every number written")
    status = wait_for(lambda: (s := cluster.status("unencodable"))["errors"].get("explode") and s, 30,
                      "the encoding error in status")
    assert "_thread.lock" in status["errors"]["explode"][-1]["message"]
    assert "topology.serializer.register" in status["errors"]["explode"][-1]["message"]
    spout = wait_for(lambda: (c := cluster.status("unencodable")["components"]["numbers"])["replayed"] and c, 30,
                     "replays in status")
    assert spout["replayed"] > 0
    assert "__worker" not in status["errors"]
