"""Tuples between worker processes: a worker's listener and its transport.

Every worker listens on its slot's port and opens one :class:`~streamflow.transport.link.PeerLink`
to each worker it sends to; frames are :mod:`streamflow.transport.frames`, their messages
:mod:`streamflow.transport.codec`. Messages for tasks of this worker never leave the
process: :class:`TcpTransport` hands them to an
:class:`~streamflow.transport.inproc.InProcessTransport`.

Every connection starts with the handshake of :mod:`streamflow.transport.handshake`: a
listener decodes nothing from a peer that did not prove it holds the topology's secret,
buffers at most a few KiB from it and drops it after a timeout. With TLS contexts
(:func:`streamflow.transport.tls.contexts`) the links run inside TLS, the handshake too.

The same port answers ``GET /metrics`` (Prometheus text) without a handshake, told apart
by its first four bytes, which as a frame length would exceed any handshake frame: a
worker needs no second port to be scraped (over HTTPS when the links use TLS). The
answer comes from :mod:`streamflow.httpapi`, as every role's does, behind the API token
when the worker has one.

Load reports go back over each connection a peer opened: every
:data:`~streamflow.load.LOAD_INTERVAL`, a worker measures its load and writes it to its
peers, whose links hand it to the routers of a load-aware shuffle.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus
from typing import Any, Callable, Mapping, Sequence

from streamflow.httpapi import MAX_HEAD, ApiError, HttpApi, Response, metrics_route, parse_head
from streamflow.inbox import TUPLES, Inbox
from streamflow.load import LOAD_INTERVAL, Address, CpuMeter, WorkerLoads
from streamflow.transport.codec import Codec, UnencodableValue
from streamflow.transport.frames import LENGTH, load_frame, read_frame
from streamflow.transport.handshake import HANDSHAKE_TIMEOUT, answer
from streamflow.transport.inproc import InProcessTransport
from streamflow.transport.link import PeerLink
from streamflow.tuples import Anchors, Origin

__all__ = ["Address", "Codec", "TcpTransport", "answer_http"]

log = logging.getLogger(__name__)

HTTP_GET = b"GET "
"""The first bytes of an HTTP GET, in place of a frame's length."""


class TcpTransport:
    """Delivers to local inboxes in process and to other workers over :class:`PeerLink`\\ s,
    and serves the frames peers send to this worker's tasks.

    ``metrics``: the Prometheus text that ``GET /metrics`` on the listener answers (none:
    not served), behind ``metrics_token`` if one is given. ``server_tls`` and
    ``client_tls``: the contexts of the listener and of the links, for links over TLS (both
    or neither, from :func:`streamflow.transport.tls.contexts`).
    """

    def __init__(self, inboxes: Mapping[int, Inbox], codec: Codec, secret: bytes,
                 metrics: Callable[[], bytes] | None = None, *, metrics_token: str | None = None,
                 server_tls: ssl.SSLContext | None = None, client_tls: ssl.SSLContext | None = None) -> None:
        if (server_tls is None) != (client_tls is None):
            raise ValueError("links over TLS need both a server and a client context")
        self._server_tls, self._client_tls = server_tls, client_tls
        self._inboxes = inboxes
        self._local = InProcessTransport(inboxes)
        self._http = None if metrics is None else HttpApi(metrics_route(metrics, auth=metrics_token is not None),
                                                          metrics_token)
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
            for task, message, tuples in leftover:
                rerouted = self._link(task)
                if rerouted is None:
                    self.dropped += 1
                else:
                    rerouted.enqueue(task, message, tuples)

    async def send_tuples(self, task: int, origin: Origin, values: list[Sequence[Any]],
                          anchors: list[Anchors]) -> None:
        """See :meth:`Transport.send_tuples`; raises :class:`UnencodableValue` for rows
        that cannot cross to another worker, once the batch's other rows are sent."""
        if task in self._inboxes:
            await self._local.send_tuples(task, origin, values, anchors)
            return
        link = self._link(task)
        if link is None:
            self.dropped += 1
            return
        try:
            message = self._codec.encode_tuples(task, origin.source_task, origin.stream, values, anchors)
        except UnencodableValue as exc:
            if exc.part is not None:
                await link.send_tuples(task, exc.part, len(values) - len(exc.rows))
            raise
        await link.send_tuples(task, message, len(values))

    def send_control(self, task: int, kind: str, payload: Any) -> None:
        if task in self._inboxes:
            self._local.send_control(task, kind, payload)
            return
        link = self._link(task)
        if link is None:
            self.dropped += 1
            return
        try:
            link.enqueue(task, self._codec.encode_control(task, kind, payload))
        except UnencodableValue as exc:
            self.dropped += 1
            log.error("dropped a message to task %d: %s", task, exc)

    def _link(self, task: int) -> PeerLink | None:
        address = self._routes.get(task)
        if address is None:
            return None
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = PeerLink(
                address, self._secret, self._codec, lambda load: self.loads.peer_reported(address, load),
                self._client_tls)
        return link

    async def serve(self, host: str, port: int) -> None:
        """Accept connections from peer workers on ``host:port``."""
        tls_timeout = HANDSHAKE_TIMEOUT if self._server_tls is not None else None
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True,
                                                  ssl=self._server_tls, ssl_handshake_timeout=tls_timeout)
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
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    head = await reader.readexactly(LENGTH.size)
                    if head == HTTP_GET and self._http is not None:
                        await answer_http(reader, writer, self._http)
                        return
                    await answer(reader, writer, self._secret, head)
            except TimeoutError:
                log.warning("dropped a connection from %s: no handshake within %gs", peer, HANDSHAKE_TIMEOUT)
                return
            self._peers.add(writer)
            await self._receive(reader)
        except ConnectionError as exc:  # a handshake refused, a malformed frame, a reset
            if not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                log.warning("dropped a connection from %s: %s", peer, exc)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # the peer went away; it reconnects if it comes back
        finally:
            self._peers.discard(writer)
            writer.close()

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        """Hand each message of each frame to its task's inbox, until the connection ends;
        the next frame is read only once the inbox took the last batch (backpressure)."""
        inboxes, decode = self._inboxes, self._codec.decode
        while True:
            for task, kind, payload in decode(await read_frame(reader)):
                inbox = inboxes.get(task)
                if inbox is None:
                    self.dropped += 1  # the task moved: its trees time out and replay
                elif kind == TUPLES:
                    await inbox.put_tuples(payload)
                else:
                    inbox.put_control(kind, payload)


async def answer_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, http: HttpApi) -> None:
    """Answer one HTTP GET whose first four bytes (``GET ``) were read, with ``http``. Its
    head is read up to the blank line, no further than the reader's limit (64 KiB by
    default; a longer one is a 431, as one over :data:`~streamflow.httpapi.MAX_HEAD` is);
    a GET has no body to read."""
    try:
        method, target, headers = parse_head(HTTP_GET + await reader.readuntil(b"\r\n\r\n"))
        response = http.answer(method, target, headers, lambda _: b"")
    except asyncio.LimitOverrunError:
        response = Response.error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                  f"the request's head is over {MAX_HEAD} bytes")
    except ApiError as exc:
        response = Response.error(exc.status, str(exc))
    writer.write(response.encode())
    await writer.drain()
