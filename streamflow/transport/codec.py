"""How task messages become the bytes of a frame and back, for one topology.

A message is encoded once, when a task sends it (so a value that cannot be encoded fails
there, in the task that emitted it, and never reaches a link); a frame joins the encoded
messages queued for one peer. The envelope of every message is msgpack:
``(task, kind, payload)``. What is inside depends on the kind:

- acker traffic (ACK_INIT, ACK_ACK, ACK_FAIL, TREE_DONE, TREE_FAILED) is the engine's own
  integers and travels as msgpack arrays and maps; its lists come back as tuples;
- a batch of tuples is ``(source task, stream, form, rows, anchors)``: rows that are all
  tuples, or all lists, of scalars travel as msgpack arrays (``form`` says which container
  they come back as); any other rows travel as one blob of the topology's serializer;
- any other control message (checkpoints) is ``(form, blob)`` of the topology's serializer.

The serializer is ``topology.serializer``: ``msgpack`` (the default) carries data only,
exactly (a tuple comes back a tuple, a list a list), and the types of
``topology.serializer.register`` (:mod:`streamflow.transport.registry`); a receiver
refuses any other form. ``pickle`` carries any picklable value, and loads what peers
send with pickle, which runs code: a topology that chooses it trusts every peer.

:meth:`Codec.decode` turns any malformed frame into :class:`FrameError`, never another
exception: the receiver drops the connection with one line in its log.
"""

from __future__ import annotations

import marshal
import pickle
from itertools import chain
from typing import Any, Callable, Sequence

import msgpack

from streamflow.inbox import (
    ACK_ACK,
    ACK_FAIL,
    ACK_INIT,
    BARRIER,
    CHECKPOINT,
    CHECKPOINT_ALERT,
    CHECKPOINT_DONE,
    TICK,
    TREE_DONE,
    TREE_FAILED,
    TUPLES,
)
from streamflow.topology import Topology
from streamflow.transport.base import UnencodableValue
from streamflow.transport.frames import Message
from streamflow.transport.registry import RegisteredType, resolve
from streamflow.tuples import Anchors, Batch, Origin


class FrameError(ConnectionError):
    """A frame that does not decode to well-formed messages: the connection is dropped."""


TUPLES_OF_SCALARS, LISTS_OF_SCALARS, DATA, MARSHAL, PICKLE = range(5)
"""Forms of rows (and of control payloads: DATA, MARSHAL or PICKLE)."""
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_ROW_TYPES = frozenset({tuple, list})
_ANCHOR_TYPES = frozenset({tuple, type(None)})
_ENGINE_KINDS = {ACK_INIT: tuple, ACK_ACK: dict, ACK_FAIL: tuple, TREE_DONE: tuple, TREE_FAILED: tuple}
"""Acker traffic, and the container its payload decodes to."""
_CONTROL_KINDS = frozenset({TICK, CHECKPOINT, BARRIER, CHECKPOINT_DONE, CHECKPOINT_ALERT})
"""The other kinds of :mod:`streamflow.inbox`: payloads of the topology's serializer."""
_TUPLE, _BIG_INT, _SET, _FROZENSET = 1, 2, 3, 4
_FIRST_REGISTERED = 16
"""msgpack extension codes: tuples, ints beyond 64 bits, sets; registered types from 16."""


def _big_int_ext(value: Any) -> msgpack.ExtType:
    """An int msgpack's 64 bits cannot hold (a root id placed on a local acker can pass 2**64)."""
    if type(value) is not int:
        kind = type(value)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise TypeError(f"a value of type {name} is not data")
    return msgpack.ExtType(_BIG_INT, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _envelope_ext(code: int, data: bytes) -> Any:
    if code != _BIG_INT:
        raise FrameError(f"unexpected extension {code} in a frame's envelope")
    return int.from_bytes(data, "big", signed=True)


class _Data:
    """msgpack with exact types: tuples, sets and ints beyond 64 bits as extensions, and
    the registered types as theirs."""

    def __init__(self, registered: list[RegisteredType]) -> None:
        self._codes = {t.cls: (_FIRST_REGISTERED + i, t.to_data) for i, t in enumerate(registered)}
        self._decoders = {_FIRST_REGISTERED + i: t.from_data for i, t in enumerate(registered)}

    def dumps(self, value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True, strict_types=True,  # type: ignore[no-any-return]
                             default=self._default)

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=self._ext)

    def _default(self, value: Any) -> msgpack.ExtType:
        kind = type(value)
        if kind is tuple:
            return msgpack.ExtType(_TUPLE, self.dumps(list(value)))
        if kind is set or kind is frozenset:
            return msgpack.ExtType(_SET if kind is set else _FROZENSET, self.dumps(list(value)))
        registered = self._codes.get(kind)
        if registered is not None:
            return msgpack.ExtType(registered[0], self.dumps(registered[1](value)))
        return _big_int_ext(value)

    def _ext(self, code: int, data: bytes) -> Any:
        if code == _TUPLE:
            return tuple(self.loads(data))
        if code == _BIG_INT:
            return int.from_bytes(data, "big", signed=True)
        if code == _SET:
            return set(self.loads(data))
        if code == _FROZENSET:
            return frozenset(self.loads(data))
        decode = self._decoders.get(code)
        if decode is None:
            raise FrameError(f"a value of unregistered extension type {code}")
        return decode(self.loads(data))


class Codec:
    """Encodes the messages a worker's tasks send to tasks of other workers, and decodes
    the frames peers send, for one topology (its origins, serializer and registered types)."""

    def __init__(self, topology: Topology) -> None:
        owner = {t: c for c, ts in topology.task_layout().items() for t in ts}
        self._origins: dict[tuple[int, str], Origin] = {}
        for task, component in owner.items():
            spec = topology.components.get(component)
            if spec is not None:
                for stream, fields in spec.outputs.items():
                    self._origins[(task, stream)] = Origin(component, task, stream, fields)
        self.serializer: str = topology.config.get("topology.serializer", "msgpack")
        self._data = _Data(resolve(topology.config.get("topology.serializer.register", ())))
        self._envelope = msgpack.Packer(use_bin_type=True, default=_big_int_ext)
        self._trusting = self.serializer == "pickle"

    # ------------------------------------------------------------------ encoding

    def encode_tuples(self, task: int, source_task: int, stream: str, values: list[Sequence[Any]],
                      anchors: list[Anchors]) -> bytes:
        """A TUPLES message for ``task``, of a batch of one origin as columns. Raises
        :class:`UnencodableValue` if some rows cannot be encoded (its ``part`` holds the others)."""
        try:
            form, rows = self._rows(values)
            return self._envelope.pack((task, TUPLES, (source_task, stream, form, rows, anchors)))
        except (TypeError, ValueError, OverflowError, pickle.PicklingError) as exc:
            first_error = exc
        bad = [i for i, row in enumerate(values) if not self._encodes(row)] or list(range(len(values)))
        gone = set(bad)
        kept = [i for i in range(len(values)) if i not in gone]
        part = self.encode_tuples(task, source_task, stream, [values[i] for i in kept],
                                  [anchors[i] for i in kept]) if kept else None
        raise UnencodableValue(f"cannot send {len(bad)} tuple(s) on stream {stream!r} to another worker: "
                               f"{first_error}; {self._advice()}", bad, part)

    def encode_control(self, task: int, kind: str, payload: Any) -> bytes:
        """Any other message for ``task``; raises :class:`UnencodableValue` (with no
        ``part``) if its payload cannot be encoded."""
        try:
            if kind in _ENGINE_KINDS:
                return self._envelope.pack((task, kind, payload))
            return self._envelope.pack((task, kind, self._blob(payload)))
        except (TypeError, ValueError, OverflowError, pickle.PicklingError) as exc:
            raise UnencodableValue(f"cannot send a {kind} message to another worker: {exc}; {self._advice()}",
                                   [], None) from None

    def frame(self, parts: list[bytes]) -> bytes:
        """The frame payload of encoded messages: a msgpack array of them."""
        return self._envelope.pack_array_header(len(parts)) + b"".join(parts)

    def _rows(self, values: list[Sequence[Any]]) -> tuple[int, Any]:
        containers = set(map(type, values))
        if len(containers) == 1 and set(map(type, chain.from_iterable(values))) <= _SCALARS:
            container = next(iter(containers))
            if container is tuple:
                return TUPLES_OF_SCALARS, values
            if container is list:
                return LISTS_OF_SCALARS, values
        return self._blob(values)

    def _blob(self, value: Any) -> tuple[int, bytes]:
        if not self._trusting:
            return DATA, self._data.dumps(value)
        try:
            return MARSHAL, marshal.dumps(value)
        except ValueError:  # a value of another type: pickle keeps it as it is
            return PICKLE, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def _encodes(self, row: Any) -> bool:
        try:
            self._blob(row)
        except (TypeError, ValueError, OverflowError, pickle.PicklingError):
            return False
        return True

    def _advice(self) -> str:
        if self._trusting:
            return "values must be picklable"
        return ("topology.serializer msgpack carries None, bool, int, float, str, bytes, lists, tuples, "
                "dicts and sets of them: register other types with topology.serializer.register")

    # ------------------------------------------------------------------ decoding

    def decode(self, payload: bytes) -> list[Message]:
        """The messages of a frame's payload, TUPLES payloads as
        :class:`~streamflow.tuples.Batch`; :class:`FrameError` if it is malformed."""
        try:
            messages = msgpack.unpackb(payload, use_list=False, raw=False, strict_map_key=False,
                                       ext_hook=_envelope_ext)
        except FrameError:
            raise
        except Exception as exc:  # msgpack's errors are ValueError, TypeError and more
            raise FrameError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
        if type(messages) is not tuple:
            raise FrameError("a frame that is not a list of messages")
        return [self._message(message) for message in messages]

    def _message(self, message: Any) -> Message:
        if type(message) is not tuple or len(message) != 3:
            raise FrameError("a message that is not (task, kind, payload)")
        task, kind, payload = message
        if type(task) is not int or type(kind) is not str:
            raise FrameError(f"a message for task {task!r} of kind {kind!r}")
        if kind == TUPLES:
            return task, kind, self._tuples(payload)
        container = _ENGINE_KINDS.get(kind)
        if container is not None:
            if type(payload) is not container:
                raise FrameError(f"a {kind} message whose payload is a {type(payload).__name__}")
            return task, kind, payload
        if kind not in _CONTROL_KINDS:
            raise FrameError(f"a message of unknown kind {kind!r}")
        return task, kind, self._unblob(payload)

    def _tuples(self, payload: Any) -> Batch:
        try:
            source_task, stream, form, rows, anchors = payload
            origin = self._origins[(source_task, stream)]
        except (TypeError, ValueError, KeyError):
            raise FrameError("a batch of tuples of no known origin") from None
        if form == LISTS_OF_SCALARS:
            try:
                rows = list(map(list, rows))
            except TypeError:
                raise FrameError(f"a malformed batch of tuples on stream {stream!r}") from None
        elif form != TUPLES_OF_SCALARS:
            rows = self._unblob((form, rows))
        # Containers only, at C speed: a batch that passes becomes tuples whose values and
        # anchors are sequences, whatever an authenticated peer sent.
        if (type(anchors) is not tuple or not isinstance(rows, (list, tuple)) or len(rows) != len(anchors)
                or not set(map(type, rows)) <= _ROW_TYPES or not set(map(type, anchors)) <= _ANCHOR_TYPES):
            raise FrameError(f"a malformed batch of tuples on stream {stream!r}")
        return Batch(origin, rows, anchors)  # type: ignore[arg-type]

    def _unblob(self, payload: Any) -> Any:
        try:
            form, blob = payload
        except (TypeError, ValueError):
            raise FrameError("a payload that is not (form, data)") from None
        if form == DATA:
            return _guarded(self._data.loads, blob)
        if not self._trusting:
            raise FrameError(f"a payload of form {form!r} refused: topology.serializer is msgpack (data only)")
        if form == MARSHAL:
            return _guarded(marshal.loads, blob)
        if form == PICKLE:
            return _guarded(pickle.loads, blob)
        raise FrameError(f"a payload of unknown form {form!r}")


def _guarded(loads: Callable[[bytes], Any], blob: Any) -> Any:
    if type(blob) is not bytes:
        raise FrameError("a payload's data is not bytes")
    try:
        return loads(blob)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"undecodable payload ({type(exc).__name__}: {exc})") from None
