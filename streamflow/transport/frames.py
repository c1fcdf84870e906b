"""The frames between workers: a 4-byte big-endian length and a payload, no I/O beyond
reading one frame.

A payload of messages holds ``(task, kind, payload)`` messages (see :mod:`streamflow.inbox`):
everything a worker's tasks sent to one peer since the last frame, encoded by
:mod:`streamflow.transport.codec`. A batch of tuples travels as the columns its sender's
collector filled (source task, stream, values, anchors) and becomes tuples at the
receiver, with the receiver's own :class:`~streamflow.tuples.Origin` objects.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Sequence

from streamflow.tuples import Anchors

Message = tuple[int, str, Any]
"""``(task, kind, payload)``: one inbox message addressed to a task."""
Columns = tuple[int, str, list[Sequence[Any]], list[Anchors]]
"""A TUPLES message's payload: source task, stream, values, anchors."""

LENGTH = struct.Struct(">I")
_LOAD = struct.Struct(">d")
MAX_FRAME = 256 * 1024 * 1024
"""The largest payload a receiver reads; a longer length prefix ends the connection."""


def frame_of(payload: bytes) -> bytes:
    """``payload`` with its length prefix."""
    return LENGTH.pack(len(payload)) + payload


def load_frame(load: float) -> bytes:
    """A load report (:mod:`streamflow.load`): a frame of one big-endian double, which a
    receiver writes back over each connection a peer opened to it."""
    return LENGTH.pack(_LOAD.size) + _LOAD.pack(load)


def load_of(payload: bytes) -> float | None:
    """The load a report's payload carries, or None for a payload of another size."""
    return _LOAD.unpack(payload)[0] if len(payload) == _LOAD.size else None  # type: ignore[no-any-return]


async def read_frame(reader: asyncio.StreamReader, head: bytes | None = None,
                     limit: int = MAX_FRAME) -> bytes:
    """One frame's payload; ``head``: its length bytes, when already read. A length over
    ``limit`` raises :class:`ConnectionError` before anything more is read."""
    (length,) = LENGTH.unpack(head or await reader.readexactly(LENGTH.size))
    if length > limit:
        raise ConnectionError(f"frame of {length} bytes exceeds the limit of {limit}")
    return await reader.readexactly(length)
