"""PeerLink against the one failure that real TCP has and a fake would not: a connection
attempt to a port nobody serves yet that the kernel connects to itself."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from cluster import free_port_run

from streamflow.transport.tcp import PeerLink


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
        link = PeerLink(("127.0.0.1", port), secret)
        try:
            deadline = asyncio.get_running_loop().time() + 5
            while len(attempts) <= 3 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)  # a link that kept its first connection dials no more
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

    assert asyncio.run(main()) == secret
    assert len(attempts) >= 4
