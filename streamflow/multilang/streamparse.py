"""streamparse projects as streamflow topologies: a ``Topology`` class's specs, read as
data, become shell spouts and bolts that run each Python component unchanged as
``streamparse_run [-s SERIALIZER] module.Class`` in the project's ``src/``.

A project is what ``sparse quickstart`` lays out::

    PROJECT/config.json              serializer, and per environment: log, options
    PROJECT/topologies/NAME.py       class NAME(Topology): spout = S.spec(); bolt = B.spec(inputs=...)
    PROJECT/src/...                  the components' modules

What streamparse's ``sparse run`` gives Storm, taken the same way: component ids are the
spec names, a component's task count is its ``par`` (per environment when a dict), its
``config`` is its component config (``topology.tick.tuple.freq.secs`` included), the
topology's config is the environment's ``options`` under the ``Topology.config``
under the ``-c`` values, and the environment's ``log`` settings become pystorm's
``pystorm.log.*``. The environment is config.json's only one, or the one ``-c
streamparse.env=NAME`` picks. Java components cannot run without a JVM: a topology with
one is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from streamflow.components import Component
from streamflow.errors import LoadError
from streamflow.multilang.bolt import ShellBolt
from streamflow.multilang.spout import ShellSpout
from streamflow.topology import Topology, TopologyBuilder

ENV_KEY = "streamparse.env"
"""The ``-c`` key that picks config.json's environment when it has several."""

_SAME_NAMES = ("shuffle", "all", "none", "direct", "local_or_shuffle")
"""Thrift grouping fields that map one to one to streamflow's groupings (fields and
global are both ``fields`` in Storm's thrift: global is fields on no field)."""


def project_root(topology_file: Path) -> Path | None:
    """The project root of a topology file in a streamparse project's ``topologies/``
    (the parent of ``topologies/``, holding ``src/`` or ``config.json``), else None."""
    directory = topology_file.resolve().parent
    root = directory.parent
    if directory.name == "topologies" and ((root / "src").is_dir() or (root / "config.json").is_file()):
        return root
    return None


def topology_class(module: Any) -> type | None:
    """The streamparse ``Topology`` subclass ``module`` defines (one of its own first),
    or None."""
    found = [value for value in vars(module).values() if isinstance(value, type) and _is_topology(value)]
    own = [cls for cls in found if cls.__module__ == module.__name__]
    candidates = own or found
    return candidates[0] if candidates else None


def _is_topology(cls: type) -> bool:
    return any(base.__name__ == "Topology" and base.__module__.startswith("streamparse")
               for base in cls.__mro__[1:])


def build_topology(cls: type, name: str, root: Path | None, overrides: Mapping[str, Any]) -> Topology:
    """The streamflow topology of streamparse ``Topology`` subclass ``cls``."""
    from streamparse.dsl.bolt import JavaBoltSpec, ShellBoltSpec
    from streamparse.dsl.spout import JavaSpoutSpec, ShellSpoutSpec

    config = _project_config(root)
    env_name, env = _environment(config, overrides, root)
    serializer = env.get("serializer", config.get("serializer"))
    src = root / "src" if root is not None else None
    cwd = src if src is not None and src.is_dir() else root
    builder = TopologyBuilder(name)
    for spec in cls.specs:  # type: ignore[attr-defined]
        where = f"topology {name!r}: component {spec.name!r}"
        if isinstance(spec, (JavaBoltSpec, JavaSpoutSpec)):
            kind = "JavaBolt" if isinstance(spec, JavaBoltSpec) else "JavaSpout"
            raise LoadError(f"{where} is a {kind}: streamflow runs no JVM, so Java components cannot run "
                            "(write it in Python, or as a multilang component in any language)")
        if not isinstance(spec, (ShellBoltSpec, ShellSpoutSpec)):
            raise LoadError(f"{where}: unsupported component spec {type(spec).__name__}")
        shell = spec.component_object.shell
        command, script = shell.execution_command, shell.script
        if serializer and Path(command).name == "streamparse_run":
            script = f"-s {serializer} {script}"
        outputs = {stream: list(info.output_fields) for stream, info in spec.outputs.items()}
        declared: Any = outputs["default"] if list(outputs) == ["default"] else outputs
        component_config = json.loads(spec.config) if isinstance(spec.config, str) else dict(spec.config or {})
        par = _parallelism(spec.par, env_name, where)
        component: Component
        if isinstance(spec, ShellSpoutSpec):
            component = ShellSpout(command, script, declared, cwd=cwd)
            builder.set_spout(spec.name, component, par, component_config)
            continue
        component = ShellBolt(command, script, declared, cwd=cwd)
        declarer = builder.set_bolt(spec.name, component, par, component_config)
        for stream_id, grouping in spec.inputs.items():
            kind, fields = _grouping(grouping, where)
            declarer.grouping(stream_id.componentId, kind, fields, stream_id.streamId)
    topology_config = {**_options(env), **dict(getattr(cls, "config", None) or {})}
    return builder.build({key: value for key, value in topology_config.items() if key != ENV_KEY})


def _project_config(root: Path | None) -> dict[str, Any]:
    path = root / "config.json" if root is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise LoadError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _environment(config: Mapping[str, Any], overrides: Mapping[str, Any], root: Path | None
                 ) -> tuple[str | None, dict[str, Any]]:
    envs = config.get("envs") or {}
    if not isinstance(envs, dict):
        raise LoadError(f"{root}/config.json: 'envs' must be an object")
    chosen = overrides.get(ENV_KEY)
    if chosen is None:
        if len(envs) > 1:
            raise LoadError(f"{root}/config.json has several environments ({', '.join(sorted(envs))}): "
                            f"pick one with -c {ENV_KEY}=NAME")
        chosen = next(iter(envs), None)
    elif chosen not in envs:
        raise LoadError(f"{root}/config.json has no environment {chosen!r} "
                        f"(it has: {', '.join(sorted(envs)) or 'none'})")
    env = envs.get(chosen) or {}
    return chosen, dict(env) if isinstance(env, dict) else {}


def _options(env: Mapping[str, Any]) -> dict[str, Any]:
    """Storm options of an environment, with its log settings as pystorm reads them
    (what streamparse's ``resolve_options`` passes to Storm, less its ssh and
    virtualenv bookkeeping)."""
    options = dict(env.get("options") or {})
    log = env.get("log") or {}
    if log.get("path") or env.get("log_path"):
        options["pystorm.log.path"] = log.get("path") or env.get("log_path")
    if log.get("file") or env.get("log_file"):
        options["pystorm.log.file"] = log.get("file") or env.get("log_file")
    for key in ("max_bytes", "backup_count"):
        if isinstance(log.get(key), int):
            options[f"pystorm.log.{key}"] = log[key]
    if isinstance(log.get("level"), str):
        options["pystorm.log.level"] = log["level"].lower()
    return options


def _parallelism(par: Any, env_name: str | None, where: str) -> int:
    if isinstance(par, dict):
        if env_name not in par:
            raise LoadError(f"{where}: par gives no parallelism for environment {env_name!r} "
                            f"(it has: {', '.join(sorted(par))})")
        return int(par[env_name])
    return int(par)


def _grouping(grouping: Any, where: str) -> tuple[str, list[str]]:
    """A streamparse (thrift) grouping as a streamflow grouping name and its fields."""
    if grouping.fields is not None:
        return ("fields", list(grouping.fields)) if grouping.fields else ("global", [])
    for name in _SAME_NAMES:
        if getattr(grouping, name, None) is not None:
            return name, []
    raise LoadError(f"{where}: grouping {grouping!r} needs Java (custom groupings cannot run without a JVM)")
