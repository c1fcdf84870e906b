"""The redis state provider: checkpointed state kept durably in a Redis server.

``topology.state.redis.url`` names the server: ``redis://[:PASSWORD@]HOST:PORT/DB``, or
``rediss://...`` for TLS. Query parameters tune redis-py's client
(``?socket_timeout=10``). Keys are namespaced by topology name::

    streamflow:{topology}:epoch                     the coordinator epoch (INCR)
    streamflow:{topology}:checkpoint                the last committed checkpoint (JSON)
    streamflow:{topology}:state:{component}:{g}     key group g's data, a hash: key -> value
    streamflow:{topology}:state:{component}:{g}:pending     its pending changes
    streamflow:{topology}:state:{component}:{g}:pending_at  their checkpoint, "epoch txid"

A group's pending changes are one string, MessagePack's
``[[key, value, key, value, ...], [deleted key, ...]]``: Python writes it with a join,
and the scripts that fold it read it with Redis's built-in ``cmsgpack``. (A hash of a
field per change cost redis-py seconds to send for a million changes, and Lua a loop
to fold.) Each step that must be atomic (prepare, commit, the settling of pending
changes at restore, the epoch-checked checkpoint write) is one Lua script, one round
trip for all of a task's key groups.

A call that cannot reach the server raises redis-py's ``ConnectionError`` or
``TimeoutError`` after one retry (a pooled connection the server dropped reconnects),
within about twice :data:`SOCKET_TIMEOUT`: the caller reports it and tries again. Every
script is safe to run twice.
"""

from __future__ import annotations

import re
import struct
from itertools import accumulate, pairwise
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from streamflow.errors import ConfigError
from streamflow.state.store import Changes, CheckpointId, Fenced, StateProvider, StateStore

URL_CONFIG = "topology.state.redis.url"
SOCKET_TIMEOUT = 5.0
"""Seconds a connect, a send or a read may wait before redis-py gives up."""
SCAN_ABOVE = 50_000
"""Restore reads a key group larger than this with HSCAN, :data:`SCAN_COUNT` keys a
round trip, so that no reply blocks the server long."""
SCAN_COUNT = 10_000
FETCH_BATCH = 200_000
"""Restore reads smaller groups together, about this many keys a round trip."""

_EXPECTED = "expected redis://[:PASSWORD@]HOST:PORT/DB or rediss://[:PASSWORD@]HOST:PORT/DB"


def check_url(url: str) -> None:
    """Raise :class:`ConfigError`, one line naming the problem, unless ``url`` is a redis
    URL the provider can use. Connects to nothing."""
    problem = _url_problem(url)
    if problem:
        raise ConfigError(f"config '{URL_CONFIG}': {_EXPECTED}, got {_redacted(url)!r} ({problem})")


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return f"a {type(url).__name__}, not a string"
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            return "the scheme must be redis or rediss"
        if not url[len(scheme) + 1:].startswith("//"):
            return "no '//' after the scheme"
        if not parts.hostname:
            return "no host"
        port = parts.port
    except ValueError as error:  # a port that is not a number or out of range, a bad IPv6 host
        return str(error)
    if port == 0:
        return "port 0"
    if parts.path not in ("", "/") and not re.fullmatch(r"/[0-9]+", parts.path):
        return f"the database must be a number, as in /0, not {parts.path!r}"
    try:
        parse_url(url)  # what redis-py makes of the query parameters
    except ValueError as error:
        return str(error)
    return None


def _redacted(url: Any) -> Any:
    """``url`` with its password replaced by ``***``, fit for an error message."""
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}{slash}{path}"


# ----------------------------------------------------------------------------- scripts

_LUA_COMMON = """
local function at_or_below(at, e, t)
  local sp = string.find(at, ' ', 1, true)
  local ae, atx = tonumber(string.sub(at, 1, sp - 1)), tonumber(string.sub(at, sp + 1))
  return ae < e or (ae == e and atx <= t)
end

-- Apply a group's pending changes, [[key, value, key, value, ...], [deleted key, ...]]
-- as MessagePack, to its data.
local function fold(data, pending)
  local blob = redis.call('GET', pending)
  if not blob then
    return
  end
  local changes = cmsgpack.unpack(blob)
  local sets, dels = changes[1], changes[2]
  for i = 1, #sets, 1000 do
    redis.call('HSET', data, unpack(sets, i, math.min(i + 999, #sets)))
  end
  for i = 1, #dels, 1000 do
    redis.call('HDEL', data, unpack(dels, i, math.min(i + 999, #dels)))
  end
end

-- Fold pending changes at or below (e, t) into data, discard later ones (all of them
-- when upto is false).
local function settle(data, pending, pending_at, upto, e, t)
  local at = redis.call('GET', pending_at)
  if at and upto and at_or_below(at, e, t) then
    fold(data, pending)
  end
  redis.call('DEL', pending, pending_at)
end
"""

_PREPARE = _LUA_COMMON + """
-- KEYS: epoch, then data, pending, pending_at of each group.
-- ARGV: at's epoch and txid, committed's epoch and txid ('' when none), then each
-- group's pending changes. Returns 0, or the newer epoch that fences this prepare
-- (then nothing is written).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return current
end
local at = ARGV[1] .. ' ' .. ARGV[2]
local committed = ARGV[3] ~= ''
local ce, ct = tonumber(ARGV[3]), tonumber(ARGV[4])
for k = 2, #KEYS, 3 do
  settle(KEYS[k], KEYS[k + 1], KEYS[k + 2], committed, ce, ct)
  redis.call('SET', KEYS[k + 1], ARGV[4 + (k + 1) / 3])
  redis.call('SET', KEYS[k + 2], at)
end
return 0
"""

_COMMIT = _LUA_COMMON + """
-- KEYS: data, pending, pending_at of each group. ARGV: the committed epoch and txid.
local e, t = tonumber(ARGV[1]), tonumber(ARGV[2])
for k = 1, #KEYS, 3 do
  local at = redis.call('GET', KEYS[k + 2])
  if at and at_or_below(at, e, t) then
    fold(KEYS[k], KEYS[k + 1])
    redis.call('DEL', KEYS[k + 1], KEYS[k + 2])
  end
end
return 0
"""

_SETTLE = _LUA_COMMON + """
-- KEYS: data, pending, pending_at of each group. ARGV: upto's epoch and txid ('' when
-- none). Returns each group's number of keys once settled.
local upto = ARGV[1] ~= ''
local e, t = tonumber(ARGV[1]), tonumber(ARGV[2])
local sizes = {}
for k = 1, #KEYS, 3 do
  settle(KEYS[k], KEYS[k + 1], KEYS[k + 2], upto, e, t)
  sizes[#sizes + 1] = redis.call('HLEN', KEYS[k])
end
return sizes
"""

# A reply of many small strings costs redis-py's parser microseconds each (five seconds
# for a million keys); two strings, the lengths and the bytes, cost it nothing.
_PACK = """
local lengths, parts, n = {}, {}, 0
local function pack(items)
  for i = 1, #items do
    n = n + 1
    lengths[n] = #items[i]
    parts[n] = items[i]
  end
end
"""

_READ = _PACK + """
-- KEYS: data keys. Returns their keys' and values' lengths (decimal, separated by
-- spaces) and those keys and values, key, value, key..., concatenated.
for k = 1, #KEYS do
  pack(redis.call('HGETALL', KEYS[k]))
end
return {table.concat(lengths, ' '), table.concat(parts)}
"""

_SCAN = _PACK + """
-- KEYS: a data key. ARGV: an HSCAN cursor and count. Returns the next cursor, then what
-- _READ returns of the keys found.
local found = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
pack(found[2])
return {found[1], table.concat(lengths, ' '), table.concat(parts)}
"""

_WRITE_CHECKPOINT = """
-- KEYS: epoch, checkpoint. ARGV: the record's epoch, the record.
-- Returns 0, or the newer epoch that fences this record (then nothing is written).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return current
end
redis.call('SET', KEYS[2], ARGV[2])
return 0
"""

_STR32 = struct.Struct(">BI").pack
"""A MessagePack str 32 header: 0xdb, then the length."""


def _pending(changes: Mapping[bytes, bytes | None]) -> bytes:
    """A group's changes as its pending changes: [[key, value, ...], [deleted key, ...]]
    in MessagePack, which the scripts' ``cmsgpack`` reads without a loop of Lua."""
    sets: list[bytes] = []
    dels: list[bytes] = []
    for key, value in changes.items():
        if value is None:
            dels += (_STR32(0xDB, len(key)), key)
        else:
            sets += (_STR32(0xDB, len(key)), key, _STR32(0xDB, len(value)), value)
    return b"".join((b"\x92\xdd", (len(sets) // 2).to_bytes(4, "big"), *sets,
                     b"\xdd", (len(dels) // 2).to_bytes(4, "big"), *dels))


def _unpack(lengths: bytes, joined: bytes, into: dict[bytes, bytes]) -> None:
    """Add the keys and values that _READ or _SCAN packed to ``into``."""
    offsets = accumulate(map(int, lengths.split()), initial=0)
    parts = iter([joined[start:stop] for start, stop in pairwise(offsets)])
    into.update(zip(parts, parts, strict=True))


# ----------------------------------------------------------------------------- store


class RedisStore(StateStore):
    """One component's state in Redis: a hash per key group."""

    def __init__(self, provider: RedisProvider, component: str) -> None:
        self._provider = provider
        self._prefix = f"{provider.prefix}:state:{component}:"

    def _keys(self, groups: Iterable[int]) -> list[str]:
        """Data, pending and pending_at keys of each of ``groups``, in order."""
        keys: list[str] = []
        for g in groups:
            data = f"{self._prefix}{int(g)}"
            keys += (data, f"{data}:pending", f"{data}:pending_at")
        return keys

    def restore(self, upto: CheckpointId | None, groups: Iterable[int]) -> dict[bytes, bytes]:
        keys = self._keys(groups)
        if not keys:
            return {}
        provider = self._provider
        sizes = provider.settle_script(keys=keys, args=_id_args(upto))
        data: dict[bytes, bytes] = {}
        batch: list[str] = []
        batch_size = 0
        for data_key, size in zip(keys[::3], sizes, strict=True):
            if size > SCAN_ABOVE:
                cursor = b"0"
                while True:
                    cursor, lengths, joined = provider.scan_script(keys=[data_key], args=[cursor, SCAN_COUNT])
                    _unpack(lengths, joined, data)
                    if cursor == b"0":
                        break
            elif size:
                batch.append(data_key)
                batch_size += size
                if batch_size >= FETCH_BATCH:
                    self._read(batch, data)
                    batch, batch_size = [], 0
        if batch:
            self._read(batch, data)
        return data

    def _read(self, data_keys: list[str], into: dict[bytes, bytes]) -> None:
        lengths, joined = self._provider.read_script(keys=data_keys)
        _unpack(lengths, joined, into)

    def prepare(self, at: CheckpointId, changes: Changes, committed: CheckpointId | None) -> None:
        keys = [self._provider.epoch_key, *self._keys(changes)]
        args = [*_id_args(at), *_id_args(committed), *map(_pending, changes.values())]
        newer = self._provider.prepare_script(keys=keys, args=args)
        if newer:
            raise Fenced(f"checkpoint {at[0]}.{at[1]} refused: epoch {newer} has begun")

    def commit(self, at: CheckpointId, groups: Iterable[int]) -> None:
        keys = self._keys(groups)
        if keys:
            self._provider.commit_script(keys=keys, args=_id_args(at))


def _id_args(at: CheckpointId | None) -> tuple[int, int] | tuple[str, str]:
    return ("", "") if at is None else (int(at[0]), int(at[1]))


# ----------------------------------------------------------------------------- provider


class RedisProvider(StateProvider):
    """A topology's state and checkpoint record in the Redis server at ``url``.

    Raises :class:`ConfigError` for a malformed ``url``; connects at the first call.
    """

    def __init__(self, url: str, topology: str) -> None:
        check_url(url)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        self.prefix = f"streamflow:{topology}"
        self.epoch_key = f"{self.prefix}:epoch"
        self.checkpoint_key = f"{self.prefix}:checkpoint"
        self.prepare_script = self.client.register_script(_PREPARE)
        self.commit_script = self.client.register_script(_COMMIT)
        self.settle_script = self.client.register_script(_SETTLE)
        self.read_script = self.client.register_script(_READ)
        self.scan_script = self.client.register_script(_SCAN)
        self._write_checkpoint = self.client.register_script(_WRITE_CHECKPOINT)

    def store(self, component: str) -> StateStore:
        return RedisStore(self, component)

    def begin_epoch(self) -> int:
        return int(self.client.incr(self.epoch_key))

    def read_checkpoint(self) -> dict[str, Any] | None:
        found = self.client.get(self.checkpoint_key)
        return None if found is None else dict(orjson.loads(found))

    def write_checkpoint(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        newer = self._write_checkpoint(keys=[self.epoch_key, self.checkpoint_key],
                                       args=[epoch, orjson.dumps(dict(record))])
        if newer:
            raise Fenced(f"checkpoint {epoch}.{record.get('txid')} refused: epoch {newer} has begun")

    def close(self) -> None:
        self.client.close()
