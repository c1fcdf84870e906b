"""Code packages: a submitted topology file with the directory it lives in (a streamparse
project's whole root: ``src/``, ``config.json``, ``topologies/``), as a zip.

The submitting CLI packs, nimbus stores the package in ZooKeeper, and each supervisor
unpacks it once per topology for its workers, so code reaches every node without a
shared filesystem and survives a nimbus leader change.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from streamflow.errors import StreamflowError
from streamflow.multilang.streamparse import project_root

MAX_PACKAGE_BYTES = 32 * 1024 * 1024
SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache",
                ".pytest_cache", ".ruff_cache"}


def code_root(topology_file: Path) -> Path:
    """What a submission ships: the root of the streamparse project ``topology_file`` is in,
    else the file's directory."""
    return project_root(topology_file) or topology_file.resolve().parent


def pack(topology_file: Path) -> tuple[str, bytes]:
    """Zip :func:`code_root` of ``topology_file`` (hidden and cache directories left out);
    return the file's path in the package, and the package."""
    root = code_root(topology_file)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part in SKIPPED_DIRS or part.startswith(".") for part in relative.parts):
                continue
            if path.is_file():
                archive.write(path, relative.as_posix())
                if buffer.tell() > MAX_PACKAGE_BYTES:
                    raise StreamflowError(
                        f"the directory of {topology_file} packs to more than "
                        f"{MAX_PACKAGE_BYTES // 2**20} MiB: put the topology in a directory of its own"
                    )
    return topology_file.resolve().relative_to(root).as_posix(), buffer.getvalue()


def unpack(package: bytes, directory: Path) -> None:
    """Extract a package into ``directory`` (refusing paths that escape it)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory.resolve()
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        for name in archive.namelist():
            if not (target / name).resolve().is_relative_to(target):
                raise StreamflowError(f"code package entry {name!r} escapes its directory")
        archive.extractall(target)
