"""The frames between workers: a 4-byte big-endian length and a payload, no I/O beyond
reading one frame.

A payload of messages holds ``(task, kind, payload)`` messages (see :mod:`streamflow.inbox`):
everything a worker's tasks sent to one peer since the last frame, encoded by
:class:`Codec`. A batch of tuples travels as the columns its sender's
collector filled (source task, stream, values, anchors) and becomes tuples at the
receiver, with the receiver's own :class:`~streamflow.tuples.Origin` objects.
"""

from __future__ import annotations

import asyncio
import marshal
import pickle
import struct
from typing import Any, Sequence

from streamflow.topology import Topology
from streamflow.tuples import Anchors, Origin, Tuple, batch_of

Message = tuple[int, str, Any]
"""``(task, kind, payload)``: one inbox message addressed to a task."""
Columns = tuple[int, str, list[Sequence[Any]], list[Anchors]]
"""A TUPLES message's payload: source task, stream, values, anchors."""

LENGTH = struct.Struct(">I")
_LOAD = struct.Struct(">d")
MAX_FRAME = 256 * 1024 * 1024
"""The largest payload a receiver reads; a longer length prefix ends the connection."""


class Codec:
    """Turns message batches into frames and back, for one topology.

    A frame is :mod:`marshal` when every value is of a built-in type (str, bytes, numbers,
    and tuples, lists, dicts and sets of them: what topologies emit); any other value makes
    the frame pickle, which keeps its exact type. The first byte of a payload says which.
    Both trust their input (pickle runs code when loading): only authenticated peers'
    frames reach :meth:`decode`.
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
        """The whole frame (length prefix included) of ``messages``."""
        try:
            body = _MARSHAL + marshal.dumps(messages)
        except ValueError:  # a value of another type: pickle keeps it as it is
            body = _PICKLE + pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
        return LENGTH.pack(len(body)) + body

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
