"""The state provider contract, run against every provider: memory, and redis against a
real redis-server. Then what only the redis provider has: durability across a server
restart, errors of an unreachable server, URL checks, round trips."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from cluster import wait_for
from redis_server import RedisServer, unique_topology

import streamflow.state.redis as redis_state
from streamflow.errors import ConfigError
from streamflow.state.memory import MemoryProvider
from streamflow.state.redis import RedisProvider, check_url
from streamflow.state.store import Fenced, StateProvider

Reopen = Callable[[], StateProvider]


@pytest.fixture(params=["memory", "redis"])
def opened(request: pytest.FixtureRequest) -> Iterator[tuple[StateProvider, Reopen]]:
    """A provider of a topology of its own, and how to open that topology's provider again
    (a new redis client; the same memory provider, whose state lives in it)."""
    made: list[StateProvider] = []
    if request.param == "memory":
        memory = MemoryProvider()

        def reopen() -> StateProvider:
            return memory
    else:
        url = request.getfixturevalue("redis_server").url
        topology = unique_topology()

        def reopen() -> StateProvider:
            made.append(RedisProvider(url, topology))
            return made[-1]

    yield reopen(), reopen
    for provider in made:
        provider.close()


@pytest.fixture
def provider(opened: tuple[StateProvider, Reopen]) -> StateProvider:
    return opened[0]


# ----------------------------------------------------------------------------- the contract


def test_an_empty_store_restores_nothing(provider: StateProvider) -> None:
    store = provider.store("counter")
    assert store.restore(None, [0, 1, 2]) == {}
    assert store.restore((1, 1), [0, 1, 2]) == {}
    assert store.restore((1, 1), []) == {}
    assert provider.read_checkpoint() is None


def test_prepared_and_committed_changes_are_restored(opened: tuple[StateProvider, Reopen]) -> None:
    provider, reopen = opened
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b'"a"': b"1", b'"b"': b"2"}, 5: {b'"c"': b"3"}}, None)
    store.commit((epoch, 1), [0, 5])
    assert store.restore((epoch, 1), [0, 5]) == {b'"a"': b"1", b'"b"': b"2", b'"c"': b"3"}
    again = reopen().store("counter")
    assert again.restore((epoch, 1), [0, 5]) == {b'"a"': b"1", b'"b"': b"2", b'"c"': b"3"}
    assert again.restore((epoch, 1), [5]) == {b'"c"': b"3"}


def test_deletions_remove_keys(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1", b"b": b"2"}}, None)
    store.commit((epoch, 1), [0])
    store.prepare((epoch, 2), {0: {b"a": None, b"never": None, b"c": b"3", b"b": b"20"}}, (epoch, 1))
    store.commit((epoch, 2), [0])
    assert store.restore((epoch, 2), [0]) == {b"b": b"20", b"c": b"3"}


def test_a_deletion_pending_at_restore_is_folded(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1", b"b": b"2"}}, None)
    store.commit((epoch, 1), [0])
    store.prepare((epoch, 2), {0: {b"a": None}}, (epoch, 1))
    assert store.restore((epoch, 2), [0]) == {b"b": b"2"}


def test_restore_discards_pending_changes_above_upto(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1"}}, None)
    store.commit((epoch, 1), [0])
    store.prepare((epoch, 2), {0: {b"a": b"2", b"b": b"2"}}, (epoch, 1))
    assert store.restore((epoch, 1), [0]) == {b"a": b"1"}
    # discarded, not kept for later: checkpoint 2 never committed
    assert store.restore((epoch, 2), [0]) == {b"a": b"1"}


def test_restore_folds_pending_changes_at_or_below_upto(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1"}, 1: {b"x": b"1"}}, None)
    # checkpoint 1 committed, but the task died before its commit call
    assert store.restore((epoch, 1), [0]) == {b"a": b"1"}
    assert store.restore((epoch, 3), [1]) == {b"x": b"1"}


def test_restore_with_nothing_committed_discards_every_pending_change(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1"}}, None)
    assert store.restore(None, [0]) == {}
    assert store.restore((epoch, 1), [0]) == {}


def test_checkpoint_ids_order_by_epoch_then_txid(provider: StateProvider) -> None:
    provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((1, 50), {0: {b"a": b"1"}}, None)
    assert store.restore((2, 1), [0]) == {b"a": b"1"}  # (1, 50) < (2, 1): folded
    e = provider.begin_epoch()
    store.prepare((e, 1), {0: {b"a": b"2"}}, (2, 1))
    assert store.restore((1, 99), [0]) == {b"a": b"1"}  # (e, 1) > (1, 99): discarded


def test_prepare_folds_a_pending_checkpoint_that_committed(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1", b"b": b"1"}}, None)
    # checkpoint 1 committed; its commit call never came; the task prepares checkpoint 2
    store.prepare((epoch, 2), {0: {b"b": b"2", b"c": b"2"}}, (epoch, 1))
    store.commit((epoch, 2), [0])
    assert store.restore((epoch, 2), [0]) == {b"a": b"1", b"b": b"2", b"c": b"2"}


def test_prepare_replaces_a_pending_checkpoint_that_did_not_commit(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1"}}, None)
    store.prepare((epoch, 2), {0: {b"b": b"2"}}, None)
    store.commit((epoch, 2), [0])
    assert store.restore((epoch, 2), [0]) == {b"b": b"2"}


def test_commit_folds_only_checkpoints_at_or_below_it(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 2), {0: {b"a": b"2"}}, None)
    store.commit((epoch, 1), [0])
    assert store.restore((epoch, 1), [0]) == {}  # still pending at commit 1, then discarded
    store.prepare((epoch, 3), {0: {b"a": b"3"}}, None)
    store.commit((epoch, 4), [0, 7])  # group 7 has nothing pending
    assert store.restore((epoch, 4), [0, 7]) == {b"a": b"3"}


def test_a_newer_epoch_fences_prepare_and_checkpoint_writes(provider: StateProvider) -> None:
    old = provider.begin_epoch()
    new = provider.begin_epoch()
    assert new > old
    store = provider.store("counter")
    store.prepare((new, 1), {0: {b"a": b"1"}}, None)
    with pytest.raises(Fenced):
        store.prepare((old, 9), {0: {b"b": b"9"}, 1: {b"c": b"9"}}, (new, 1))
    with pytest.raises(Fenced):
        provider.write_checkpoint({"epoch": old, "txid": 9, "time": 1.5, "positions": {}})
    assert provider.read_checkpoint() is None
    # the fenced prepare wrote and folded nothing
    assert store.restore((new, 1), [0, 1]) == {b"a": b"1"}
    provider.write_checkpoint({"epoch": new, "txid": 1, "time": 2.5, "positions": {}})
    assert provider.read_checkpoint() == {"epoch": new, "txid": 1, "time": 2.5, "positions": {}}


def test_checkpoint_records_round_trip(opened: tuple[StateProvider, Reopen]) -> None:
    provider, reopen = opened
    epoch = provider.begin_epoch()
    first = {"epoch": epoch, "txid": 1, "time": 1700000000.25,
             "positions": {"spout": {"events/0": 17, "events/1": 4}}}
    provider.write_checkpoint(first)
    assert provider.read_checkpoint() == first
    second = {**first, "txid": 2, "positions": {"spout": {"events/0": 20, "events/1": 4}}}
    provider.write_checkpoint(second)
    assert reopen().read_checkpoint() == second
    assert reopen().begin_epoch() == epoch + 1


def test_key_groups_are_independent(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"0"}, 1: {b"b": b"1"}, 2: {b"c": b"2"}}, None)
    store.commit((epoch, 1), [0, 1])
    assert store.restore((epoch, 1), [0, 1]) == {b"a": b"0", b"b": b"1"}
    assert store.restore((epoch, 1), [2]) == {b"c": b"2"}  # its pending, folded now


def test_components_are_independent(provider: StateProvider) -> None:
    epoch = provider.begin_epoch()
    provider.store("left").prepare((epoch, 1), {0: {b"k": b"left"}}, None)
    provider.store("right").prepare((epoch, 1), {0: {b"k": b"right"}}, None)
    provider.store("left").commit((epoch, 1), [0])
    provider.store("right").commit((epoch, 1), [0])
    assert provider.store("left").restore((epoch, 1), [0]) == {b"k": b"left"}
    assert provider.store("right").restore((epoch, 1), [0]) == {b"k": b"right"}
    assert provider.store("other").restore((epoch, 1), [0]) == {}


def test_large_checkpoints_round_trip(provider: StateProvider) -> None:
    """More fields than one Lua call takes at once, values of any bytes."""
    epoch = provider.begin_epoch()
    store = provider.store("counter")
    first = {b"k%d" % i: b"\x00\xff v %d" % i for i in range(25_000)}
    store.prepare((epoch, 1), {3: first, 4: {b"other": b""}}, None)
    store.commit((epoch, 1), [3, 4])
    second: dict[bytes, bytes | None] = {b"k%d" % i: None for i in range(0, 25_000, 2)}
    second.update({b"new%d" % i: b"n" for i in range(3000)})
    store.prepare((epoch, 2), {3: second}, (epoch, 1))
    expected = {key: value for key, value in first.items() if key not in second}
    expected.update({b"new%d" % i: b"n" for i in range(3000)})
    expected[b"other"] = b""
    assert store.restore((epoch, 2), [3, 4]) == expected


# ----------------------------------------------------------------------------- redis only


@pytest.fixture
def redis_provider(redis_server: RedisServer) -> Iterator[RedisProvider]:
    provider = RedisProvider(redis_server.url, unique_topology())
    yield provider
    provider.close()


def _fill(provider: StateProvider, epoch: int) -> None:
    store = provider.store("counter")
    store.prepare((epoch, 1), {0: {b"a": b"1"}, 1: {b"b": b"1"}}, None)
    store.commit((epoch, 1), [0, 1])
    store.prepare((epoch, 2), {0: {b"a": b"2"}}, (epoch, 1))
    provider.write_checkpoint({"epoch": epoch, "txid": 2, "time": 3.0, "positions": {"s": {"t/0": 9}}})


@pytest.mark.parametrize("outage", ["restart", "kill"])
def test_state_survives_a_redis_server_restart(tmp_path: Any, outage: str) -> None:
    with RedisServer(tmp_path / "redis") as server:
        topology = unique_topology()
        provider = RedisProvider(server.url, topology)
        epoch = provider.begin_epoch()
        _fill(provider, epoch)
        if outage == "kill":
            server.kill()
            server.start()
        else:
            server.restart()
        # the provider's pooled connection is gone: it reconnects
        assert provider.read_checkpoint() == {"epoch": epoch, "txid": 2, "time": 3.0,
                                              "positions": {"s": {"t/0": 9}}}
        provider.close()
        provider = RedisProvider(server.url, topology)
        assert provider.store("counter").restore((epoch, 2), [0, 1]) == {b"a": b"2", b"b": b"1"}
        assert provider.begin_epoch() == epoch + 1
        provider.close()


def test_a_refused_connection_raises_connection_error_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        provider = RedisProvider(f"redis://127.0.0.1:{port}/0", unique_topology())
        began = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            provider.begin_epoch()
        with pytest.raises(redis.ConnectionError):
            provider.store("counter").restore((1, 1), [0, 1])
        assert time.monotonic() - began < 2
        provider.close()


def test_a_silent_server_raises_timeout_error_within_the_socket_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)  # the kernel accepts connections; nothing ever answers
        port = sock.getsockname()[1]
        provider = RedisProvider(f"redis://127.0.0.1:{port}/0?socket_timeout=0.3", unique_topology())
        began = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            provider.store("counter").prepare((1, 1), {0: {b"a": b"1"}}, None)
        waited = time.monotonic() - began
        assert 0.3 <= waited < 3  # one retry: two timeouts
        provider.close()


def test_the_client_never_waits_more_than_the_socket_timeout(redis_provider: RedisProvider) -> None:
    kwargs = redis_provider.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == redis_state.SOCKET_TIMEOUT
    assert kwargs["socket_connect_timeout"] == redis_state.SOCKET_TIMEOUT
    assert kwargs["retry"].get_retries() == 1


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "redis://localhost",
    "redis://localhost:6379",
    "redis://localhost:6379/",
    "rediss://:secret@redis.example.com:6380/2",
    "redis://user:secret@10.0.0.1:6379/0?socket_timeout=3",
    "REDIS://[::1]:6379/1",
])
def test_check_url_accepts_redis_urls(url: str) -> None:
    check_url(url)


@pytest.mark.parametrize(("url", "problem"), [
    ("foo", "the scheme must be redis or rediss"),
    ("", "the scheme must be redis or rediss"),
    ("http://localhost:6379/0", "the scheme must be redis or rediss"),
    ("unix:///run/redis.sock", "the scheme must be redis or rediss"),
    ("redis:localhost", "no '//' after the scheme"),
    ("redis://", "no host"),
    ("redis://:6379/0", "no host"),
    ("redis://localhost:port/0", "Port could not be cast to integer value"),
    ("redis://localhost:70000/0", "Port out of range"),
    ("redis://localhost:0/0", "port 0"),
    ("redis://localhost:6379/zero", "the database must be a number"),
    ("redis://localhost:6379/0/1", "the database must be a number"),
    ("redis://localhost:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
])
def test_check_url_refuses_malformed_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_url(url)
    message = str(raised.value)
    assert message.startswith("config 'topology.state.redis.url': expected redis://")
    assert problem in message
    assert repr(url) in message
    assert "\n" not in message
    with pytest.raises(ConfigError):
        RedisProvider(url, "topology")


def test_check_url_hides_the_password() -> None:
    with pytest.raises(ConfigError) as raised:
        check_url("redis://user:hunter2@localhost:port/0")
    assert "hunter2" not in str(raised.value)
    assert "'redis://user:***@localhost:port/0'" in str(raised.value)


class _RoundTrips:
    """Counts the requests a client sends: commands, and pipelines as one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: redis.Redis) -> None:
        self.count = 0
        command = client.execute_command
        execute = redis.client.Pipeline.execute

        def counted_command(*args: Any, **options: Any) -> Any:
            self.count += 1
            return command(*args, **options)

        def counted_execute(pipeline: Any, *args: Any, **options: Any) -> Any:
            self.count += 1
            return execute(pipeline, *args, **options)

        monkeypatch.setattr(client, "execute_command", counted_command)
        monkeypatch.setattr(redis.client.Pipeline, "execute", counted_execute)


def test_prepare_commit_and_restore_take_one_round_trip_each(
        redis_provider: RedisProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    epoch = redis_provider.begin_epoch()
    store = redis_provider.store("counter")
    store.prepare((epoch, 1), {0: {b"x": b"0"}}, None)  # loads the scripts
    store.commit((epoch, 1), [0])
    store.restore((epoch, 1), [0])
    trips = _RoundTrips(monkeypatch, redis_provider.client)
    store.prepare((epoch, 2), {g: {b"k%d" % g: b"1", b"x": None} for g in range(64)}, (epoch, 1))
    assert trips.count == 1
    store.commit((epoch, 2), range(64))
    assert trips.count == 2
    restored = store.restore((epoch, 2), range(128))
    assert trips.count == 4  # the settling script, then one read of all the groups
    assert restored == {b"k%d" % g: b"1" for g in range(64)}


def test_restore_reads_large_groups_by_scan_and_small_ones_in_batches(
        redis_provider: RedisProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_state, "SCAN_ABOVE", 300)
    monkeypatch.setattr(redis_state, "SCAN_COUNT", 50)
    monkeypatch.setattr(redis_state, "FETCH_BATCH", 100)
    epoch = redis_provider.begin_epoch()
    store = redis_provider.store("counter")
    changes = {g: {b"%d/%d" % (g, i): b"v" for i in range(1000 if g % 3 == 0 else 40)} for g in range(12)}
    store.prepare((epoch, 1), changes, None)
    store.commit((epoch, 1), range(12))
    trips = _RoundTrips(monkeypatch, redis_provider.client)
    expected = {key: value for group in changes.values() for key, value in group.items()}
    assert store.restore((epoch, 1), range(12)) == expected
    assert trips.count > 4  # several scans and batches, not one reply of everything


def test_close_closes_the_connections(redis_server: RedisServer) -> None:
    name = unique_topology("closing")
    provider = RedisProvider(f"{redis_server.url}?client_name={name}", unique_topology())
    provider.begin_epoch()
    with redis_server.client() as client:
        assert [c for c in client.client_list() if c["name"] == name]
        provider.close()
        wait_for(lambda: not [c for c in client.client_list() if c["name"] == name], 5,
                 "the provider's connection to close", every=0.01)
