"""The connection from one worker to one peer worker, which it sends frames to.

A link queues the messages its worker's tasks send to the peer and a writer task sends
everything queued as one frame per wake-up (in the spirit of Dask's ``BatchedSend``), so
one ``write`` carries many batches. Each connection starts with the handshake of
:mod:`streamflow.transport.handshake` (inside TLS when the worker has a client
:class:`ssl.SSLContext`): nothing is sent to a listener that did not prove it holds the
topology's secret. The link reconnects, with :class:`~streamflow.backoff.Backoff`,
whenever the connection or its handshake fails or the peer restarts; what a lost
connection carried is lost, and the tuple trees it held time out and replay.

Backpressure: at most :data:`LINK_CAPACITY` tuples wait in a link; past that,
:meth:`PeerLink.send_tuples` waits. A receiver reads its next frame only once the target
inbox took the last batch, so a slow task fills the TCP window, then the link, then
holds up the sending executor.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from typing import Callable

from streamflow.backoff import Backoff
from streamflow.load import Address
from streamflow.transport.codec import Codec
from streamflow.transport.frames import frame_of, load_of, read_frame
from streamflow.transport.handshake import HANDSHAKE_TIMEOUT, dial

log = logging.getLogger(__name__)

LINK_CAPACITY = 16384
"""Tuples queued for one peer before senders wait."""
RECONNECT = Backoff(initial=0.05, multiplier=2.0, maximum=1.0)
"""Delays between attempts to reach a peer: a restarting peer is back within a second
of serving its port again."""
WARN_AFTER_ATTEMPTS = 3
"""Failed connection attempts before the link says so in the log (once per outage)."""
_NO_LINGER = struct.pack("ii", 1, 0)


class PeerLink:
    """The connection to one peer worker: a queue of messages and a writer that sends
    them as one frame per wake-up, reconnecting after the peer restarts. The peer's load
    reports, read from the same connection, go to ``on_load``."""

    def __init__(self, address: Address, secret: bytes, codec: Codec,
                 on_load: Callable[[float], None] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        self._secret = secret
        self._codec = codec
        self._on_load = on_load
        self._tls = tls
        self._queue: list[tuple[int, bytes]] = []
        """(task, encoded message) of what waits for the next frame."""
        self._counts: list[int] = []
        """The tuples of each queued message."""
        self._queued_tuples = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task = asyncio.create_task(self._run(), name=f"link-{address[0]}:{address[1]}")

    async def send_tuples(self, task: int, message: bytes, tuples: int) -> None:
        """Queue an encoded batch of ``tuples`` tuples for ``task``, waiting while the link is full."""
        while self._queued_tuples >= LINK_CAPACITY:
            self._space.clear()
            await self._space.wait()
        self._queued_tuples += tuples
        self.enqueue(task, message, tuples)

    def enqueue(self, task: int, message: bytes, tuples: int = 0) -> None:
        """Queue an encoded message for ``task`` for the next frame; never waits."""
        self._queue.append((task, message))
        self._counts.append(tuples)
        self._wake.set()

    def take_queue(self) -> list[tuple[int, bytes, int]]:
        """Remove and return what was not sent yet, as (task, message, tuples), to route
        it elsewhere."""
        queue = [(task, message, n) for (task, message), n in zip(self._queue, self._counts, strict=True)]
        self._queue, self._counts = [], []
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
                reader, writer = await asyncio.wait_for(
                    _connect(self.address, self._secret, self._tls), HANDSHAKE_TIMEOUT)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                attempt += 1
                if attempt == WARN_AFTER_ATTEMPTS:
                    log.warning("cannot connect to worker %s:%d (%s); retrying", *self.address,
                                exc or type(exc).__name__)
                await asyncio.sleep(RECONNECT.delay(attempt))
                continue
            attempt = 0
            reports = asyncio.create_task(self._read_reports(reader, writer))
            try:
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
        kernel takes and loses."""
        try:
            while True:
                load = load_of(await read_frame(reader))
                if load is not None and self._on_load is not None:
                    self._on_load(load)
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
            batch, counts = self._queue, self._counts
            self._queue, self._counts = [], []
            try:
                writer.write(frame_of(self._codec.frame([message for _, message in batch])))
                await writer.drain()
            except BaseException:
                self._queue[:0], self._counts[:0] = batch, counts  # resend after reconnecting
                raise
            if writer.is_closing():
                # asyncio's drain() does not raise once a write failed (the peer died): the
                # transport just closes. What this batch carried is lost; trees replay.
                raise ConnectionResetError("the peer closed the connection")
            self._queued_tuples = max(self._queued_tuples - sum(counts), 0)
            self._space.set()


async def _connect(address: Address, secret: bytes,
                   tls: ssl.SSLContext | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An authenticated connection to ``address`` (over TLS with ``tls``), never one to itself.

    Nobody listens yet on a port in the ephemeral range, and the kernel may pick that very
    port as the source: TCP's simultaneous open then connects the socket to itself,
    holding the port its worker is about to bind. Such a connection is reset (linger 0: a
    plain close would hold the port in TIME_WAIT) and refused, before TLS starts.
    """
    reader, writer = await asyncio.open_connection(*address)
    if writer.get_extra_info("sockname") == writer.get_extra_info("peername"):
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        writer.transport.abort()
        raise ConnectionRefusedError("connected to itself: the port is not served yet")
    try:
        if tls is not None:
            await writer.start_tls(tls, server_hostname=address[0] if tls.check_hostname else None)
        await dial(reader, writer, secret)
    except BaseException:
        writer.close()
        raise
    return reader, writer
