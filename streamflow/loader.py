"""Loads a topology file: a Python file with ``build(config) -> Topology``, or a
streamparse project's topology file (a ``Topology`` subclass, no ``build``).

The file runs as a module named after it, with its own directory importable, so it can
import helpers that sit beside it. ``build`` receives the ``-c`` values, so a topology can
pick its sources and sinks from them; they are also laid over the topology's config.

A file in a streamparse project's ``topologies/`` is imported with the project's
``src/`` importable too (its components' modules); a ``Topology`` subclass it defines
becomes a topology named after the file, of multilang components run in ``src/``
(:mod:`streamflow.multilang.streamparse`). Shell components (``ShellBolt``,
``ShellSpout``) of any topology run in the topology file's directory unless they name
their own.
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
    config = dict(overrides or {})
    project = _streamparse_root(path)
    module = _import(path, project / "src" if project is not None else None)
    build = getattr(module, ENTRY_POINT, None)
    if not callable(build):
        streamparse_topology = _streamparse_topology(module)
        if streamparse_topology is None:
            raise LoadError(f"{path} defines no topology: expected a function "
                            f"{ENTRY_POINT}(config) that returns a Topology, or a streamparse Topology class")
        from streamflow.multilang.streamparse import build_topology

        try:
            topology = build_topology(streamparse_topology, path.stem, project, config)
        except StreamflowError:
            raise
        except Exception as exc:
            raise LoadError(f"{path}: {_describe(exc)}") from exc
        return _with_shell_components(topology.with_config(config), path)
    try:
        topology = build(config)
    except StreamflowError:
        raise
    except Exception as exc:
        raise LoadError(f"{path}: {ENTRY_POINT}() raised {_describe(exc)}") from exc
    if not isinstance(topology, Topology):
        raise LoadError(f"{path}: {ENTRY_POINT}() returned {type(topology).__name__}, "
                        "expected a Topology (TopologyBuilder.build())")
    return _with_shell_components(topology.with_config(config), path)


def _streamparse_root(path: Path) -> Path | None:
    """The project root when ``path`` is in a streamparse project's ``topologies/``."""
    from streamflow.multilang.streamparse import project_root

    return project_root(path)


def _streamparse_topology(module: Any) -> type | None:
    """The streamparse ``Topology`` subclass the module defines, if it imported streamparse."""
    if "streamparse" not in sys.modules:
        return None
    from streamflow.multilang.streamparse import topology_class

    return topology_class(module)


def _with_shell_components(topology: Topology, path: Path) -> Topology:
    """Tell the shell components of ``topology`` about the topology (for their
    handshake) and where to run when they name no directory."""
    from streamflow.multilang.shell import ShellComponent, attach_topology, default_cwd

    if any(isinstance(spec.component, ShellComponent) for spec in topology.components.values()):
        default_cwd(topology, path.resolve().parent)
        attach_topology(topology)
    return topology


def _import(path: Path, also_importable: Path | None = None) -> Any:
    name = f"streamflow_topology_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    extra = str(also_importable.resolve()) if also_importable is not None and also_importable.is_dir() else None
    added = extra is not None and extra not in sys.path
    if added:
        sys.path.insert(0, extra)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise LoadError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        del sys.modules[name]
        raise LoadError(f"{path}: import raised {_describe(exc)}") from exc
    finally:
        if added:
            sys.path.remove(extra)  # type: ignore[arg-type]
    return module


def _describe(exc: BaseException) -> str:
    """``Type: message at file:line`` of the innermost frame, on one line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}{where}"
