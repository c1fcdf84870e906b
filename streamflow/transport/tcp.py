"""Tuples between worker processes: batched frames over TCP.

Every worker listens on its slot's port and opens one connection to each worker it
sends to. A frame is a 4-byte big-endian length and a list of ``(task, kind, payload)``
messages (see :class:`Codec`): everything a worker's tasks sent to one peer since the
last frame (in the spirit of Dask's ``BatchedSend``), so one ``write`` carries many
batches. A batch of tuples travels as the columns its sender's collector filled
(source task, stream, values, anchors) and becomes tuples at the receiver, with the
receiver's own :class:`~streamflow.tuples.Origin` objects.

Frames are decoded with marshal or pickle, which trust their input (pickle runs code
when loading): the first frame of each connection is the topology's secret, and a
worker drops a connection that does not present it. Worker ports should be reachable
only by workers (the Kubernetes manifests add a NetworkPolicy).

The same port answers ``GET /metrics`` (Prometheus text), told apart by the first four
bytes, which as a frame length would exceed :data:`MAX_FRAME`: a worker needs no second
port to be scraped.

Load reports go the other way: every :data:`~streamflow.load.LOAD_INTERVAL`, a worker
writes its load (:mod:`streamflow.load`) as a frame of one big-endian double back over
each connection a peer opened to it, and the peer's link hands it to the routers of a
load-aware shuffle.

Backpressure: a receiver reads the next frame only once the target inbox took the last
batch, so a slow task fills the TCP window, the sender's link queue fills, and the
sending executor waits in :meth:`TcpTransport.send_tuples`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import marshal
import pickle
import socket
import struct
from typing import Any, Callable, Mapping, Sequence

from streamflow.inbox import TUPLES, Inbox
from streamflow.load import LOAD_INTERVAL, Address, CpuMeter, WorkerLoads
from streamflow.topology import Topology
from streamflow.tuples import Anchors, Origin, Tuple, batch_of

log = logging.getLogger(__name__)

Message = tuple[int, str, Any]
Columns = tuple[int, str, list[Sequence[Any]], list[Anchors]]
"""A TUPLES message's payload: source task, stream, values, anchors."""

_LENGTH = struct.Struct(">I")
_LOAD = struct.Struct(">d")
_NO_LINGER = struct.pack("ii", 1, 0)
MAX_FRAME = 256 * 1024 * 1024
LINK_CAPACITY = 16384
"""Tuples queued for one peer before senders wait."""
RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)
HTTP_GET = b"GET "
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Codec:
    """Turns message batches into frames and back, for one topology.

    A frame is :mod:`marshal` when every value is of a built-in type (str, bytes, numbers,
    and tuples, lists, dicts and sets of them: what topologies emit), about a third faster
    than pickle both ways; any other value makes the frame pickle, which keeps its exact
    type. The first byte of a frame says which.
    """

    def __init__(self, topology: Topology) -> None:
        owner = {t: c for c, ts in topology.task_layout().items() for t in ts}
        self._origins: dict[tuple[int, str], Origin] = {}
        for task, component in owner.items():
            spec = topology.components.get(component)
            if spec is not None:
                for stream, fields in spec.outputs.items():
                    self._origins[(task, stream)] = Origin(component, task, stream, fields)

    @staticmethod
    def encode(messages: list[Message]) -> bytes:
        try:
            body = _MARSHAL + marshal.dumps(messages)
        except ValueError:  # a value of another type: pickle keeps it as it is
            body = _PICKLE + pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
        return _LENGTH.pack(len(body)) + body

    @staticmethod
    def decode(frame: bytes) -> list[Message]:
        """The messages of a frame's payload (as :func:`read_frame` returns it)."""
        kind, body = frame[:1], memoryview(frame)[1:]
        if kind == _MARSHAL:
            return marshal.loads(body)  # type: ignore[no-any-return]
        if kind == _PICKLE:
            return pickle.loads(body)  # type: ignore[no-any-return]
        raise ConnectionError(f"frame of unknown format {kind!r}")

    def tuples(self, columns: Columns) -> list[Tuple]:
        """The tuples of a TUPLES message's payload."""
        task, stream, values, anchors = columns
        return batch_of(self._origins[(task, stream)], values, anchors)


_MARSHAL, _PICKLE = b"M", b"P"


async def read_frame(reader: asyncio.StreamReader, head: bytes | None = None) -> bytes:
    """One frame's payload; ``head``: its length bytes, when already read."""
    (length,) = _LENGTH.unpack(head or await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ConnectionError(f"frame of {length} bytes exceeds the limit")
    return await reader.readexactly(length)


class PeerLink:
    """The connection to one peer worker: a queue of messages and a writer that sends
    them as one frame per wake-up, reconnecting after the peer restarts. The peer's load
    reports, read from the same connection, go to ``on_load``."""

    def __init__(self, address: Address, secret: bytes,
                 on_load: Callable[[float], None] | None = None) -> None:
        self.address = address
        self._secret = secret
        self._on_load = on_load
        self._queue: list[Message] = []
        self._queued_tuples = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task = asyncio.create_task(self._run(), name=f"link-{address[0]}:{address[1]}")

    async def send_tuples(self, task: int, columns: Columns) -> None:
        while self._queued_tuples >= LINK_CAPACITY:
            self._space.clear()
            await self._space.wait()
        self._queued_tuples += len(columns[2])
        self.enqueue((task, TUPLES, columns))

    def enqueue(self, message: Message) -> None:
        self._queue.append(message)
        self._wake.set()

    def take_queue(self) -> list[Message]:
        """Remove and return what was not sent yet (to route it elsewhere)."""
        queue, self._queue = self._queue, []
        self._queued_tuples = 0
        self._space.set()
        return queue

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._space.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                reader, writer = await asyncio.open_connection(*self.address)
                if writer.get_extra_info("sockname") == writer.get_extra_info("peername"):
                    # Nobody listens yet on a port in the ephemeral range, and the kernel
                    # picked that very port as our source: TCP's simultaneous open connected
                    # the socket to itself, holding the port its worker is about to bind.
                    # Reset it (linger 0): a plain close would hold the port in TIME_WAIT.
                    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                               _NO_LINGER)
                    writer.transport.abort()
                    raise ConnectionRefusedError("connected to itself: the port is not served yet")
            except OSError as exc:
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                if attempt == 2:
                    log.warning("cannot connect to worker %s:%d (%s); retrying", *self.address, exc)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            attempt = 0
            reports = asyncio.create_task(self._read_reports(reader, writer))
            try:
                writer.write(_LENGTH.pack(len(self._secret)) + self._secret)
                await self._write_loop(writer)
            except Exception as exc:  # uvloop raises RuntimeError on a transport closed under us
                log.warning("connection to worker %s:%d lost (%r); reconnecting", *self.address, exc)
            finally:
                reports.cancel()
                writer.close()

    async def _read_reports(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Hand each load report of the peer to ``on_load``, until the connection ends;
        then close it and wake the write loop, which reconnects. An idle write loop would
        otherwise learn that the peer is gone only from its next write, whose batch the
        kernel takes and loses (a killed worker's checkpoint reports, say)."""
        try:
            while True:
                frame = await read_frame(reader)
                if len(frame) == _LOAD.size and self._on_load is not None:
                    self._on_load(_LOAD.unpack(frame)[0])
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            writer.close()
            self._wake.set()

    async def _write_loop(self, writer: asyncio.StreamWriter) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            # Woken by the first batch of a loop turn: let the tasks that run after it in
            # the turn queue theirs too, so that one frame carries the whole turn's batches.
            await asyncio.sleep(0)
            if writer.is_closing():
                raise ConnectionResetError("the peer closed the connection")
            batch = self._queue
            self._queue = []
            sent_tuples = sum(len(p[2]) for _, kind, p in batch if kind == TUPLES)
            try:
                writer.write(Codec.encode(batch))
                await writer.drain()
            except BaseException:
                self._queue[:0] = batch  # resend after reconnecting
                raise
            if writer.is_closing():
                # asyncio's drain() does not raise once a write failed (the peer died): the
                # transport just closes. What this batch carried is lost; trees replay.
                raise ConnectionResetError("the peer closed the connection")
            self._queued_tuples = max(self._queued_tuples - sent_tuples, 0)
            self._space.set()


class TcpTransport:
    """Delivers to local inboxes directly and to other workers over :class:`PeerLink`\\ s."""

    def __init__(self, inboxes: Mapping[int, Inbox], codec: Codec, secret: bytes,
                 metrics: Callable[[], bytes] | None = None) -> None:
        self._inboxes = inboxes
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
                self._deliver_later(task, kind, payload)

    def _deliver_later(self, task: int, kind: str, payload: Any) -> None:
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

    async def send_tuples(self, task: int, origin: Origin, values: list[Sequence[Any]],
                          anchors: list[Anchors]) -> None:
        inbox = self._inboxes.get(task)
        if inbox is not None:
            await inbox.put_tuples(batch_of(origin, values, anchors))
            return
        link = self._link(task)
        if link is None:
            self.dropped += 1
            return
        await link.send_tuples(task, (origin.source_task, origin.stream, values, anchors))

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        inbox = self._inboxes.get(task)
        if inbox is not None:
            inbox.put_control(kind, payload)
        else:
            self._deliver_later(task, kind, payload)

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
            frame = _LENGTH.pack(_LOAD.size) + _LOAD.pack(load)
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
            head = await reader.readexactly(_LENGTH.size)
            if head == HTTP_GET and self._metrics is not None:
                await _answer_http(reader, writer, self._metrics)
                return
            if not hmac.compare_digest(await read_frame(reader, head), self._secret):
                log.warning("refused a connection from %s: wrong topology secret", peer)
                return
            self._peers.add(writer)
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
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            pass  # the peer went away; it reconnects if it comes back
        finally:
            self._peers.discard(writer)
            writer.close()


async def _answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       metrics: Callable[[], bytes]) -> None:
    """Answer one HTTP GET (its first four bytes already read): /metrics, else 404."""
    request = await reader.readuntil(b"\r\n\r\n")  # LimitOverrunError past 64 KiB
    path = request.split(b" ", 1)[0].split(b"?", 1)[0]
    if path == b"/metrics":
        status, content_type, body = "200 OK", PROMETHEUS_TEXT, metrics()
    else:
        status, content_type, body = "404 Not Found", "text/plain", b"only /metrics here\n"
    writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    await writer.drain()
