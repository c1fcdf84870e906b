"""Secrets stay away from user code: a worker gets the ZooKeeper credential and the API
token on stdin, which it reads before it loads user code and then closes, never in its
environment; its ``/metrics`` then needs the token, unless ``--metrics-open``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import TOKEN, ZK_AUTH, Cluster, free_port_run, metric_samples, wait_for
from zookeeper import ZooKeeperServer

from streamflow import TopologyBuilder
from streamflow.errors import StreamflowError
from streamflow.testing import ListSpout
from streamflow.transport.codec import Codec
from streamflow.transport.tcp import TcpTransport
from streamflow.worker_command import TlsFiles, WorkerCommand, WorkerSecrets

ENVIRON = """\
import asyncio
import json
import os
import sys

from streamflow import BasicBolt, TopologyBuilder
from streamflow.testing import ListSpout


class Environ(BasicBolt):
    def prepare(self, config, context):
        super().prepare(config, context)
        self.path = config["environ.path"]

    def process(self, tup):
        with open(self.path, "w") as out:
            json.dump({"environ": dict(os.environ), "stdin": sys.stdin.read()}, out)


def build(config):
    b = TopologyBuilder("environ")
    b.set_spout("source", ListSpout([(1,)], ["n"]))
    b.set_bolt("environ", Environ()).shuffle_grouping("source")
    return b.build()
"""


def test_the_secrets_line_round_trips_and_a_malformed_one_is_one_line() -> None:
    secrets = WorkerSecrets("user:pass", "t0ken")
    assert WorkerSecrets.decode(secrets.encode()) == secrets
    assert WorkerSecrets.decode(WorkerSecrets().encode()) == WorkerSecrets()
    assert WorkerSecrets.decode(b"") == WorkerSecrets()
    for bad in (b"user:pass\n", b"[]\n", b'{"zk_auth": 1, "token": null}\n', b'{"token": "t"}\n'):
        with pytest.raises(StreamflowError, match="secrets line on stdin is malformed"):
            WorkerSecrets.decode(bad)


def test_reading_the_secrets_leaves_nothing_on_stdin() -> None:
    code = ("import sys; from streamflow.worker_command import WorkerSecrets; "
            "s = WorkerSecrets.read_stdin(); print(s.zk_auth, s.token, repr(sys.stdin.read()))")
    result = subprocess.run([sys.executable, "-c", code], input=WorkerSecrets("u:p", "t").encode() + b"more\n",
                            capture_output=True, timeout=30)
    assert result.stdout.decode().split() == ["u:p", "t", "''"], result.stderr


@pytest.fixture
def guarded(zookeeper: ZooKeeperServer, zk_root: str, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with ZooKeeper ACLs and an API token, which the supervisor holds too."""
    (tmp_path / "token").write_text(TOKEN)
    c = Cluster(zookeeper.hosts, zk_root, tmp_path / "cluster", nimbus_count=1, supervisors=1, token=TOKEN,
                zk_auth=ZK_AUTH, supervisor_settings={"token-file": str(tmp_path / "token")})
    c.start()
    yield c
    c.stop()


def test_user_code_never_sees_the_credentials_and_the_worker_port_needs_the_token(
        guarded: Cluster, tmp_path: Path) -> None:
    (tmp_path / "environ").mkdir()
    (tmp_path / "environ" / "environ.py").write_text(ENVIRON)
    seen = tmp_path / "seen.json"
    result = guarded.cli("submit", str(tmp_path / "environ" / "environ.py"), "--name", "environ",
                         "-c", f"environ.path={seen}")
    assert result.returncode == 0, result.stderr
    wait_for(seen.exists, 60, "the bolt's report of its environment")
    report = json.loads(seen.read_text())
    text = json.dumps(report)
    assert ZK_AUTH.split(":")[1] not in text and TOKEN not in text
    assert report["stdin"] == ""
    assert "STREAMFLOW_ZK_AUTH" in guarded.env  # the supervisor had it in its environment

    def alive() -> bool:  # heartbeats: the worker writes to ZooKeeper under its ACL
        workers = guarded.status("environ")["workers"]
        return len(workers) == 1 and workers[0]["alive"]

    wait_for(alive, 30, "the worker's heartbeats")
    [port] = guarded.worker_pids()
    worker = f"http://127.0.0.1:{port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(worker + "/metrics", timeout=10)
    assert refused.value.code == 401
    assert any(name.startswith("streamflow_") for name, _ in metric_samples(worker))  # with the token


def scrape(transport: TcpTransport, request: bytes) -> bytes:
    """Serve ``transport`` on a free port, send ``request`` to it, return its whole answer."""
    async def main() -> bytes:
        port = free_port_run(1)
        await transport.serve("127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
        finally:
            await transport.close()

    return asyncio.run(main())


@pytest.mark.parametrize("token, request_head, status", [
    (None, b"GET /metrics HTTP/1.1\r\nHost: w\r\n\r\n", b"200"),
    ("t0ken", b"GET /metrics HTTP/1.1\r\nHost: w\r\n\r\n", b"401"),
    ("t0ken", b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer t0ken\r\n\r\n", b"200"),
    ("t0ken", b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n", b"401"),
    (None, b"GET /other HTTP/1.1\r\n\r\n", b"404"),
    (None, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n", b"431"),
    (None, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 20000 + b"\r\n", b"431"),
])
def test_the_worker_port_answers_metrics_through_the_http_module(token: str | None, request_head: bytes,
                                                                status: bytes) -> None:
    builder = TopologyBuilder("metrics")
    builder.set_spout("source", ListSpout([(1,)], ["n"]))
    transport = TcpTransport({}, Codec(builder.build()), b"secret", lambda: b"up 1\n", metrics_token=token)
    answer = scrape(transport, request_head)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    assert answer.endswith(b"up 1\n") == (status == b"200")
    assert b"X-Frame-Options: DENY" in answer


def test_metrics_open_and_the_tls_files_cross_the_worker_command_line() -> None:
    command = WorkerCommand("zk:2181", "/sf", 3.0, "t-1", "sup", "127.0.0.1", 6700, Path("/code"),
                            TlsFiles("/tls/w.pem", "/tls/w.key", "/tls/ca.pem"), metrics_open=True)
    argv = command.to_argv()
    assert WorkerCommand.from_argv(argv) == command
    assert not any("t0ken" in part or "auth" in part for part in argv)
