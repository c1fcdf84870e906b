"""Topology config: Storm's key names, their types, defaults and ``-c key=value`` parsing.

Config is a plain dict so that user keys (``input.path``) travel beside engine keys
(``topology.workers``). Only the keys listed in :data:`SETTINGS` are checked; any other
key is the topology's own business. Two of them are the Kafka spout's, as the CLI sets
them on any topology (``kafka.stop_at_end``, and ``kafka.quotas``, which ``set-config``
changes on a running one): nimbus checks them here without loading connector code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from streamflow.errors import ConfigError
from streamflow.state.providers import PROVIDERS


@dataclass(frozen=True)
class Setting:
    """One engine config key: its type, lower bound and default."""

    key: str
    kind: type  # int, float or bool (float also accepts int), or dict with ``accepts``
    default: Any
    minimum: float | None = None
    exclusive_minimum: bool = False
    nullable: bool = False
    doc: str = ""
    accepts: Callable[[Any], bool] | None = None
    """For a structured value: whether it has the shape that ``expected`` describes."""
    expected: str = ""

    def check(self, value: Any) -> Any:
        """Return ``value`` if it fits this setting, else raise :class:`ConfigError`."""
        if value is None and self.nullable:
            return None
        if self.accepts is not None:
            ok = self.accepts(value)
        elif self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and self.minimum is not None:
            ok = value > self.minimum if self.exclusive_minimum else value >= self.minimum
        if not ok:
            raise ConfigError(f"config {self.key!r}: expected {self._describe()}, got {value!r}")
        return value

    def _describe(self) -> str:
        names = {bool: "true or false", int: "an integer", float: "a number"}
        text = self.expected or names[self.kind]
        if self.minimum is not None:
            text += f" {'>' if self.exclusive_minimum else '>='} {self.minimum:g}"
        if self.nullable:
            text += " or null"
        return text


SERIALIZERS = ("msgpack", "pickle")
"""How values cross between workers: data only (msgpack), or anything (pickle, which runs
code when it loads: only for topologies that trust every peer)."""


def _registrations(value: Any) -> bool:
    """Whether ``value`` is a list of ``"module:Class"`` names, or of one-key mappings
    ``{"module:Class": "module:Serializer"}``."""
    def name(text: Any) -> bool:
        return isinstance(text, str) and text.count(":") == 1 and all(text.split(":"))

    return isinstance(value, (list, tuple)) and all(
        name(item) or (isinstance(item, Mapping) and len(item) == 1
                       and all(name(k) and name(v) for k, v in item.items()))
        for item in value)


def _quotas(value: Any) -> bool:
    """Whether ``value`` is ``{client id: {"bytes_per_sec": B, "records_per_sec": R}}``
    with each rate a number >= 0 or null (either key may be left out)."""
    return isinstance(value, Mapping) and all(
        isinstance(quota, Mapping) and set(quota) <= {"bytes_per_sec", "records_per_sec"}
        and all(rate is None or (isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate >= 0)
                for rate in quota.values())
        for quota in value.values())


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        Setting("topology.workers", int, 1, minimum=1,
                doc="worker processes the topology runs on (cluster mode)"),
        Setting("topology.acker.executors", int, None, minimum=0, nullable=True,
                doc="acker tasks; 0 turns acking off; null means one per worker"),
        Setting("topology.message.timeout.secs", float, 30, minimum=0, exclusive_minimum=True,
                doc="a tuple tree not completed within this time is failed and replayed"),
        Setting("topology.max.spout.pending", int, 500, minimum=1, nullable=True,
                doc="tuple trees in flight per spout task; null means unbounded"),
        Setting("topology.executor.receive.buffer.size", int, 32768, minimum=1,
                doc="tuples queued at a task before its senders wait (backpressure)"),
        Setting("topology.producer.batch.size", int, 50, minimum=1,
                doc="tuples a spout task emits per round before it flushes"),
        Setting("topology.tick.tuple.freq.secs", float, None, minimum=0,
                exclusive_minimum=True, nullable=True,
                doc="send each bolt task a tick tuple this often"),
        Setting("topology.state.provider", str, "memory", accepts=lambda v: v in PROVIDERS,
                expected=f"one of {', '.join(PROVIDERS)}",
                doc="where stateful bolts keep their checkpointed state: memory (not durable) or redis"),
        Setting("topology.state.redis.url", str, None, nullable=True, accepts=lambda v: isinstance(v, str),
                expected="a redis:// or rediss:// URL",
                doc="the Redis of the redis state provider: redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS)"),
        Setting("topology.state.namespace", str, None, nullable=True,
                accepts=lambda v: isinstance(v, str) and bool(v),
                expected="a non-empty string",
                doc="the name a topology's state is kept under (null: the topology's name)"),
        Setting("topology.state.checkpoint.interval.ms", int, 1000, minimum=1,
                doc="how often a topology with stateful bolts checkpoints their state"),
        Setting("topology.state.key.groups", int, 128, minimum=1,
                doc="key groups of a stateful bolt's state: its highest possible parallelism"),
        Setting("topology.shellbolt.max.pending", int, 100, minimum=1,
                doc="tuples a multilang bolt's process may have unanswered (written, not acked or failed)"),
        Setting("topology.subprocess.timeout.secs", float, 30, minimum=0, exclusive_minimum=True,
                doc="a multilang component's process that answers nothing this long is killed and restarted"),
        Setting("topology.multilang.serializer", str, None, nullable=True, accepts=lambda v: isinstance(v, str),
                expected="json or msgpack",
                doc="how multilang components talk when their command line does not say: json or msgpack"),
        Setting("topology.serializer", str, "msgpack", accepts=lambda v: v in SERIALIZERS,
                expected=f"one of {', '.join(SERIALIZERS)}",
                doc="how tuple values cross between workers: msgpack (data only, and the types of "
                    "topology.serializer.register) or pickle (any value; trusts every peer with code)"),
        Setting("topology.serializer.register", list, (), accepts=_registrations,
                expected='a list of "module:Class" (with to_data/from_data) or '
                         '{"module:Class": "module:Serializer"} entries',
                doc="value types that msgpack carries between workers, as Storm's topology.kryo.register"),
        Setting("kafka.stop_at_end", bool, None, nullable=True,
                doc="Kafka spouts stop at the end offsets seen at start, so local mode ends; "
                    "null: as each spout was built"),
        Setting("kafka.quotas", dict, None, nullable=True, accepts=_quotas,
                expected='an object {client id: {"bytes_per_sec": B, "records_per_sec": R}} of rates >= 0',
                doc="Kafka spouts' records/s and bytes/s per client id; set-config changes them at once"),
    )
}


def validate_config(config: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Check the engine keys in ``config`` and return a copy with defaults filled in.

    ``where`` prefixes the error (for example ``"component 'count': "``) so that
    per-component config errors name their component.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}config must be a mapping, got {type(config).__name__}")
    merged = {key: s.default for key, s in SETTINGS.items()}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}config key {key!r} is not a string")
        setting = SETTINGS.get(key)
        if setting is not None:
            try:
                setting.check(value)
            except ConfigError as exc:
                raise ConfigError(f"{where}{exc}") from None
        merged[key] = value
    _check_state_store(merged, where)
    return merged


def _check_state_store(config: Mapping[str, Any], where: str) -> None:
    """The redis provider needs a well-formed URL (checked here, not connected to)."""
    if config["topology.state.provider"] != "redis":
        return
    url = config["topology.state.redis.url"]
    if not url:
        raise ConfigError(f"{where}config 'topology.state.provider' is redis: set 'topology.state.redis.url' "
                          "(redis://HOST:PORT/DB)")
    from streamflow.state.redis import check_url

    try:
        check_url(url)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def parse_value(text: str) -> Any:
    """Parse a ``-c`` value as JSON (``4``, ``true``, ``null``, ``[1,2]``), else keep the string."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return text


def _refuse_constant(name: str) -> Any:
    """``Infinity`` and ``NaN`` are not JSON numbers: keep them as strings."""
    raise ValueError(name)


def parse_overrides(options: list[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` from ``-c`` options into a config dict."""
    config: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"malformed -c {option!r}: expected key=value")
        config[key] = parse_value(value)
    return config
