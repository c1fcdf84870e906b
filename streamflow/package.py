"""Code packages: a submitted topology file with the directory it lives in (a streamparse
project's whole root: ``src/``, ``config.json``, ``topologies/``), as a zip.

The submitting CLI packs, nimbus stores the package in ZooKeeper, and each supervisor
unpacks it once per topology for its workers, so code reaches every node without a
shared filesystem and survives a nimbus leader change.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from streamflow.errors import StreamflowError
from streamflow.multilang.streamparse import project_root

MAX_PACKAGE_BYTES = 32 * 1024 * 1024
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_ENTRIES = 20_000
MAX_RATIO = 200
"""Unpacked bytes per packed byte, over the whole package: source code deflates 3 to 10
times; a zip bomb a thousand times or more."""
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


def check(package: bytes, file: str) -> None:
    """Refuse a package nimbus should not store: larger than :data:`MAX_PACKAGE_BYTES`,
    not a zip, or whose topology ``file`` is not a relative path to one of its entries."""
    if len(package) > MAX_PACKAGE_BYTES:
        raise StreamflowError(f"code package of {len(package)} bytes exceeds {MAX_PACKAGE_BYTES // 2**20} MiB")
    path = PurePosixPath(file)
    if not file or path.is_absolute() or ".." in path.parts or "\\" in file:
        raise StreamflowError(f"topology file {file!r} must be a relative path inside the package")
    try:
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as exc:
        raise StreamflowError(f"code package is not a zip: {exc}") from None
    if path.as_posix() not in names:
        raise StreamflowError(f"topology file {file!r} is not in the package")


def unpack(package: bytes, directory: Path) -> None:
    """Extract a package into ``directory``, refusing entries that escape it, more than
    :data:`MAX_ENTRIES` entries, and more than :data:`MAX_UNPACKED_BYTES` or
    :data:`MAX_RATIO` times the package's size unpacked. Sizes are counted as the data
    is written, not taken from the zip's directory, which can lie."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory.resolve()
    budget = min(MAX_UNPACKED_BYTES, MAX_RATIO * max(len(package), 1))
    try:
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_ENTRIES:
                raise StreamflowError(f"code package has {len(entries)} entries, more than {MAX_ENTRIES}")
            for entry in entries:
                destination = (target / entry.filename).resolve()
                if not destination.is_relative_to(target):
                    raise StreamflowError(f"code package entry {entry.filename!r} escapes its directory")
                if entry.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(entry) as source, open(destination, "wb") as out:
                    budget -= _copy(source, out, budget)
    except zipfile.BadZipFile as exc:
        raise StreamflowError(f"code package cannot be unpacked: {exc}") from None


def _copy(source: IO[bytes], out: IO[bytes], budget: int) -> int:
    """Copy ``source`` to ``out``; return the bytes copied, raising past ``budget``."""
    copied = 0
    while chunk := source.read(1024 * 1024):
        copied += len(chunk)
        if copied > budget:
            raise StreamflowError(f"code package unpacks to more than its limit "
                                  f"({MAX_UNPACKED_BYTES // 2**20} MiB and {MAX_RATIO} times its packed size)")
        out.write(chunk)
    return copied
