"""Loads a topology file: a Python file with ``build(config) -> Topology``.

The file runs as a module named after it, with its own directory importable, so it can
import helpers that sit beside it. ``build`` receives the ``-c`` values, so a topology can
pick its sources and sinks from them; they are also laid over the topology's config.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Mapping

from streamflow.errors import LoadError, StreamflowError
from streamflow.topology import Topology

ENTRY_POINT = "build"


def load_topology(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Topology:
    """Import ``path``, call its ``build(config)`` and return the validated topology.

    Raises :class:`LoadError` (or the ``TopologyError``/``ConfigError`` that validation
    raises) with a one-line message.
    """
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"no such topology file: {path}")
    module = _import(path)
    build = getattr(module, ENTRY_POINT, None)
    if not callable(build):
        raise LoadError(f"{path} defines no topology: expected a function "
                        f"{ENTRY_POINT}(config) that returns a Topology")
    config = dict(overrides or {})
    try:
        topology = build(config)
    except StreamflowError:
        raise
    except Exception as exc:
        raise LoadError(f"{path}: {ENTRY_POINT}() raised {_describe(exc)}") from exc
    if not isinstance(topology, Topology):
        raise LoadError(f"{path}: {ENTRY_POINT}() returned {type(topology).__name__}, "
                        "expected a Topology (TopologyBuilder.build())")
    return topology.with_config(config)


def _import(path: Path) -> Any:
    name = f"streamflow_topology_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise LoadError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        del sys.modules[name]
        raise LoadError(f"{path}: import raised {_describe(exc)}") from exc
    return module


def _describe(exc: BaseException) -> str:
    """``Type: message at file:line`` of the innermost frame, on one line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}{where}"
