"""Nimbus's API against callers without the token and against input meant to hurt it:
real nimbus processes on a real ZooKeeper, each attack replayed and shown refused with
nothing changed."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from cluster import TOKEN, ZK_AUTH, Cluster, free_port_run, wait_for
from commands import ROOT, assert_one_line_error, zipped

from streamflow.httpapi import MAX_CONNECTIONS
from streamflow.zkstate import ClusterState

WORDCOUNT = str(ROOT / "topologies" / "wordcount.py")
CLUSTER_NIMBUS = 2

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/api/v1/submit", {"name": "intruder", "file": "t.py", "package": "", "config": {}}),
    ("POST", "/api/v1/kill/victim", {"wait": 0}),
    ("POST", "/api/v1/activate/victim", {}),
    ("POST", "/api/v1/deactivate/victim", {}),
    ("POST", "/api/v1/rebalance/victim", {"workers": 1}),
    ("POST", "/api/v1/config/victim", {"config": {"topology.debug": True}}),
    ("POST", "/api/v1/log-level/victim", {"level": "DEBUG"}),
    ("GET", "/api/v1/list", None),
    ("GET", "/api/v1/status/victim", None),
    ("GET", "/api/v1/logs/victim", None),
    ("GET", "/api/v1/cluster", None),
    ("GET", "/metrics", None),
]
"""Every route that reads or changes topology data, with a body that would be obeyed."""


def raw(url: str, request: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send ``request`` as it is; the status and body of the answer (0 if none came)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    if not answer:
        return 0, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def http(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {urlsplit(url).netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body is not None and "Content-Length" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return raw(url, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))


@pytest.fixture(scope="module")
def victim(shared_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The shared cluster running one topology, ``victim``."""
    source = tmp_path_factory.mktemp("victim") / "in.txt"
    source.write_text("a b c\n" * 10)
    submitted = shared_cluster.cli("submit", WORDCOUNT, "--name", "victim", "--workers", "2",
                                   "-c", f"input.path={source}")
    assert submitted.returncode == 0, submitted.stderr
    wait_for(lambda: len(shared_cluster.status("victim")["workers"]) == 2, 60, "victim assigned")
    yield shared_cluster
    shared_cluster.kill_all()


@pytest.fixture
def zk(victim: Cluster) -> Iterator[ClusterState]:
    state = ClusterState(victim.zk_hosts, victim.zk_root, ZK_AUTH)
    state.start()
    yield state
    state.stop()


def snapshot(state: ClusterState) -> Any:
    """Every topology record and assignment, and the code stored."""
    return ({tid: r.to_json() for tid, r in state.topologies().items()},
            {tid: a.to_json() for tid, a in state.assignments().items()},
            state.nodes.children(state.path("code")))


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Bearer {TOKEN}x", "Basic " + TOKEN])
def test_every_route_without_the_token_is_401_and_changes_nothing(
        victim: Cluster, zk: ClusterState, authorization: str | None) -> None:
    before = snapshot(zk)
    for url in victim.nimbus:  # the leader, and a standby that would forward
        for method, path, body in ROUTES:
            headers = {"Content-Type": "application/json"}
            if authorization is not None:
                headers["Authorization"] = authorization
            status, answer = http(url, method, path, None if body is None else json.dumps(body).encode(), headers)
            assert status == 401, (url, method, path, answer)
    assert snapshot(zk) == before


def test_a_non_ascii_authorization_header_gets_a_401_not_a_dropped_connection(victim: Cluster) -> None:
    request = b"GET /api/v1/list HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\xf6ken\xff\r\n\r\n"
    assert raw(victim.url, request)[0] == 401


def test_a_cross_origin_text_plain_post_is_refused_even_with_the_token(victim: Cluster, zk: ClusterState) -> None:
    """What a web page can make a browser send without a preflight: a text/plain body."""
    before = snapshot(zk)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "text/plain", **auth},
                    {"Content-Type": "application/x-www-form-urlencoded", **auth}, auth):
        status, _ = http(victim.url, "POST", "/api/v1/deactivate/victim", b'{"x": 1}', headers)
        assert status in (401, 415), (headers, status)
    assert snapshot(zk) == before


@pytest.mark.parametrize(("length", "status"), [("-1", 400), ("nan", 400), (None, 411), (str(2 << 20), 413)])
def test_a_bad_or_too_large_content_length_is_refused(victim: Cluster, length: str | None, status: int) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    if length is not None:
        headers["Content-Length"] = length
    assert http(victim.url, "POST", "/api/v1/deactivate/victim", None, headers)[0] == status


def test_a_huge_unauthenticated_post_is_refused_before_its_body_is_read(victim: Cluster) -> None:
    """The 401 comes back while the client has sent only the headers of a 300 MiB body."""
    address = urlsplit(victim.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as s:
        s.sendall(b"POST /api/v1/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (300 << 20))
        s.sendall(b"{" * 65536)
        assert s.recv(100).split()[1] == b"401"


def test_half_sent_requests_hold_a_bounded_number_of_threads(victim: Cluster) -> None:
    """300 connections that send part of a request and then nothing: those over the limit
    are answered 503 at once, the others are closed once idle too long, and nimbus's
    threads stay bounded meanwhile."""
    process = psutil.Process(victim.nimbus[victim.url].pid)
    address = urlsplit(victim.url)
    held = []
    try:
        for _ in range(300):
            s = socket.create_connection((address.hostname, address.port), timeout=60)
            s.sendall(b"POST /api/v1/submit HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        assert process.num_threads() < MAX_CONNECTIONS + 40
        answers = [s.recv(100) for s in held]  # a 503, or the close of an idle connection
    finally:
        for s in held:
            s.close()
    assert sum(a.startswith(b"HTTP/1.0 503") for a in answers) >= 300 - MAX_CONNECTIONS
    assert victim.api("list")["topologies"]


@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "1e300"])
def test_kill_with_a_wait_that_is_not_a_finite_number_of_seconds_is_refused(
        victim: Cluster, zk: ClusterState, wait: str) -> None:
    before = snapshot(zk)
    result = victim.cli("kill", "victim", "--wait", wait)
    assert_one_line_error(result, "wait must be a number of seconds from 0 to")
    body = ('{"wait": %s}' % {"nan": "NaN", "inf": "Infinity", "-1": "-1", "1e300": "1e300"}[wait]).encode()
    status, _ = http(victim.url, "POST", "/api/v1/kill/victim", body,
                     {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert status == 400
    assert snapshot(zk) == before


@pytest.mark.parametrize(("args", "reason"), [
    (["--parallelism", "split=100000"], "parallelism must be an integer from 1 to"),
    (["--workers", "100000"], "workers must be an integer from 1 to"),
])
def test_a_rebalance_past_the_bounds_is_refused(victim: Cluster, zk: ClusterState, args: list[str],
                                                reason: str) -> None:
    before = snapshot(zk)
    assert_one_line_error(victim.cli("rebalance", "victim", *args), reason)
    assert snapshot(zk) == before


def test_a_malformed_topology_record_stops_no_other_from_being_scheduled(
        victim: Cluster, zk: ClusterState, tmp_path: Path) -> None:
    zk.nodes.write(zk.path("topologies", "broken-1"), {"name": "broken", "file": "x.py", "secret": "00",
                                                     "workers": "many"})
    zk.nodes.write(zk.path("topologies", "shapeless-1"), {"name": "shapeless", "file": "x.py", "secret": "00",
                                                        "description": {"components": {"c": {}}}})
    try:
        source = tmp_path / "in.txt"
        source.write_text("a b\n")
        assert victim.cli("submit", WORDCOUNT, "--name", "bystander", "-c", f"input.path={source}").returncode == 0
        wait_for(lambda: any(w["alive"] for w in victim.status("bystander")["workers"]), 60, "bystander running")
        assert "victim" in victim.cli("list").stdout
    finally:
        zk.nodes.delete(zk.path("topologies", "broken-1"))
        zk.nodes.delete(zk.path("topologies", "shapeless-1"))
        victim.cli("kill", "bystander", "--wait", "0")


def test_a_submission_needs_the_token_and_a_json_body_within_the_package_cap(victim: Cluster) -> None:
    package = base64.b64encode(b"x" * 64).decode()
    body = json.dumps({"name": "n", "file": "t.py", "package": package}).encode()
    assert http(victim.url, "POST", "/api/v1/submit", body, {"Content-Type": "application/json"})[0] == 401


def nimbus_command(zookeeper: Any, zk_root: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "streamflow.cli", "nimbus", "--zk", zookeeper.hosts, "--zk-root", zk_root,
            "--zk-session-timeout", "3", *args]


def test_without_a_token_nimbus_refuses_to_serve_beyond_loopback(zookeeper: Any, zk_root: str) -> None:
    result = subprocess.run(nimbus_command(zookeeper, zk_root, "--host", "10.11.12.13", "--port", "0"),
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert_one_line_error(result, "no API token", "--token-file", "--insecure")


def outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: no packet is sent
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def healthy(host: str, port: int) -> bool:
    """Whether a nimbus answers its liveness probe at ``host:port``."""
    try:
        return http(f"http://{host}:{port}", "GET", "/healthz")[0] == 200
    except OSError:
        return False


def test_without_a_token_nimbus_serves_on_loopback_only(zookeeper: Any, zk_root: str, tmp_path: Path) -> None:
    port = free_port_run(1)
    with open(tmp_path / "nimbus.log", "wb") as log:
        process = subprocess.Popen(nimbus_command(zookeeper, zk_root, "--port", str(port)), stdout=log,
                                   stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: healthy("127.0.0.1", port), 60, "nimbus serving on loopback")
        outside = outside_address()
        if outside is not None:
            assert not healthy(outside, port)
    finally:
        process.terminate()
        process.wait(30)


def test_with_insecure_nimbus_serves_beyond_loopback_without_a_token(zookeeper: Any, zk_root: str,
                                                                     tmp_path: Path) -> None:
    # An address of this machine beyond loopback; on a machine with none, every address
    # (0.0.0.0, refused without --insecure as well), reached through loopback.
    outside = outside_address()
    host, reach = (outside, outside) if outside is not None else ("0.0.0.0", "127.0.0.1")
    port = free_port_run(1)
    with open(tmp_path / "nimbus.log", "wb") as log:
        process = subprocess.Popen(nimbus_command(zookeeper, zk_root, "--host", host, "--port", str(port),
                                                  "--insecure"), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: healthy(reach, port), 60, "nimbus serving on its --host")
    finally:
        process.terminate()
        process.wait(30)


def test_metrics_need_the_token_and_answer_with_it(victim: Cluster) -> None:
    assert http(victim.url, "GET", "/metrics")[0] == 401
    status, body = http(victim.url, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and b"streamflow_" in body


def submit_raw(victim: Cluster, name: str, file: str, package: bytes) -> tuple[int, dict[str, Any]]:
    """POST a submission as a hostile client would build it, with the token."""
    body = json.dumps({"name": name, "file": file, "package": base64.b64encode(package).decode(),
                       "config": {}}).encode()
    status, answer = http(victim.url, "POST", "/api/v1/submit", body,
                          {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    return status, json.loads(answer or b"{}")


TOPOLOGY = (ROOT / "topologies" / "wordcount.py").read_bytes()


@pytest.mark.parametrize("file", ["/etc/passwd", "../../wordcount.py", "missing.py"])
def test_a_topology_file_outside_the_package_is_refused(victim: Cluster, zk: ClusterState, file: str) -> None:
    before = snapshot(zk)
    status, answer = submit_raw(victim, "escape", file, zipped({"wordcount.py": TOPOLOGY}))
    assert status == 400 and ("inside the package" in answer["error"] or "not in the package" in answer["error"])
    assert snapshot(zk) == before


def test_a_zip_bomb_is_refused_without_nimbus_unpacking_it_all(victim: Cluster, zk: ClusterState) -> None:
    bomb = zipped({"wordcount.py": TOPOLOGY, "padding.bin": bytes(300 * 1024 * 1024)})
    before = snapshot(zk)
    status, answer = submit_raw(victim, "bomb", "wordcount.py", bomb)
    assert status == 400 and "unpacks to more than its limit" in answer["error"], answer
    assert snapshot(zk) == before


def test_loading_a_submitted_topology_runs_under_limits_without_nimbus_secrets(
        victim: Cluster, zk: ClusterState, tmp_path: Path) -> None:
    seen = tmp_path / "environ.json"
    spy = (f"import json, os\nopen({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))\n").encode()
    status, answer = submit_raw(victim, "spy", "wordcount.py", zipped({"wordcount.py": TOPOLOGY + spy}))
    assert status == 200, answer
    environment = json.loads(seen.read_text())
    assert not any(ZK_AUTH in value or TOKEN in value for value in environment.values()), environment
    victim.cli("kill", "spy", "--wait", "0")
    wait_for(lambda: all(r.name != "spy" for r in zk.topologies().values()), 60, "spy removed")
    hog = b"hoard = bytearray(3 * 1024 * 1024 * 1024)\n"
    before = snapshot(zk)
    status, answer = submit_raw(victim, "hog", "wordcount.py", zipped({"wordcount.py": TOPOLOGY + hog}))
    assert status == 400 and "MemoryError" in answer["error"], answer
    assert snapshot(zk) == before


def test_the_deploy_manifests_placeholder_secrets_are_refused_at_start(zookeeper: Any, zk_root: str,
                                                                       tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("REPLACE-ME-api-token\n")
    nimbus = subprocess.run(nimbus_command(zookeeper, zk_root, "--token-file", str(token_file), "--port", "0"),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert_one_line_error(nimbus, "token file", "REPLACE-ME")
    for role in ("nimbus", "supervisor"):
        result = subprocess.run([sys.executable, "-m", "streamflow.cli", role, "--zk", zookeeper.hosts,
                                 "--zk-root", zk_root, "--zk-auth", "streamflow:REPLACE-ME-zk-password"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        line = assert_one_line_error(result, "ZooKeeper auth", "REPLACE-ME")
        assert "zk-password" not in line  # the rest of the secret is not echoed
