"""The ``zookeeper`` fixture runs a real ZooKeeper that kazoo can use, kill and bring back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kazoo.client import KazooClient, KazooState
from zookeeper import ZooKeeperServer

# Session timeouts of a few seconds (the server grants down to 1 s); quick reconnect attempts.
SESSION_TIMEOUT = 4.0
FAST_RECONNECT = {"max_tries": -1, "delay": 0.05, "backoff": 1.5, "max_delay": 0.5}


class StateLog:
    """Records a client's connection states, in order, for tests to wait on."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, state: str) -> None:  # a kazoo listener: must not block
        with self._changed:
            self.states.append(state)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.states), timeout):
                raise AssertionError(f"not {what} within {timeout:g} s; states: {self.states}")


@contextmanager
def kazoo_client(hosts: str, **options: object) -> Iterator[tuple[KazooClient, StateLog]]:
    client = KazooClient(hosts=hosts, timeout=SESSION_TIMEOUT, connection_retry=FAST_RECONNECT, **options)
    log = StateLog()
    client.add_listener(log)
    client.start(timeout=10)
    try:
        yield client, log
    finally:
        client.stop()
        client.close()


def test_create_and_get_ephemeral_node(zookeeper: ZooKeeperServer, zk_root: str) -> None:
    assert zookeeper.hosts == f"127.0.0.1:{zookeeper.port}"
    assert zookeeper.command("ruok") == "imok"
    with kazoo_client(zookeeper.hosts) as (observer, _):
        observer.ensure_path(zk_root)  # a kazoo chroot must exist before a client uses it
        with kazoo_client(zookeeper.hosts + zk_root) as (client, _):
            client.create("/worker-1", b"alive", ephemeral=True)
            data, stat = client.get("/worker-1")
            assert data == b"alive"
            assert stat.ephemeralOwner == client.client_id[0]
            assert observer.get_children(zk_root) == ["worker-1"]
        # The session ended with the client: its ephemeral node went with it.
        assert observer.get_children(zk_root) == []


def test_kill_and_restart_keeps_session_and_data(zookeeper: ZooKeeperServer, zk_root: str) -> None:
    with kazoo_client(zookeeper.hosts) as (client, log):
        client.create(f"{zk_root}/config", b"kept", makepath=True)
        client.create(f"{zk_root}/worker-1", b"", ephemeral=True)
        session_id = client.client_id[0]
        try:
            zookeeper.kill()
            assert not zookeeper.is_running
            log.wait_for(lambda s: KazooState.SUSPENDED in s, 10, "suspended after the kill")
            zookeeper.start()
        finally:
            if not zookeeper.is_running:  # leave the session's server running for other tests
                zookeeper.start()
        # Reconnects within the session timeout, to the same session (which the server
        # restored from its data directory), so the ephemeral node survived too.
        began = time.monotonic()
        log.wait_for(lambda s: s[-1:] == [KazooState.CONNECTED], 10, "reconnected after the restart")
        assert time.monotonic() - began < 10
        assert KazooState.LOST not in log.states
        assert client.client_id[0] == session_id
        assert client.get(f"{zk_root}/config")[0] == b"kept"
        assert client.exists(f"{zk_root}/worker-1") is not None


def test_session_expiry_drops_ephemeral_nodes(zookeeper: ZooKeeperServer, zk_root: str) -> None:
    with kazoo_client(zookeeper.hosts) as (client, log):
        client.ensure_path(zk_root)
        client.create(f"{zk_root}/worker-1", b"", ephemeral=True)
        session_id, password = client.client_id
        # Expire the session the way ZooKeeper's FAQ does: a second client takes it over
        # with its id and password, then closes it.
        with kazoo_client(zookeeper.hosts, client_id=(session_id, password)) as (twin, _):
            assert twin.client_id[0] == session_id
        log.wait_for(lambda s: KazooState.LOST in s, 10, "told that the session expired")
        log.wait_for(lambda s: s[-1:] == [KazooState.CONNECTED], 10, "connected in a new session")
        assert client.client_id[0] != session_id
        assert client.exists(f"{zk_root}/worker-1") is None
