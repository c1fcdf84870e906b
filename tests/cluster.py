"""A real streamflow cluster for tests: nimbus and supervisor processes against a real
ZooKeeper, workers started by the supervisors, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port_run(count: int) -> int:
    """A port p with p .. p+count-1 all free on 127.0.0.1, below the kernel's ephemeral
    port range where there is room: a worker binds its slot's port only once it has
    started, and a port the kernel also hands out as a source port can meanwhile be taken
    by another worker's connection attempt (the transport closes such a self-connection,
    but the slot's worker could lose its bind to it)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        if low - count > 10_000:
            base = random.randrange(10_000, low - count)
        else:  # no room below: anywhere the kernel says is free
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                base = probe.getsockname()[1]
            if base + count >= 65535:
                continue
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no run of {count} free ports")


def metric_samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the Prometheus text at URL/metrics: (name, sorted labels) -> value.
    Sends the shared clusters' token (:data:`TOKEN`), which /metrics needs where there is one."""
    request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := _checked(condition, deadline, timeout, what)):
        time.sleep(every)
    return value


async def wait_for_async(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.01) -> Any:
    """:func:`wait_for` inside an event loop: the loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while not (value := _checked(condition, deadline, timeout, what)):
        await asyncio.sleep(every)
    return value


def _checked(condition: Callable[[], Any], deadline: float, timeout: float, what: str) -> Any:
    """``condition()``; a falsy value past the deadline fails the wait, naming ``what``."""
    value = condition()
    if not value and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return value


TOKEN = "s3cret-token"
"""The API token of the shared test clusters (conftest's ``shared_cluster``)."""
ZK_AUTH = "streamflow:zk-pass"


class Cluster:
    """``nimbus_count`` nimbus and ``supervisors`` supervisors of ``slots`` slots each,
    started as their containers are (see :meth:`_spawn`); ``supervisor_settings``: more
    options of every supervisor (``{"worker-memory-mb": "1024"}``)."""

    def __init__(self, zk_hosts: str, zk_root: str, workdir: Path, nimbus_count: int = 2,
                 supervisors: int = 2, slots: int = 2, token: str | None = None,
                 zk_auth: str | None = None, supervisor_settings: dict[str, str] | None = None,
                 nimbus_settings: dict[str, str] | None = None) -> None:
        self.zk_hosts, self.zk_root, self.workdir = zk_hosts, zk_root, workdir
        self.token, self.zk_auth = token, zk_auth
        self.supervisor_settings = supervisor_settings or {}
        self.nimbus_settings = nimbus_settings or {}
        self.tls_ca = self.nimbus_settings.get("tls-ca")
        """The CA clients check nimbus's HTTPS certificate with, when nimbus serves HTTPS."""
        self.slots = slots
        self.nimbus: dict[str, subprocess.Popen[bytes]] = {}
        self.supervisors: dict[str, subprocess.Popen[bytes]] = {}
        self.health_ports: dict[str, int] = {}
        self._counts = (nimbus_count, supervisors)
        self.env = dict(os.environ, STREAMFLOW_ZK=zk_hosts, STREAMFLOW_ZK_ROOT=zk_root,
                        STREAMFLOW_LOG_LEVEL="INFO")
        if zk_auth:
            self.env["STREAMFLOW_ZK_AUTH"] = zk_auth

    # -- processes --------------------------------------------------------------------

    def _spawn(self, name: str, role: str, settings: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a role as its container does: ``streamflow ROLE``, every setting in the
        environment (``STREAMFLOW_<OPTION>``), none on the command line."""
        log = open(self.workdir / f"{name}.log", "ab")
        env = dict(self.env, **{f"STREAMFLOW_{k.upper().replace('-', '_')}": v for k, v in settings.items()})
        return subprocess.Popen([sys.executable, "-m", "streamflow.cli", role], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)

    def start_nimbus(self) -> str:
        port = free_port_run(1)
        url = f"{'https' if 'tls-cert' in self.nimbus_settings else 'http'}://127.0.0.1:{port}"
        settings = {"port": str(port), "zk-session-timeout": "3", "worker-timeout": "8",
                    "launch-timeout": "30", **self.nimbus_settings}
        if self.token:
            token_file = self.workdir / "token"
            token_file.write_text(self.token)
            settings["token-file"] = str(token_file)
        self.nimbus[url] = self._spawn(f"nimbus-{port}", "nimbus", settings)
        return url

    def start_supervisor(self) -> str:
        base = free_port_run(self.slots + 1)  # the slots, then the health port
        sid = f"sup{len(self.supervisors) + 1}-{base}"
        self.health_ports[sid] = base + self.slots
        self.supervisors[sid] = self._spawn(sid, "supervisor", {
            "id": sid, "slots": str(self.slots), "base-port": str(base), "health-port": str(base + self.slots),
            "data-dir": str(self.workdir / sid), "zk-session-timeout": "3", **self.supervisor_settings})
        return sid

    def start(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(self._counts[0]):
            self.start_nimbus()
        for _ in range(self._counts[1]):
            self.start_supervisor()
        wait_for(lambda: self._registered(), 30, "nimbus leader and supervisors")
        return self

    def _registered(self) -> bool:
        try:
            answer = self.api("cluster")
        except subprocess.CalledProcessError:
            return False
        return answer.get("leader") is not None and len(answer["supervisors"]) == len(self.supervisors)

    def stop(self) -> None:
        for process in list(self.supervisors.values()) + list(self.nimbus.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in list(self.supervisors.values()) + list(self.nimbus.values()):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in self.worker_pids().values():  # workers of supervisors killed by a test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        """Kill every topology at once and wait until their workers are gone."""
        for t in self.api("list")["topologies"]:
            if t["status"] != "killed":
                self.cli("kill", t["name"], "--wait", "0")
        wait_for(lambda: not self.api("list")["topologies"] and not self.worker_pids(), 60,
                 "topologies and workers gone")

    # -- talking to it ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return next(url for url, p in self.nimbus.items() if p.poll() is None)

    def cli(self, *args: str, nimbus: str | None = None, token: str | None = "default",
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, STREAMFLOW_NIMBUS=nimbus or self.url)
        if self.tls_ca:
            env["STREAMFLOW_TLS_CA"] = self.tls_ca
        token = self.token if token == "default" else token
        if token:
            env["STREAMFLOW_TOKEN"] = token
        else:
            env.pop("STREAMFLOW_TOKEN", None)
        return subprocess.run([sys.executable, "-m", "streamflow.cli", *args], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def api(self, op: str, name: str = "") -> Any:
        """GET an API answer as JSON through the CLI's client."""
        from streamflow.client import NimbusClient

        try:
            return NimbusClient(self.url, self.token, timeout=10, tls_ca=self.tls_ca).call("GET", op, name)
        except Exception as exc:
            raise subprocess.CalledProcessError(1, op, str(exc)) from None

    def status(self, name: str) -> dict[str, Any]:
        result = self.cli("status", name, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def worker_pids(self) -> dict[int, int]:
        """Port -> pid of every running ``streamflow worker`` process of this cluster."""
        pids = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in cmd and b"streamflow.cli" in cmd and self.zk_root.encode() in cmd:
                pids[int(cmd[cmd.index(b"--port") + 1])] = int(entry.name)
        return pids
