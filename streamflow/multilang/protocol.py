"""Storm's multilang wire format, as bytes in and messages out: no pipes, no processes.

A component process reads messages from its stdin and writes its own to its stdout.
Storm's JSON serializer frames each message as JSON text followed by a line ``end``;
pystorm's msgpack serializer (``streamparse_run -s msgpack``) writes bare msgpack values,
which frame themselves. Messages to a component are dicts (the handshake, a tuple for a
bolt, a command for a spout) or lists (the task ids an emit went to); messages from it
are dicts with a ``command`` (``emit``, ``ack``, ``fail``, ``log``, ``error``, ``sync``,
``metrics``), except the handshake's answer ``{"pid": N}``.

Storm's host dies on any byte of stdout it cannot parse: a ``print()`` in a component
kills it (streamparse#432). The decoders here tell protocol from other output and hand
back both: a line that is not part of a message is the component's output, which the
host logs while the protocol goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import orjson

SERIALIZERS = ("json", "msgpack")

END = b"\nend\n"
Message = dict[str, Any]


class Codec(ABC):
    """Encodes messages to a component and decodes what it writes back."""

    name = ""

    @abstractmethod
    def encode(self, message: Any) -> bytes:
        """One message (a dict, or a list of task ids), framed."""

    @abstractmethod
    def encode_tuple(self, head: bytes, values: Sequence[Any], tuple_id: str) -> bytes:
        """A tuple for a bolt: ``head`` is :meth:`tuple_head` of its origin."""

    @abstractmethod
    def tuple_head(self, component: str, stream: str, task: int) -> bytes:
        """What every tuple from one (component, stream, task) shares, encoded once."""

    @abstractmethod
    def feed(self, data: bytes) -> tuple[list[Message], list[str]]:
        """Bytes read from the component: the whole messages they complete, and the
        lines of other output they hold, in the order read."""

    def rest(self) -> list[str]:
        """Output left over at the end of the stream (a last line without a newline)."""
        return []


class JsonCodec(Codec):
    """Storm's ``JsonSerializer``: JSON text, then a line ``end``.

    A message usually sits on one line (every multilang library writes it so). The
    decoder takes a line that parses as a JSON object with a ``command`` (or ``pid``),
    followed by ``end``, as a message; lines of a message split over several lines are
    joined up to their ``end``. Every other line is output: a printed line between two
    messages, a printed JSON value that is not a message, or lines in front of a
    message that only parses without them.
    """

    name = "json"

    def __init__(self) -> None:
        self._tail = b""
        self._pending: Message | None = None
        """A one-line message waiting for its ``end`` line."""
        self._pending_line = b""
        self._partial: list[bytes] = []
        """Lines of a message that did not parse on its own line."""

    def encode(self, message: Any) -> bytes:
        return orjson.dumps(message) + END

    def tuple_head(self, component: str, stream: str, task: int) -> bytes:
        return b'{"comp":' + orjson.dumps(component) + b',"stream":' + orjson.dumps(stream) + \
            b',"task":' + str(task).encode() + b',"tuple":'

    def encode_tuple(self, head: bytes, values: Sequence[Any], tuple_id: str) -> bytes:
        return b"".join((head, orjson.dumps(values), b',"id":"', tuple_id.encode(), b'"}\nend\n'))

    def feed(self, data: bytes) -> tuple[list[Message], list[str]]:
        messages: list[Message] = []
        output: list[str] = []
        lines = (self._tail + data).split(b"\n") if self._tail else data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line == b"end":
                self._end(messages, output)
            elif self._partial:
                self._partial.append(line)
            elif line[:1] == b"{":
                message = _message(line)
                if message is None:
                    self._flush_pending(output)
                    self._partial.append(line)
                else:
                    self._flush_pending(output)  # what waited for its end was output
                    self._pending, self._pending_line = message, line
            else:
                output.append(_text(line))
        return messages, output

    def rest(self) -> list[str]:
        output: list[str] = []
        self._flush_pending(output)
        output.extend(_text(line) for line in self._partial)
        self._partial = []
        if self._tail:
            output.append(_text(self._tail))
            self._tail = b""
        return output

    def _end(self, messages: list[Message], output: list[str]) -> None:
        if self._pending is not None:
            messages.append(self._pending)
            self._pending = None
            return
        lines, self._partial = self._partial, []
        for start in range(len(lines)):  # the message is the longest tail that parses
            message = _message(b"\n".join(lines[start:]))
            if message is not None:
                output.extend(_text(line) for line in lines[:start])
                messages.append(message)
                return
        output.extend(_text(line) for line in lines)
        output.append("end")

    def _flush_pending(self, output: list[str]) -> None:
        if self._pending is not None:
            output.append(_text(self._pending_line))
            self._pending = None


class MsgpackCodec(Codec):
    """pystorm's ``MsgpackSerializer``: one msgpack value per message, no framing.

    Output that is not protocol can only be told apart as far as msgpack allows: bytes
    of printed ASCII text decode as small integers, which are put back together as the
    line they were; a printed byte that starts a longer msgpack value can swallow the
    message after it, which is lost.
    """

    name = "msgpack"

    def __init__(self) -> None:
        import msgpack

        self._packb = msgpack.packb
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._text = bytearray()

    def encode(self, message: Any) -> bytes:
        return bytes(self._packb(message))

    def tuple_head(self, component: str, stream: str, task: int) -> bytes:
        # a map of 5 entries whose first four are fixed; the values and id follow
        return b"\x85" + self._packb("comp") + self._packb(component) + self._packb("stream") + \
            self._packb(stream) + self._packb("task") + self._packb(task) + self._packb("tuple")

    def encode_tuple(self, head: bytes, values: Sequence[Any], tuple_id: str) -> bytes:
        return b"".join((head, self._packb(values), self._packb("id"), self._packb(tuple_id)))

    def feed(self, data: bytes) -> tuple[list[Message], list[str]]:
        self._unpacker.feed(data)
        messages: list[Message] = []
        output: list[str] = []
        for value in self._unpacker:
            if isinstance(value, dict) and ("command" in value or "pid" in value):
                self._flush_text(output)
                messages.append(value)
            elif isinstance(value, int) and 0 <= value < 128:
                if value == 10:
                    self._flush_text(output)
                else:
                    self._text.append(value)
            else:
                self._flush_text(output)
                output.append(repr(value))
        return messages, output

    def rest(self) -> list[str]:
        output: list[str] = []
        self._flush_text(output)
        return output

    def _flush_text(self, output: list[str]) -> None:
        if self._text:
            output.append(self._text.decode("ascii", "replace").rstrip("\r"))
            self._text.clear()


def codec(name: str) -> Codec:
    """A new codec for one component process: ``json`` or ``msgpack``."""
    if name == "json":
        return JsonCodec()
    if name == "msgpack":
        try:
            return MsgpackCodec()
        except ImportError:
            raise ImportError("the msgpack serializer needs the msgpack package "
                              "(pip install msgpack) in streamflow's environment") from None
    raise ValueError(f"unknown multilang serializer {name!r} (known: {', '.join(SERIALIZERS)})")


def _message(text: bytes) -> Message | None:
    """``text`` as a message from a component, or None if it is not one."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and ("command" in value or "pid" in value):
        return value
    return None


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace")
