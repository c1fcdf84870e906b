"""Shared pytest fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from zookeeper import ZooKeeperServer


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A real standalone ZooKeeper on 127.0.0.1, shared by the whole test session.

    Connect with ``KazooClient(hosts=zookeeper.hosts)``.  Tests that kill or restart it
    must leave it running.  Requires Debian's ``zookeeper`` package.
    """
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zk_root() -> str:
    """A znode path unique to this test, such as ``/streamflow-test-<hex>``, to use as a root
    so that tests do not see each other's znodes.  It is not created: create it
    (``client.ensure_path(zk_root)``) before using it as a kazoo chroot
    (``KazooClient(hosts=zookeeper.hosts + zk_root)``)."""
    return f"/streamflow-test-{uuid.uuid4().hex}"
