"""The handshake that opens every worker link: both ends prove that they hold the
topology's secret, and the secret never crosses the wire.

Mutual challenge-response over HMAC-SHA256, in four frames:

1. the dialling worker sends ``HELLO`` and a random nonce ``a``;
2. the listening worker answers with a random nonce ``b``;
3. the dialler sends ``HMAC(secret, "client" | a | b)``;
4. the listener checks it, and only then answers ``HMAC(secret, "server" | a | b)``,
   which the dialler checks before it sends anything else.

Fresh nonces on both sides make every proof good for one connection only, and the two
labels keep one side's proof from being replayed as the other's. A peer without the
secret gets a nonce from the listener, nothing more, and is dropped. A listener
impostor (a process that took a worker's port while it restarted) gets a proof bound to
its own nonce, which no real listener will ask for, and no tuple.

Until it completes, a frame may hold at most :data:`MAX_HANDSHAKE_FRAME` bytes and the
whole handshake must finish within :data:`HANDSHAKE_TIMEOUT`: an unauthenticated peer
can make a worker buffer no more than that, nor hold a connection longer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

from streamflow.transport.frames import frame_of, read_frame

HELLO = b"streamflow-link/1"
"""What a dialling worker's first frame starts with: the protocol and its version."""
NONCE_SIZE = 32
MAX_HANDSHAKE_FRAME = 4096
"""The longest frame read before the peer proved it holds the secret."""
HANDSHAKE_TIMEOUT = 10.0
"""Seconds a handshake may take, TLS's included, before the connection is dropped."""
_SERVER, _CLIENT = b"server", b"client"


class HandshakeError(ConnectionError):
    """The peer does not hold the topology's secret, or does not speak the protocol."""


def proof(secret: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What the side playing ``role`` sends to prove it holds ``secret``, for one
    connection's nonces."""
    return hmac.new(secret, role + client_nonce + server_nonce, hashlib.sha256).digest()


async def dial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> None:
    """The dialling side: returns once both sides proved they hold ``secret``; raises
    :class:`HandshakeError` otherwise."""
    client_nonce = secrets.token_bytes(NONCE_SIZE)
    writer.write(frame_of(HELLO + client_nonce))
    server_nonce = await read_frame(reader, limit=MAX_HANDSHAKE_FRAME)
    if len(server_nonce) != NONCE_SIZE:
        raise HandshakeError("the listener does not speak the worker link protocol")
    writer.write(frame_of(proof(secret, _CLIENT, client_nonce, server_nonce)))
    server_proof = await read_frame(reader, limit=MAX_HANDSHAKE_FRAME)
    if not hmac.compare_digest(server_proof, proof(secret, _SERVER, client_nonce, server_nonce)):
        raise HandshakeError("the listener did not prove it holds the topology secret")


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes,
                 head: bytes) -> None:
    """The listening side, the dialler's first 4 bytes (``head``) already read: returns
    once the dialler proved it holds ``secret``; raises :class:`HandshakeError` otherwise."""
    hello = await read_frame(reader, head, limit=MAX_HANDSHAKE_FRAME)
    client_nonce = hello[len(HELLO):]
    if not hello.startswith(HELLO) or len(client_nonce) != NONCE_SIZE:
        raise HandshakeError("not a worker link's hello")
    server_nonce = secrets.token_bytes(NONCE_SIZE)
    writer.write(frame_of(server_nonce))
    client_proof = await read_frame(reader, limit=MAX_HANDSHAKE_FRAME)
    if not hmac.compare_digest(client_proof, proof(secret, _CLIENT, client_nonce, server_nonce)):
        raise HandshakeError("the peer did not prove it holds the topology secret")
    writer.write(frame_of(proof(secret, _SERVER, client_nonce, server_nonce)))
