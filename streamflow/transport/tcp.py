"""Tuples between worker processes: a worker's listener and its transport.

Every worker listens on its slot's port and opens one :class:`~streamflow.transport.link.PeerLink`
to each worker it sends to; frames are :mod:`streamflow.transport.frames`. Messages for
tasks of this worker never leave the process: :class:`TcpTransport` hands them to an
:class:`~streamflow.transport.inproc.InProcessTransport`.

The first frame of each connection must be the topology's secret: a listener drops a
connection that does not present it, before decoding anything from it. Worker ports
should be reachable only by workers (the Kubernetes manifests add a NetworkPolicy).

The same port answers ``GET /metrics`` (Prometheus text), told apart by its first four
bytes, which as a frame length would exceed :data:`~streamflow.transport.frames.MAX_FRAME`:
a worker needs no second port to be scraped.

Load reports go back over each connection a peer opened: every
:data:`~streamflow.load.LOAD_INTERVAL`, a worker measures its load and writes it to its
peers, whose links hand it to the routers of a load-aware shuffle.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Callable, Mapping, Sequence

from streamflow.inbox import TUPLES, Inbox
from streamflow.load import LOAD_INTERVAL, Address, CpuMeter, WorkerLoads
from streamflow.transport.frames import LENGTH, Codec, load_frame, read_frame
from streamflow.transport.inproc import InProcessTransport
from streamflow.transport.link import PeerLink
from streamflow.tuples import Anchors, Origin

__all__ = ["Address", "Codec", "TcpTransport", "answer_http"]

log = logging.getLogger(__name__)

HTTP_GET = b"GET "
"""The first bytes of an HTTP GET, in place of a frame's length."""
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class TcpTransport:
    """Delivers to local inboxes in process and to other workers over :class:`PeerLink`\\ s,
    and serves the frames peers send to this worker's tasks."""

    def __init__(self, inboxes: Mapping[int, Inbox], codec: Codec, secret: bytes,
                 metrics: Callable[[], bytes] | None = None) -> None:
        self._inboxes = inboxes
        self._local = InProcessTransport(inboxes)
        self._metrics = metrics
        self._codec = codec
        self._secret = secret
        self._routes: dict[int, Address] = {}
        self._links: dict[Address, PeerLink] = {}
        self._server: asyncio.AbstractServer | None = None
        self._peers: set[asyncio.StreamWriter] = set()
        """Connections of peers sending to this worker: where load reports go."""
        self._reporter: asyncio.Task[None] | None = None
        self.loads = WorkerLoads(inboxes)
        self.dropped = 0
        """Messages for tasks with no known address (their trees time out and replay)."""

    def update_routes(self, routes: Mapping[int, Address]) -> None:
        """Follow a new assignment: where each remote task now runs. Links to addresses no
        longer used are closed and what they still held is routed anew."""
        self._routes = dict(routes)
        self.loads.follow(self._routes)
        wanted = set(self._routes.values())
        for address in [a for a in self._links if a not in wanted]:
            link = self._links.pop(address)
            leftover = link.take_queue()
            asyncio.ensure_future(link.close())
            for task, kind, payload in leftover:
                self._send_remote(task, kind, payload)

    async def send_tuples(self, task: int, origin: Origin, values: list[Sequence[Any]],
                          anchors: list[Anchors]) -> None:
        if task in self._inboxes:
            await self._local.send_tuples(task, origin, values, anchors)
            return
        link = self._link(task)
        if link is None:
            self.dropped += 1
            return
        await link.send_tuples(task, (origin.source_task, origin.stream, values, anchors))

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        if task in self._inboxes:
            self._local.send_control(task, kind, payload)
        else:
            self._send_remote(task, kind, payload)

    def _send_remote(self, task: int, kind: str, payload: Any) -> None:
        link = self._link(task)
        if link is None:
            self.dropped += 1
        else:
            link.enqueue((task, kind, payload))

    def _link(self, task: int) -> PeerLink | None:
        address = self._routes.get(task)
        if address is None:
            return None
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = PeerLink(
                address, self._secret, lambda load: self.loads.peer_reported(address, load))
        return link

    async def serve(self, host: str, port: int) -> None:
        """Accept connections from peer workers on ``host:port``."""
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self._reporter = asyncio.create_task(self._report_loads(), name="load-reports")

    async def _report_loads(self) -> None:
        """Measure this worker's load every LOAD_INTERVAL and tell the peers sending to it."""
        meter = CpuMeter()
        while True:
            await asyncio.sleep(LOAD_INTERVAL)
            load = meter.sample()
            self.loads.measured(load)
            frame = load_frame(load)
            for writer in self._peers:
                writer.write(frame)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._reporter is not None:
            self._reporter.cancel()
        for link in self._links.values():
            await link.close()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            head = await reader.readexactly(LENGTH.size)
            if head == HTTP_GET and self._metrics is not None:
                await answer_http(reader, writer, self._metrics)
                return
            if not hmac.compare_digest(await read_frame(reader, head), self._secret):
                log.warning("refused a connection from %s: wrong topology secret", peer)
                return
            self._peers.add(writer)
            await self._receive(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            pass  # the peer went away; it reconnects if it comes back
        finally:
            self._peers.discard(writer)
            writer.close()

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        """Hand each message of each frame to its task's inbox, until the connection ends;
        the next frame is read only once the inbox took the last batch (backpressure)."""
        inboxes, codec = self._inboxes, self._codec
        while True:
            for task, kind, payload in codec.decode(await read_frame(reader)):
                inbox = inboxes.get(task)
                if inbox is None:
                    self.dropped += 1  # the task moved: its trees time out and replay
                elif kind == TUPLES:
                    await inbox.put_tuples(codec.tuples(payload))
                else:
                    inbox.put_control(kind, payload)


async def answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      metrics: Callable[[], bytes]) -> None:
    """Answer one HTTP GET whose first four bytes were read: ``/metrics`` with
    ``metrics()`` as Prometheus text, any other path 404. A request head over 64 KiB
    raises :class:`asyncio.LimitOverrunError`."""
    request = await reader.readuntil(b"\r\n\r\n")
    path = request.split(b" ", 1)[0].split(b"?", 1)[0]
    if path == b"/metrics":
        status, content_type, body = "200 OK", PROMETHEUS_TEXT, metrics()
    else:
        status, content_type, body = "404 Not Found", "text/plain", b"only /metrics here\n"
    writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    await writer.drain()
