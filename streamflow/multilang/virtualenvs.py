"""Per-topology virtualenvs: streamparse's ``virtualenvs/NAME.txt``, where a supervisor allows them.

A streamparse project lists what its components need in ``virtualenvs/NAME.txt`` (NAME:
the topology file's stem), and ``sparse submit`` builds a virtualenv of it on every Storm
node. A supervisor started with ``--virtualenvs`` does the same before it starts the
workers of such a topology: :class:`Virtualenvs` builds one virtualenv per distinct file,
in a thread of its own (the supervisor's other slots start and stop meanwhile), under the
supervisor's data directory, named by a hash of the file's text (and of the interpreter):
an unchanged file, in this topology or any later submission, reuses the virtualenv built
for it, even after the supervisor restarts; a changed one gets a new one.

A virtualenv is made by the interpreter running streamflow, ``python -m venv``, plus a
``.pth`` file that adds that interpreter's own site-packages after the virtualenv's: so
streamflow, streamparse and pystorm (and pip), installed beside streamflow as the README
asks, stay importable in it, pip counts them as installed, and what the file pins to
other versions is installed into the virtualenv, ahead of them. (``--system-site-packages``
would not do: where streamflow itself runs in a virtualenv, it adds the base
interpreter's site-packages, without streamflow.) Then ``pip install -r`` the file, run in
the project's root (a relative path in the file is the project's), with the supervisor's
environment: pip reads the operator's ``PIP_*`` settings (index, ``PIP_NO_INDEX``, proxy)
itself. Where pip leaves no ``bin/streamparse_run`` (streamparse is satisfied from
streamflow's environment), one is written that runs streamparse's with the virtualenv's
interpreter.

The supervisor hands the virtualenv to the topology's workers in
:data:`TOPOLOGY_VIRTUALENV`; :func:`streamflow.multilang.process.resolve_command` looks
up a component's bare command (``streamparse_run``, ``python``) in its ``bin/`` first, and
the component processes run as in the activated virtualenv.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from streamflow.errors import StreamflowError
from streamflow.multilang.process import TOPOLOGY_VIRTUALENV, _die_with_parent

__all__ = ["TOPOLOGY_VIRTUALENV", "Virtualenvs", "VirtualenvError", "requirements_file"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SPECS_DIR = "virtualenvs"
"""Where a project's requirements files are, unless its config.json's ``virtualenv_specs`` says."""
READY = ".streamflow-ready"
"""Written into a virtualenv once it is built; its mtime is when it was last used."""
BUILD_TIMEOUT_SECS = 900.0
"""Longest a step of a build (venv, pip) may take before it is stopped and the build failed."""
RETRY_FIRST_SECS, RETRY_MAX_SECS = 60.0, 1800.0
"""A failed build is tried again after 1, 2, 4 ... minutes, at most half an hour."""
SHEBANG_MAX = 127
"""Longest ``#!`` line the kernel reads whole; a longer interpreter path goes through sh."""


class VirtualenvError(StreamflowError):
    """A topology's virtualenv could not be built; its message is one line."""

    def __init__(self, message: str, failed_at: float = 0.0) -> None:
        super().__init__(message)
        self.failed_at = failed_at
        """When the build failed: one failure is reported once, however many slots wait on it."""


def requirements_file(code_dir: Path, topology_file: str, overrides: Mapping[str, Any]) -> Path | None:
    """The requirements file of the topology at ``topology_file`` (its path in the code
    package unpacked in ``code_dir``), as ``sparse submit`` finds it: ``NAME.txt`` in the
    project config.json's ``virtualenv_specs`` (``virtualenvs/``), NAME being the
    environment's ``virtualenv_name`` or the file's stem. None when there is no such file,
    or the environment (the only one, or ``-c streamparse.env=NAME``'s) says
    ``"use_virtualenv": false``."""
    config = _json_object(code_dir / "config.json")
    envs = _typed(config, "envs", dict, {})
    chosen = overrides.get("streamparse.env", next(iter(envs)) if len(envs) == 1 else None)
    env = _typed(envs, chosen, dict, {})
    if env.get("use_virtualenv") is False:
        return None
    specs = _typed(config, "virtualenv_specs", str, SPECS_DIR)
    name = _typed(env, "virtualenv_name", str, Path(topology_file).stem)
    path = (code_dir / specs / f"{name}.txt").resolve()
    return path if path.is_file() and path.is_relative_to(code_dir.resolve()) else None


def _typed(mapping: Mapping[Any, Any], key: Any, kind: type[T], default: T) -> T:
    """``mapping[key]`` if it is a ``kind``, else ``default``."""
    value = mapping.get(key)
    return value if isinstance(value, kind) else default


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or not JSON: loading the topology says so
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class _Build:
    """What this process knows of one virtualenv: a build under way, or its last failure."""

    thread: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None
    error: VirtualenvError | None = None
    failures: int = 0
    retry_at: float = 0.0
    users: set[str] = field(default_factory=set)


class Virtualenvs:
    """The virtualenvs of one supervisor, in ``directory``, one per requirements text.

    :meth:`get` is called from the supervisor's loop and never waits for a build;
    ``on_change`` is called (from the build's thread) when a build ends, either way."""

    def __init__(self, directory: Path, on_change: Callable[[], None] = lambda: None) -> None:
        self.directory = directory.absolute()  # the workers and the builds run elsewhere
        self._on_change = on_change
        self._builds: dict[str, _Build] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def path(self, requirements: Path) -> Path:
        """Where the virtualenv of ``requirements`` is: named by its text and the interpreter."""
        digest = hashlib.sha256(requirements.read_bytes())
        digest.update(f"\0{sys.executable}\0{sys.version}".encode())
        return self.directory / digest.hexdigest()[:16]

    def get(self, requirements: Path, project: Path, user: str = "") -> Path | None:
        """The built virtualenv of ``requirements``; None while it is being built (the first
        call starts the build; pip runs in ``project``, the root that the file's relative
        paths are taken from). Raises :class:`VirtualenvError` with the last build's
        failure until its retry time, then builds again. ``user`` (a topology) is named
        in the build's log lines."""
        venv = self.path(requirements)
        if (venv / READY).exists():
            return venv
        with self._lock:
            build = self._builds.setdefault(venv.name, _Build())
            build.users.add(user)
            if build.thread is not None:
                return None
            if build.error is not None and time.monotonic() < build.retry_at:
                raise build.error
            if self._stopping:
                return None
            build.thread = threading.Thread(target=self._build, args=(venv, project, requirements, build),
                                            name=f"virtualenv {venv.name}", daemon=True)
        log.info("building the virtualenv of %s (for %s) in %s", _named(requirements),
                 ", ".join(sorted(build.users)), venv)
        build.thread.start()
        return None

    def mark_used(self, venvs: set[Path]) -> None:
        """Record that ``venvs`` are in use now (:meth:`remove_idle` keeps them)."""
        for venv in venvs:
            try:
                os.utime(venv / READY)
            except OSError:
                pass

    def remove_idle(self, idle_secs: float) -> list[Path]:
        """Remove the built virtualenvs not used for ``idle_secs`` (each changed requirements
        file makes a new one); return them."""
        idle_since = time.time() - idle_secs
        removed = []
        for venv in sorted(self.directory.iterdir()) if self.directory.is_dir() else []:
            ready = venv / READY
            if venv.is_dir() and ready.exists() and ready.stat().st_mtime < idle_since:
                ready.unlink()  # first: a half-removed virtualenv is one to build again
                shutil.rmtree(venv, ignore_errors=True)
                removed.append(venv)
            elif venv.suffix == ".log" and not venv.with_suffix("").exists() and venv.stat().st_mtime < idle_since:
                venv.unlink()  # the output of a build that failed
        return removed

    def stop(self) -> None:
        """Stop the builds under way (their process groups) and wait for their threads."""
        with self._lock:
            self._stopping = True
            builds = list(self._builds.values())
        for build in builds:
            if (process := build.process) is not None:
                _signal_group(process.pid, signal.SIGKILL)  # its thread reaps it
        for build in builds:
            if (thread := build.thread) is not None:
                thread.join(10)

    # -- the build, in its thread ------------------------------------------------------

    def _build(self, venv: Path, project: Path, requirements: Path, build: _Build) -> None:
        began = time.monotonic()
        output = self.directory / f"{venv.name}.log"
        try:
            self._make(venv, project, requirements, build, output)
        except Exception as exc:  # a failed step; or a full disk, a removed code directory
            said = str(exc) if isinstance(exc, VirtualenvError) else f"{type(exc).__name__}: {exc}"
            said = f"{_named(requirements)}: {said}"
            shutil.rmtree(venv, ignore_errors=True)  # its output stays, beside it
            with self._lock:
                build.failures += 1
                delay = min(RETRY_FIRST_SECS * 2 ** (build.failures - 1), RETRY_MAX_SECS)
                build.retry_at = time.monotonic() + delay
                build.error = VirtualenvError(said, time.time())
            log.warning("cannot build the virtualenv %s: %s (the build's output: %s); trying again in %.0f s",
                        venv, said, output, delay)
        else:
            with self._lock:
                build.error, build.failures = None, 0
            log.info("built the virtualenv of %s in %s in %.1f s", _named(requirements), venv,
                     time.monotonic() - began)
        finally:
            with self._lock:
                build.thread = build.process = None
            self._on_change()

    def _make(self, venv: Path, project: Path, requirements: Path, build: _Build, output: Path) -> None:
        shutil.rmtree(venv, ignore_errors=True)  # what a build stopped half-way left
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(output, "wb") as out:
            has_pip = importlib.util.find_spec("pip") is not None  # else the venv gets its own
            self._run([sys.executable, "-m", "venv", *(["--without-pip"] if has_pip else []), str(venv)],
                      project, build, out, "python -m venv")
            python = venv / "bin" / "python"
            purelib = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
            (purelib / "_streamflow_environment.pth").write_text(
                "".join(f"import site; site.addsitedir({directory!r})\n" for directory in _site_dirs()))
            self._run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                       "-r", str(requirements)], project, build, out, "pip install")
        launcher = venv / "bin" / "streamparse_run"
        if not launcher.exists():
            launcher.write_text(_launcher(python, "streamparse.run", "main"))
            launcher.chmod(0o755)
        (venv / "requirements.txt").write_bytes(requirements.read_bytes())
        (venv / READY).touch()

    def _run(self, argv: list[str], cwd: Path, build: _Build, out: Any, what: str) -> None:
        """Run one step of a build, its output to ``out``; raise a one-line
        :class:`VirtualenvError` if it fails, takes too long or the supervisor stops."""
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        start = out.tell()
        with self._lock:
            if self._stopping:
                raise VirtualenvError("the supervisor is stopping")
            process = build.process = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            code = process.wait(BUILD_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            raise VirtualenvError(f"{what} took more than {BUILD_TIMEOUT_SECS:.0f} s") from None
        finally:
            _kill_group(process)  # what it started and left behind
        if code < 0:  # stopped: what it said last is not why
            raise VirtualenvError(f"{what} failed (killed by signal {-code})")
        if code > 0:
            out.flush()
            said = _last_error(Path(out.name).read_bytes()[start:].decode(errors="replace"))
            raise VirtualenvError(f"{what} failed (exit {code})" + (f": {said}" if said else ""))


def _named(requirements: Path) -> str:
    """A requirements file as the project names it: ``virtualenvs/NAME.txt``."""
    return f"{requirements.parent.name}/{requirements.name}"


def _site_dirs() -> list[str]:
    """The site-packages of the interpreter running streamflow, in its order."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages() in sys.path:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if Path(d).is_dir()]


def _launcher(python: Path, module: str, function: str) -> str:
    """A console script as pip writes one: ``module.function()`` run by ``python``."""
    shebang = f"#!{python}\n"
    if len(shebang) > SHEBANG_MAX:
        shebang = f"#!/bin/sh\n'''exec' '{python}' \"$0\" \"$@\"\n' '''\n"
    return f"{shebang}import sys\nfrom {module} import {function}\n\nif __name__ == '__main__':\n" \
           f"    sys.exit({function}())\n"


def _last_error(text: str) -> str:
    """The last ``ERROR:`` line of pip's output (the one that says why), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or [""])[-1][:300]


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``process`` leads (it was started in a session of its
    own), what it started included, and reap it."""
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
