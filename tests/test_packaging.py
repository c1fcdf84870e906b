"""What ``pip install .`` ships: every package of the source tree, and its data files."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    directories = {package: Path(path) for package, path in setuptools.get("package-dir", {}).items()}
    found: set[str] = set()
    sources = {"streamflow": Path("streamflow"), "streamflow_connectors": directories["streamflow_connectors"]}
    for top, source in sources.items():
        for init in (ROOT / source).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / source).parts
            found.add(".".join((top, *parts)))
    assert found - listed == set(), "packages missing from pyproject.toml's [tool.setuptools] packages"
    assert listed - found == set(), "pyproject.toml lists packages that do not exist"
