"""No two modules of streamflow/ or connectors/ import each other, directly or through
others: each import goes one way, so a reader finds where a thing is defined by
following imports down, never round. And what every process that starts a topology
imports leaves out the clients it may not use."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"streamflow": ROOT / "streamflow", "streamflow_connectors": ROOT / "connectors"}


def module_names() -> dict[str, Path]:
    modules = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ours that ``name`` imports anywhere in its file (at the top or in a
    function: either way each needs the other to be importable)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def cycles() -> set[frozenset[str]]:
    """Every pair of modules that reach each other through imports."""
    modules = module_names()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        reach[start] = seen
    return {frozenset({a, b}) for a in graph for b in reach[a] if a != b and a in reach.get(b, set())}


def test_no_two_modules_import_each_other() -> None:
    assert not cycles(), sorted(sorted(pair) for pair in cycles())


def test_starting_a_topology_imports_no_redis_client_unless_its_state_is_in_redis() -> None:
    # Every process that starts a topology (the CLI, nimbus's describe child, each worker)
    # imports these; redis-py took 85 ms of a 200 ms start when they imported it.
    code = ("import sys, streamflow.cli, streamflow.worker_process, streamflow_connectors.kafka; "
            "print('redis' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
