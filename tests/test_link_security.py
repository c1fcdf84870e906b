"""The worker link against hostile peers, over real sockets: a peer without the topology
secret gets a nonce and nothing else, an oversized or slow handshake is dropped without
the worker buffering it, a process holding a worker's port does not learn the secret,
and links over TLS carry tuples between workers that hold certificates of one CA."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import ipaddress
import logging
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from cluster import free_port_run, wait_for_async
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamflow import BasicBolt, TopologyBuilder
from streamflow.errors import ConfigError
from streamflow.inbox import TUPLES, Inbox
from streamflow.testing import ListSpout
from streamflow.topology import Topology
from streamflow.transport import tcp, tls
from streamflow.transport.codec import Codec
from streamflow.transport.frames import LENGTH, frame_of
from streamflow.transport.handshake import HELLO, NONCE_SIZE, dial, proof
from streamflow.transport.tcp import TcpTransport
from streamflow.tuples import Origin

SECRET = b"0123456789abcdef-topology-secret"
Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""What a raw peer says to a worker's listener before it waits for the end."""
WORD = "w-payload-word"


def topology() -> Topology:
    builder = TopologyBuilder("secure")
    builder.set_spout("source", ListSpout([(1,)], ["word"]))
    builder.set_bolt("sink", BasicBolt(), 2).shuffle_grouping("source")
    return builder.build()


class Worker:
    """A worker's transport (listening on a free port once served) with the inbox of one
    task: the sink's second task, or its first for a ``sender``, which sends to the second."""

    def __init__(self, secret: bytes = SECRET, server_tls: ssl.SSLContext | None = None,
                 client_tls: ssl.SSLContext | None = None, sender: bool = False) -> None:
        self.topology = topology()
        self.source = self.topology.task_layout()["source"][0]
        near, far = self.topology.task_layout()["sink"]
        self.task = near if sender else far
        self.target = far
        self.inbox = Inbox(1000)
        self.port = free_port_run(1)
        self.codec = Codec(self.topology)
        self.transport = TcpTransport({self.task: self.inbox}, self.codec, secret, lambda: b"up 1\n",
                                      server_tls=server_tls, client_tls=client_tls)

    def tuples_frame(self) -> bytes:
        """A well-formed frame carrying one tuple to the task: what an attacker would send."""
        part = self.codec.encode_tuples(self.task, self.source, "default", [(WORD,)], [None])
        return frame_of(self.codec.frame([part]))

    def converse(self, conversation: Conversation) -> bytes:
        """Serve, connect as a raw peer, hold ``conversation``, then return everything the
        worker sends until it closes the connection (failing if it does not within 10 s)."""
        async def main() -> bytes:
            await self.transport.serve("127.0.0.1", self.port)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                await conversation(reader, writer)
                rest = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                return rest
            finally:
                await self.transport.close()

        return asyncio.run(main())

    def received(self) -> list[Any]:
        """The messages in the inbox, TUPLES payloads (batches) as their tuples."""
        messages = []
        while (message := self.inbox.get_nowait()) is not None:
            kind, payload = message
            messages.append((kind, payload.tuples() if kind == TUPLES else payload))
        return messages


def test_a_peer_without_the_secret_gets_a_nonce_and_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Worker()
    nonces: list[bytes] = []

    async def guess(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_nonce = b"\x01" * NONCE_SIZE
        writer.write(frame_of(HELLO + client_nonce))
        (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
        nonces.append(server_nonce := await reader.readexactly(length))
        wrong = hmac.new(b"not the secret", b"client" + client_nonce + server_nonce, hashlib.sha256).digest()
        writer.write(frame_of(wrong) + receiver.tuples_frame())

    with caplog.at_level(logging.WARNING, logger="streamflow.transport.tcp"):
        rest = receiver.converse(guess)
    assert [len(n) for n in nonces] == [NONCE_SIZE]
    assert rest == b""  # no proof, no load report, nothing: the connection is closed
    assert receiver.received() == []
    refusals = [r.getMessage() for r in caplog.records if "dropped a connection" in r.getMessage()]
    assert len(refusals) == 1 and "did not prove it holds the topology secret" in refusals[0]
    assert "\n" not in refusals[0]


def test_the_old_handshake_of_the_secret_in_clear_is_refused() -> None:
    receiver = Worker()

    async def in_clear(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame_of(SECRET) + receiver.tuples_frame())

    assert receiver.converse(in_clear) == b""
    assert receiver.received() == []


@pytest.mark.parametrize("where", ["hello", "proof"])
def test_a_huge_length_prefix_before_authenticating_is_dropped_unread(where: str) -> None:
    # 100 MiB announced, a few bytes sent: a listener that honoured the length would wait
    # for (and buffer) the rest; it must close the connection at once instead.
    receiver = Worker()

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if where == "proof":
            writer.write(frame_of(HELLO + b"\x02" * NONCE_SIZE))
            await reader.readexactly(LENGTH.size + NONCE_SIZE)
        writer.write(LENGTH.pack(100 * 1024 * 1024) + b"x" * 1024)

    assert receiver.converse(huge) == b""
    assert receiver.received() == []


def test_a_peer_that_never_completes_the_handshake_is_dropped_after_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp, "HANDSHAKE_TIMEOUT", 0.5)
    receiver = Worker()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(LENGTH.pack(100))  # a frame announced, never sent

    assert receiver.converse(stall) == b""


def test_a_listener_impostor_does_not_learn_the_secret_nor_get_a_tuple() -> None:
    # A process took the port of a restarting worker and plays the listener's part without
    # the secret. The sending worker's link must reveal neither the secret nor any tuple.
    sender_side = Worker(sender=True)
    port = free_port_run(1)
    heard: list[bytes] = []
    connections: list[int] = []

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            heard.append(await reader.readexactly(length))
            writer.write(frame_of(b"\x03" * NONCE_SIZE))
            (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
            heard.append(await reader.readexactly(length))
            writer.write(frame_of(b"\x04" * 32))  # a proof it cannot compute
            heard.append(await asyncio.wait_for(reader.read(), 10))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(impostor, "127.0.0.1", port, reuse_address=True)
        sender = sender_side.transport
        sender.update_routes({sender_side.target: ("127.0.0.1", port)})
        origin = Origin("source", sender_side.source, "default", ("word",))
        try:
            async with server:
                await sender.send_tuples(sender_side.target, origin, [(WORD,)], [None])
                await wait_for_async(lambda: len(connections) >= 2, 10, "the link to try again")
        finally:
            await sender.close()

    asyncio.run(main())
    everything = b"".join(heard)
    assert heard and heard[0].startswith(HELLO)
    assert SECRET not in everything and SECRET.hex().encode() not in everything
    assert WORD.encode() not in everything
    # what it did get is a proof bound to the nonces of that one connection
    assert heard[1] == proof(SECRET, b"client", heard[0][len(HELLO):], b"\x03" * NONCE_SIZE)


def test_workers_with_different_secrets_exchange_nothing(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Worker(secret=b"the right secret")
    sender_side = Worker(secret=b"another topology's secret", sender=True)

    def refusals() -> int:
        return sum("did not prove" in r.getMessage() for r in caplog.records)

    async def main() -> None:
        await receiver.transport.serve("127.0.0.1", receiver.port)
        sender = sender_side.transport
        sender.update_routes({receiver.task: ("127.0.0.1", receiver.port)})
        origin = Origin("source", receiver.source, "default", ("word",))
        try:
            await sender.send_tuples(receiver.task, origin, [(WORD,)], [None])
            await wait_for_async(lambda: refusals() >= 2, 10, "the link refused twice")
        finally:
            await sender.close()
            await receiver.transport.close()

    with caplog.at_level(logging.WARNING, logger="streamflow.transport"):
        asyncio.run(main())
    assert receiver.received() == []


def test_a_garbled_frame_from_an_authenticated_peer_drops_its_connection_with_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    receiver = Worker()

    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await dial(reader, writer, SECRET)
        writer.write(receiver.tuples_frame() + frame_of(b"\x91\x93\x01\xa6tuples\xc1"))

    with caplog.at_level(logging.WARNING, logger="streamflow.transport.tcp"):
        assert receiver.converse(garble) == b""
    [(kind, tuples)] = receiver.received()  # the frame before the garbled one was delivered
    assert kind == TUPLES and [t.values for t in tuples] == [(WORD,)]
    [line] = [r.getMessage() for r in caplog.records if "dropped a connection" in r.getMessage()]
    assert "undecodable frame" in line and "\n" not in line


def test_the_worker_port_still_answers_metrics_without_a_handshake() -> None:
    receiver = Worker()

    async def scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")

    answer = receiver.converse(scrape)
    assert answer.startswith(b"HTTP/1.0 200 OK") and answer.endswith(b"up 1\n")


# --------------------------------------------------------------------------- TLS


def write_certificates(where: Path, ip: str | None = None) -> tuple[Path, Path, Path]:
    """A throwaway CA and one certificate it signed (naming ``ip``, for a client that checks
    host names): (cert, key, ca) PEM files."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamflow test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "worker")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))
    if ip is not None:
        cert = cert.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                  critical=False)
    cert = cert.sign(ca_key, hashes.SHA256())
    paths = where / "worker.pem", where / "worker.key", where / "ca.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths


def test_tuples_travel_between_workers_over_tls(tmp_path: Path) -> None:
    server_tls, client_tls = tls.contexts(*write_certificates(tmp_path))
    receiver = Worker(server_tls=server_tls, client_tls=client_tls)
    sender_side = Worker(server_tls=server_tls, client_tls=client_tls, sender=True)

    async def main() -> tuple[list[Any], bytes]:
        await receiver.transport.serve("127.0.0.1", receiver.port)
        sender = sender_side.transport
        sender.update_routes({receiver.task: ("127.0.0.1", receiver.port)})
        origin = Origin("source", receiver.source, "default", ("word",))
        try:
            await sender.send_tuples(receiver.task, origin, [(WORD,), ("two",)], [(1, 2), None])
            await wait_for_async(lambda: len(receiver.inbox), 10, "the tuples over TLS")
            # A peer speaking plain TCP gets no answer but the end of the connection.
            reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
            writer.write(frame_of(HELLO + b"\x05" * NONCE_SIZE))
            plain = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return receiver.received(), plain
        finally:
            await sender.close()
            await receiver.transport.close()

    messages, plain = asyncio.run(main())
    [(kind, tuples)] = messages
    assert kind == TUPLES and [(t.values, t.anchors) for t in tuples] == [((WORD,), (1, 2)), (("two",), None)]
    assert HELLO not in plain and b"\x05" * NONCE_SIZE not in plain


def test_tls_contexts_refuse_missing_files_in_one_line(tmp_path: Path) -> None:
    cert, key, ca = write_certificates(tmp_path)
    with pytest.raises(ConfigError, match=r"^TLS certificate .*missing\.pem"):
        tls.contexts(tmp_path / "missing.pem", key, ca)
    with pytest.raises(ConfigError, match=r"^TLS CA .*worker\.key"):
        tls.contexts(cert, key, key)
