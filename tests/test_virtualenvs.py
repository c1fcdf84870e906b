"""Per-topology virtualenvs: streamparse's ``virtualenvs/NAME.txt`` on a supervisor started
with ``--virtualenvs`` (here: ``STREAMFLOW_VIRTUALENVS=1``), with real nimbus, supervisor,
worker, venv, pip and component processes against a real ZooKeeper.

pip runs offline: the supervisors get ``PIP_NO_INDEX=1``, which pip reads itself, as it
reads any ``PIP_*`` setting of the operator's. The requirements are satisfied without an
index: ``streamparse`` from streamflow's own environment (the virtualenv sees it), and a
wheel the test makes and ships in the project (``./wheels/...``, a path in the project).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cluster import Cluster, wait_for
from zookeeper import ZooKeeperServer

from streamflow.multilang.process import TOPOLOGY_VIRTUALENV, component_environment, resolve_command
from streamflow.multilang.virtualenvs import READY, VirtualenvError, Virtualenvs, requirements_file

QUICKSTART = Path(__file__).resolve().parent / "multilang" / "wordcount"
PYTHON_DIR = f"python{sys.version_info[0]}.{sys.version_info[1]}"


# -- helpers ----------------------------------------------------------------------------


def make_wheel(directory: Path, name: str, version: str, module_text: str) -> Path:
    """A pure-Python wheel of one module ``name``, as pip installs it offline."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_text,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def project_needing_a_wheel(tmp_path: Path, name: str, requirements_comment: str = "") -> Path:
    """The quickstart project whose count bolt imports a module that only its virtualenv
    has: ``venvmark``, from a wheel in the project that virtualenvs/wordcount.txt names.
    It imports it when it starts, not at the top of its module, which the topology file
    imports (nimbus and the workers load the topology in streamflow's environment)."""
    project = tmp_path / name
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("__pycache__"))
    make_wheel(project / "wheels", "venvmark", "1.0", "WHERE = 'the virtualenv'\n")
    (project / "virtualenvs" / "wordcount.txt").write_text(
        f"streamparse  # always required for streamparse projects{requirements_comment}\n"
        "./wheels/venvmark-1.0-py3-none-any.whl\n")
    bolt = project / "src" / "bolts" / "wordcount.py"
    start = "    def initialize(self, conf, ctx):\n"
    assert start in bolt.read_text()
    bolt.write_text(bolt.read_text().replace(start, start + "        import venvmark  # in the virtualenv only\n"))
    return project


def submit(cluster: Cluster, project: Path, name: str, workers: int = 2) -> str:
    result = cluster.cli("submit", str(project / "topologies" / "wordcount.py"), "--name", name,
                         "--workers", str(workers))
    assert result.returncode == 0, result.stderr
    return str(cluster.status(name)["id"])


def counted(cluster: Cluster, name: str) -> int:
    return int(cluster.status(name)["components"].get("count_bolt", {}).get("acked", 0))


def components_of(data_dir: Path, topology_id: str) -> list[psutil.Process]:
    """The component processes of a topology on a node: those running in its unpacked code."""
    code = data_dir / "code" / topology_id
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if proc.info["cwd"] and Path(proc.info["cwd"]).is_relative_to(code) and \
                any("streamparse_run" in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def command_line(proc: psutil.Process) -> list[str]:
    """``proc``'s command line; none for one gone, or a zombie (other tests leave some)."""
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def built(data_dir: Path) -> list[Path]:
    """The virtualenvs a supervisor built."""
    return sorted(path.parent for path in (data_dir / "virtualenvs").glob(f"*/{READY}"))


def log_lines(cluster: Cluster, sid: str, text: str) -> list[str]:
    return [line for line in (cluster.workdir / f"{sid}.log").read_text().splitlines() if text in line]


@pytest.fixture(scope="module")
def venv_cluster(zookeeper: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One nimbus and one supervisor of four slots that builds virtualenvs, pip offline."""
    c = Cluster(zookeeper.hosts, f"/streamflow-venvs-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("cluster"),
                nimbus_count=1, supervisors=1, slots=4)
    c.env.update(STREAMFLOW_VIRTUALENVS="1", PIP_NO_INDEX="1")
    c.start()
    yield c
    c.stop()


@pytest.fixture
def cluster(venv_cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster, emptied of topologies after the test."""
    yield venv_cluster
    venv_cluster.kill_all()


# -- on a cluster -----------------------------------------------------------------------


def test_a_projects_components_run_from_its_virtualenv_built_once_and_reused(cluster: Cluster,
                                                                             tmp_path: Path) -> None:
    (sid,) = cluster.supervisors
    data_dir = cluster.workdir / sid
    before = set(built(data_dir))
    project = project_needing_a_wheel(tmp_path, "wordcount", f"  {uuid.uuid4().hex}")
    first = submit(cluster, project, "venv-wc")
    wait_for(lambda: counted(cluster, "venv-wc") >= 500, 120, "words counted by the bolt that imports venvmark")

    (venv,) = set(built(data_dir)) - before
    assert (venv / "lib" / PYTHON_DIR / "site-packages" / "venvmark.py").is_file()  # pip installed it there
    components = components_of(data_dir, first)
    assert len(components) == 3  # the spout and two count bolts, each run by the venv's streamparse_run
    for proc in components:
        assert proc.cmdline()[:2] == [str(venv / "bin" / "python"), str(venv / "bin" / "streamparse_run")]
        assert proc.environ()["VIRTUAL_ENV"] == str(venv)
    started = log_lines(cluster, sid, f"with virtualenv {venv}")
    assert len(started) == 2 and len(log_lines(cluster, sid, f"in {venv} in ")) == 1  # built once, for both

    # A worker that dies is started again with the same virtualenv, which is not built again.
    inodes = (venv / READY).stat().st_ino, (venv / "bin" / "streamparse_run").stat().st_ino
    workers = cluster.worker_pids()
    port, pid = next(iter(workers.items()))
    os.kill(pid, 9)
    wait_for(lambda: cluster.worker_pids().get(port, pid) != pid, 60, "the killed worker restarted")
    wait_for(lambda: len(log_lines(cluster, sid, f"with virtualenv {venv}")) == 3, 30, "its start logged")

    # So does the next submission of the same project.
    assert cluster.cli("kill", "venv-wc", "--wait", "0").returncode == 0
    second = submit(cluster, project, "venv-wc-again")
    wait_for(lambda: counted(cluster, "venv-wc-again") >= 500, 120, "words counted again")
    assert set(built(data_dir)) - before == {venv} and len(log_lines(cluster, sid, f"in {venv} in ")) == 1
    assert ((venv / READY).stat().st_ino, (venv / "bin" / "streamparse_run").stat().st_ino) == inodes
    assert {tuple(p.cmdline()[:1]) for p in components_of(data_dir, second)} == {(str(venv / "bin" / "python"),)}


def test_a_changed_requirements_file_gets_a_virtualenv_of_its_own(cluster: Cluster, tmp_path: Path) -> None:
    (sid,) = cluster.supervisors
    data_dir = cluster.workdir / sid
    before = set(built(data_dir))
    old = project_needing_a_wheel(tmp_path / "old", "wordcount", f"  {uuid.uuid4().hex}")
    new = project_needing_a_wheel(tmp_path / "new", "wordcount", f"  {uuid.uuid4().hex}")
    old_id = submit(cluster, old, "venv-old")
    new_id = submit(cluster, new, "venv-new")
    wait_for(lambda: min(counted(cluster, "venv-old"), counted(cluster, "venv-new")) >= 200, 120,
             "words counted by both")

    def venv_of(project: Path) -> Path:
        text = (project / "virtualenvs" / "wordcount.txt").read_text()
        (venv,) = [venv for venv in built(data_dir) if (venv / "requirements.txt").read_text() == text]
        return venv

    old_venv, new_venv = venv_of(old), venv_of(new)
    assert old_venv != new_venv and not {old_venv, new_venv} & before
    for topology_id, venv in ((old_id, old_venv), (new_id, new_venv)):
        runs = {p.cmdline()[1] for p in components_of(data_dir, topology_id)}
        assert runs == {str(venv / "bin" / "streamparse_run")}


@pytest.mark.parametrize("requirement, said", [
    ("streamflow-test-no-such-package==1.0",
     "ERROR: No matching distribution found for streamflow-test-no-such-package==1.0"),
    ("./wheels/not-shipped", "ERROR: Invalid requirement: './wheels/not-shipped'"),
])
def test_requirements_that_cannot_install_are_the_topologys_error_in_one_line(
        cluster: Cluster, tmp_path: Path, requirement: str, said: str) -> None:
    (sid,) = cluster.supervisors
    project = tmp_path / "wordcount"
    shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "virtualenvs" / "wordcount.txt").write_text(f"streamparse\n{requirement}\n")
    topology_id = submit(cluster, project, "venv-broken")

    def error() -> Any:
        return cluster.status("venv-broken")["errors"].get("__supervisor")

    (reported,) = wait_for(error, 60, "the failed build in status")
    message = reported["message"]
    assert message.startswith("cannot build the virtualenv: virtualenvs/wordcount.txt: "
                              "pip install failed (exit 1): ")
    assert said in message and "\n" not in message, message
    text = cluster.cli("status", "venv-broken").stdout
    assert "last error of __supervisor at" in text and f"on {sid}: {message}" in text
    wait_for(lambda: len(log_lines(cluster, sid, f"({topology_id}): VirtualenvError: ")) >= 4, 30,
             "each of the 2 slots backing off twice")
    assert not cluster.worker_pids()  # none started without the virtualenv
    supervisor = psutil.Process(cluster.supervisors[sid].pid)
    assert not supervisor.children()  # pip is done; nothing left behind
    assert "Traceback" not in (cluster.workdir / f"{sid}.log").read_text()


def test_without_the_option_the_file_is_ignored_and_nothing_is_built(
        zookeeper: ZooKeeperServer, zk_root: str, tmp_path: Path) -> None:
    plain = Cluster(zookeeper.hosts, zk_root, tmp_path / "cluster", nimbus_count=1, supervisors=1, slots=2).start()
    try:
        (sid,) = plain.supervisors
        data_dir = plain.workdir / sid
        project = tmp_path / "wordcount"
        shutil.copytree(QUICKSTART, project, ignore=shutil.ignore_patterns("__pycache__"))
        topology_id = submit(plain, project, "no-venv")
        wait_for(lambda: counted(plain, "no-venv") >= 200, 120, "words counted")
        components = components_of(data_dir, topology_id)
        assert len(components) == 3
        assert all(not p.cmdline()[1].startswith(str(data_dir)) and TOPOLOGY_VIRTUALENV not in p.environ()
                   for p in components)
        assert not (data_dir / "virtualenvs").exists()
        (ignored,) = log_lines(plain, sid, "virtualenvs/wordcount.txt; it is ignored")  # once, for two workers
        assert "INFO" in ignored
    finally:
        plain.stop()


# -- the parts ----------------------------------------------------------------------------


def test_the_requirements_file_is_found_as_sparse_submit_finds_it(tmp_path: Path) -> None:
    (tmp_path / "virtualenvs").mkdir()
    (tmp_path / "virtualenvs" / "wordcount.txt").write_text("streamparse\n")
    found = requirements_file(tmp_path, "topologies/wordcount.py", {})
    assert found == tmp_path / "virtualenvs" / "wordcount.txt"
    assert requirements_file(tmp_path, "topologies/other.py", {}) is None
    (tmp_path / "config.json").write_text('{"virtualenv_specs": "deps", "envs": {"prod": {}, "dev": '
                                          '{"use_virtualenv": false}, "named": {"virtualenv_name": "shared"}}}')
    assert requirements_file(tmp_path, "topologies/wordcount.py", {}) is None  # not in deps/
    (tmp_path / "deps").mkdir()
    (tmp_path / "deps" / "wordcount.txt").write_text("streamparse\n")
    (tmp_path / "deps" / "shared.txt").write_text("streamparse\n")
    assert requirements_file(tmp_path, "topologies/wordcount.py", {"streamparse.env": "prod"}) == (
        tmp_path / "deps" / "wordcount.txt")
    assert requirements_file(tmp_path, "topologies/wordcount.py", {"streamparse.env": "dev"}) is None
    assert requirements_file(tmp_path, "topologies/wordcount.py", {"streamparse.env": "named"}) == (
        tmp_path / "deps" / "shared.txt")
    (tmp_path / "config.json").write_text('{"virtualenv_specs": "../outside"}')
    (tmp_path.parent / "outside").mkdir(exist_ok=True)
    (tmp_path.parent / "outside" / "wordcount.txt").write_text("streamparse\n")
    assert requirements_file(tmp_path, "topologies/wordcount.py", {}) is None  # not the project's


def test_a_bare_command_comes_from_the_topologys_virtualenv_first(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "streamparse_run").write_text("#!/bin/sh\n")
    (venv / "bin" / "streamparse_run").chmod(0o755)
    (venv / "bin" / "not-executable").write_text("")
    monkeypatch.setenv("PATH", os.defpath)
    assert resolve_command("streamparse_run", None) != str(venv / "bin" / "streamparse_run")
    monkeypatch.setenv(TOPOLOGY_VIRTUALENV, str(venv))
    assert resolve_command("streamparse_run", None) == str(venv / "bin" / "streamparse_run")
    assert resolve_command("sh", None) == shutil.which("sh")  # not in the virtualenv: from PATH
    env = component_environment({"EXTRA": "1"})
    assert env is not None and env["EXTRA"] == "1" and env["VIRTUAL_ENV"] == str(venv)
    assert env["PATH"].split(os.pathsep)[0] == str(venv / "bin")


def test_a_virtualenv_idle_for_long_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    requirements = tmp_path / "project" / "virtualenvs" / "t.txt"
    requirements.parent.mkdir(parents=True)
    requirements.write_text("streamparse\n")
    done = threading.Event()
    venvs = Virtualenvs(tmp_path / "venvs", done.set)
    assert venvs.get(requirements, requirements.parent.parent) is None
    assert done.wait(120)
    venv = venvs.get(requirements, requirements.parent.parent)
    assert venv is not None and venvs.remove_idle(3600) == []
    then = (venv / READY).stat().st_mtime - 7200
    os.utime(venv / READY, (then, then))
    venvs.mark_used({venv})  # in use: kept
    assert venvs.remove_idle(3600) == []
    os.utime(venv / READY, (then, then))
    assert venvs.remove_idle(3600) == [venv] and not venv.exists()


def test_stopping_stops_a_build_under_way_and_leaves_no_process(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """pip waits on an index that accepts connections and never answers; stopping the
    supervisor's builds kills it (its whole process group), and the build fails."""
    with socket.socket() as index:
        index.bind(("127.0.0.1", 0))
        index.listen(16)
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{index.getsockname()[1]}/simple")
        monkeypatch.delenv("PIP_NO_INDEX", raising=False)
        monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
        requirements = tmp_path / "virtualenvs" / "t.txt"
        requirements.parent.mkdir()
        requirements.write_text("streamflow-test-no-such-package\n")
        done = threading.Event()
        venvs = Virtualenvs(tmp_path / "venvs", done.set)
        assert venvs.get(requirements, tmp_path) is None

        def builds() -> list[list[str]]:
            """The command lines of this test's venv and pip processes, and what they started."""
            return [cmdline for p in psutil.Process().children(recursive=True)
                    if str(tmp_path) in " ".join(cmdline := command_line(p))]

        wait_for(lambda: any("pip" in cmdline for cmdline in builds()), 60, "pip started")
        venvs.stop()
        assert done.is_set() and not builds()
        stopped = r"^virtualenvs/t.txt: pip install failed \(killed by signal 9\)$"
        with pytest.raises(VirtualenvError, match=stopped):
            venvs.get(requirements, tmp_path)
        assert not (venvs.path(requirements) / READY).exists()
