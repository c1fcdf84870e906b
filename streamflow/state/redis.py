"""The redis state provider: checkpointed state kept durably in a Redis server.

``topology.state.redis.url`` names the server: ``redis://[:PASSWORD@]HOST:PORT/DB``, or
``rediss://...`` for TLS. Query parameters tune redis-py's client
(``?socket_timeout=10``). Keys are namespaced by topology name::

    streamflow:{topology}:epoch                         the coordinator epoch (INCR)
    streamflow:{topology}:checkpoint                    the last committed checkpoint (JSON)
    streamflow:{topology}:state:{component}:{g}         key group g's data: key -> value
    streamflow:{topology}:state:{component}:{g}:pending     its pending changes
    streamflow:{topology}:state:{component}:{g}:pending_at  their checkpoint, "epoch txid"

A pending change is a field ``b"s" + key`` holding the new value, or ``b"d" + key``
(empty) for a deletion. Each step that must be atomic (prepare, commit, the settling of
pending changes at restore, the epoch-checked checkpoint write) is one Lua script, and
one round trip for all of a task's key groups.

A call that cannot reach the server raises redis-py's ``ConnectionError`` or
``TimeoutError`` after one retry (a pooled connection the server dropped reconnects),
within about twice :data:`SOCKET_TIMEOUT`: the caller reports it and tries again. Every
script is safe to run twice.
"""

from __future__ import annotations

import re
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
"""Restore reads a key group larger than this with HSCAN (a few thousand keys a round
trip, never blocking the server for long) rather than one HGETALL."""
SCAN_COUNT = 10_000
FETCH_BATCH = 200_000
"""Restore reads small groups with pipelines of HGETALLs of about this many keys."""

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

local function fold(data, pending)
  local changes = redis.call('HGETALL', pending)
  local sets, dels = {}, {}
  for i = 1, #changes, 2 do
    local field = changes[i]
    if string.byte(field, 1) == 115 then  -- 's': a value
      sets[#sets + 1] = string.sub(field, 2)
      sets[#sets + 1] = changes[i + 1]
    else  -- 'd': a deletion
      dels[#dels + 1] = string.sub(field, 2)
    end
  end
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
  if at then
    if upto and at_or_below(at, e, t) then
      fold(data, pending)
    end
  end
  redis.call('DEL', pending, pending_at)
end
"""

_PREPARE = _LUA_COMMON + """
-- KEYS: epoch, then data, pending, pending_at of each group.
-- ARGV: at's epoch and txid, committed's epoch and txid ('' when none), then for each
-- group the number of pending fields and field, value pairs.
-- Returns 0, or the newer epoch that fences this prepare (nothing written).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return current
end
local at = ARGV[1] .. ' ' .. ARGV[2]
local committed = ARGV[3] ~= ''
local ce, ct = tonumber(ARGV[3]), tonumber(ARGV[4])
local a = 5
for k = 2, #KEYS, 3 do
  settle(KEYS[k], KEYS[k + 1], KEYS[k + 2], committed, ce, ct)
  local last = a + 2 * tonumber(ARGV[a])
  for i = a + 1, last, 1000 do
    redis.call('HSET', KEYS[k + 1], unpack(ARGV, i, math.min(i + 999, last)))
  end
  redis.call('SET', KEYS[k + 2], at)
  a = last + 1
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

_WRITE_CHECKPOINT = """
-- KEYS: epoch, checkpoint. ARGV: the record's epoch, the record.
-- Returns 0, or the newer epoch that fences this record (nothing written).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > tonumber(ARGV[1]) then
  return current
end
redis.call('SET', KEYS[2], ARGV[2])
return 0
"""


# ----------------------------------------------------------------------------- store


class RedisStore(StateStore):
    """One component's state in Redis: a hash per key group."""

    def __init__(self, provider: RedisProvider, component: str) -> None:
        self._provider = provider
        self._client = provider.client
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
        sizes = self._provider.settle(keys=keys, args=_id_args(upto))
        data: dict[bytes, bytes] = {}
        small: list[str] = []
        batch = 0
        for data_key, size in zip(keys[::3], sizes):
            if size > SCAN_ABOVE:
                for _key, value in self._client.hscan_iter(data_key, count=SCAN_COUNT):
                    data[_key] = value
            elif size:
                small.append(data_key)
                batch += size
                if batch >= FETCH_BATCH:
                    self._fetch(small, data)
                    small, batch = [], 0
        self._fetch(small, data)
        return data

    def _fetch(self, data_keys: list[str], into: dict[bytes, bytes]) -> None:
        """HGETALL of each of ``data_keys``, pipelined, into ``into``."""
        if not data_keys:
            return
        with self._client.pipeline(transaction=False) as pipe:
            for data_key in data_keys:
                pipe.hgetall(data_key)
            for found in pipe.execute():
                into.update(found)

    def prepare(self, at: CheckpointId, changes: Changes, committed: CheckpointId | None) -> None:
        args: list[bytes | str | int] = [*_id_args(at), *_id_args(committed)]
        for group_changes in changes.values():
            args.append(len(group_changes))
            for key, value in group_changes.items():
                if value is None:
                    args += (b"d" + key, b"")
                else:
                    args += (b"s" + key, value)
        keys = [self._provider.epoch_key, *self._keys(changes)]
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
        self.settle = self.client.register_script(_SETTLE)
        self._write_checkpoint = self.client.register_script(_WRITE_CHECKPOINT)

    def store(self, component: str) -> StateStore:
        return RedisStore(self, component)

    def begin_epoch(self) -> int:
        return int(self.client.incr(self.epoch_key))

    def read_checkpoint(self) -> dict[str, Any] | None:
        found = self.client.get(self.checkpoint_key)
        return None if found is None else dict(orjson.loads(found))  # type: ignore[arg-type]

    def write_checkpoint(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        newer = self._write_checkpoint(keys=[self.epoch_key, self.checkpoint_key],
                                       args=[epoch, orjson.dumps(dict(record))])
        if newer:
            raise Fenced(f"checkpoint {epoch}.{record.get('txid')} refused: epoch {newer} has begun")

    def close(self) -> None:
        self.client.close()
