"""Config: ``-c key=value`` parsing and validate_config's types, ranges and defaults."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from streamflow.config import SETTINGS, Setting, parse_overrides, parse_value, validate_config
from streamflow.errors import ConfigError, StreamflowError


def config_error(call, *fragments):
    with pytest.raises(ConfigError) as info:
        call()
    assert isinstance(info.value, StreamflowError)
    message = str(info.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --------------------------------------------------------------------------- parse_overrides


@pytest.mark.parametrize(
    "option, expected",
    [
        ("a=1", {"a": 1}),
        ("a=true", {"a": True}),
        ("a=false", {"a": False}),
        ("a=null", {"a": None}),
        ("a=2.5", {"a": 2.5}),
        ("a=-3", {"a": -3}),
        ("a=hello", {"a": "hello"}),
        ("a=", {"a": ""}),
        ("a=b=c", {"a": "b=c"}),
        ("a=[1,2]", {"a": [1, 2]}),
        ('a={"x": 1}', {"a": {"x": 1}}),
        ('a="1"', {"a": "1"}),
        ("a=True", {"a": "True"}),  # not JSON: kept as a string
        ("a=hello world", {"a": "hello world"}),
        (" a =1", {"a": 1}),  # the key is stripped
        ("topology.workers=4", {"topology.workers": 4}),
        ("input.path=/data/in.txt", {"input.path": "/data/in.txt"}),
    ],
)
def test_parse_overrides_single(option, expected):
    result = parse_overrides([option])
    assert result == expected
    for key, value in expected.items():
        assert type(result[key]) is type(value)


def test_parse_overrides_many_and_last_wins():
    assert parse_overrides(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("option", ["novalue", "=x", "=", "  =1", ""])
def test_parse_overrides_malformed(option):
    message = config_error(lambda: parse_overrides(["ok=1", option]), repr(option),
                           "key=value")
    assert "-c" in message


def test_parse_overrides_malformed_option_with_newline_is_one_line():
    config_error(lambda: parse_overrides(["bad\noption"]), "'bad\\noption'")


# --------------------------------------------------------------------------- parse_value


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1", 1), ("0", 0), ("true", True), ("false", False), ("null", None), ("1.5", 1.5),
        ("hello", "hello"), ("", ""), ("[1, \"a\"]", [1, "a"]), ("{", "{"), ("01", "01"),
        ("1e3", 1000.0),
    ],
)
def test_parse_value(text, expected):
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


# --------------------------------------------------------------------------- validate_config


def test_validate_config_fills_defaults():
    merged = validate_config({})
    assert set(merged) == set(SETTINGS)
    assert merged["topology.message.timeout.secs"] == 30
    assert merged["topology.workers"] == 1
    assert merged["topology.acker.executors"] is None
    assert merged["topology.tick.tuple.freq.secs"] is None
    for key, setting in SETTINGS.items():
        assert merged[key] == setting.default
        setting.check(setting.default)  # every default passes its own check


def test_validate_config_returns_a_copy_with_given_values():
    given = {"topology.workers": 3, "my.key": [1, 2]}
    merged = validate_config(given)
    assert merged["topology.workers"] == 3
    assert merged["my.key"] == [1, 2]
    assert merged["topology.message.timeout.secs"] == 30
    assert given == {"topology.workers": 3, "my.key": [1, 2]}
    merged["topology.workers"] = 9
    assert given["topology.workers"] == 3


def test_validate_config_accepts_any_mapping():
    merged = validate_config(MappingProxyType({"topology.workers": 2}))
    assert merged["topology.workers"] == 2


def test_validate_config_unknown_user_keys_pass():
    odd = object()
    merged = validate_config({"input.path": "/x", "topology.custom": "anything", "obj": odd,
                              "nested": {"a": [1]}})
    assert merged["input.path"] == "/x"
    assert merged["topology.custom"] == "anything"
    assert merged["obj"] is odd
    assert merged["nested"] == {"a": [1]}


@pytest.mark.parametrize(
    "key, value",
    [
        ("topology.workers", 1), ("topology.workers", 64),
        ("topology.acker.executors", 0), ("topology.acker.executors", 4),
        ("topology.message.timeout.secs", 0.001), ("topology.message.timeout.secs", 30),
        ("topology.message.timeout.secs", 2.5),
        ("topology.max.spout.pending", 1),
        ("topology.executor.receive.buffer.size", 1),
        ("topology.producer.batch.size", 1),
        ("topology.tick.tuple.freq.secs", 1), ("topology.tick.tuple.freq.secs", 0.5),
        ("kafka.stop_at_end", True), ("kafka.stop_at_end", False),
        ("kafka.quotas", {}), ("kafka.quotas", {"wc-sentences": {"records_per_sec": 100}}),
        ("kafka.quotas", {"a": {"bytes_per_sec": 1.5e6, "records_per_sec": None}, "b": {}}),
    ],
)
def test_validate_config_accepts_valid_values(key, value):
    assert validate_config({key: value})[key] == value


@pytest.mark.parametrize(
    "key",
    ["topology.acker.executors", "topology.max.spout.pending", "topology.tick.tuple.freq.secs",
     "kafka.stop_at_end", "kafka.quotas"],
)
def test_validate_config_accepts_null_where_nullable(key):
    assert SETTINGS[key].nullable
    assert validate_config({key: None})[key] is None


@pytest.mark.parametrize(
    "key",
    [k for k, s in SETTINGS.items() if not s.nullable],
)
def test_validate_config_rejects_null_where_not_nullable(key):
    config_error(lambda: validate_config({key: None}), repr(key), "None")


@pytest.mark.parametrize(
    "key, value, fragments",
    [
        ("topology.workers", "four", ["an integer", "'four'"]),
        ("topology.workers", 2.0, ["an integer", "2.0"]),
        ("topology.workers", True, ["an integer", "True"]),
        ("topology.workers", 0, [">= 1", "got 0"]),
        ("topology.workers", -3, [">= 1"]),
        ("topology.acker.executors", -1, [">= 0", "or null", "got -1"]),
        ("topology.acker.executors", "2", ["an integer"]),
        ("topology.message.timeout.secs", 0, ["a number > 0", "got 0"]),
        ("topology.message.timeout.secs", -1.5, ["> 0"]),
        ("topology.message.timeout.secs", "30", ["a number", "'30'"]),
        ("topology.message.timeout.secs", False, ["a number", "False"]),
        ("topology.message.timeout.secs", float("nan"), ["> 0", "nan"]),
        ("topology.max.spout.pending", 0, [">= 1", "or null"]),
        ("topology.max.spout.pending", 1.5, ["an integer"]),
        ("topology.executor.receive.buffer.size", 0, [">= 1"]),
        ("topology.producer.batch.size", -1, [">= 1"]),
        ("topology.tick.tuple.freq.secs", 0, ["> 0", "or null"]),
        ("topology.tick.tuple.freq.secs", "1", ["a number"]),
        # A -c value that is not JSON stays a string: "False" must not read as true.
        ("kafka.stop_at_end", "False", ["true or false", "'False'"]),
        ("kafka.stop_at_end", 1, ["true or false"]),
        ("kafka.quotas", "notjson", ["an object {client id:", "'notjson'"]),
        ("kafka.quotas", {"wc": 100}, ["an object"]),
        ("kafka.quotas", {"wc": {"records_per_second": 100}}, ["records_per_sec"]),
        ("kafka.quotas", {"wc": {"records_per_sec": -1}}, [">= 0"]),
        ("kafka.quotas", {"wc": {"bytes_per_sec": "1MB"}}, ["rates >= 0"]),
        ("kafka.quotas", {"wc": {"records_per_sec": True}}, ["an object"]),
    ],
)
def test_validate_config_rejects_wrong_type_or_range(key, value, fragments):
    message = config_error(lambda: validate_config({key: value}), f"config {key!r}",
                           "expected", *fragments)
    assert message.startswith("config ")


def test_validate_config_where_prefix():
    message = config_error(
        lambda: validate_config({"topology.workers": 0}, "component 'count': "),
        "topology.workers")
    assert message.startswith("component 'count': config 'topology.workers'")


def test_validate_config_rejects_non_mapping():
    config_error(lambda: validate_config(["topology.workers"]), "mapping", "list")  # type: ignore[arg-type]
    message = config_error(lambda: validate_config("x", "component 'c': "), "mapping", "str")  # type: ignore[arg-type]
    assert message.startswith("component 'c': ")


def test_validate_config_rejects_non_str_key():
    config_error(lambda: validate_config({3: 1}), "config key 3 is not a string")


def test_validate_config_error_value_with_newline_is_one_line():
    config_error(lambda: validate_config({"topology.workers": "a\nb"}), "'a\\nb'")


def test_setting_describe():
    s = Setting("x", int, 1, minimum=1)
    assert s.check(5) == 5
    config_error(lambda: s.check(0), "config 'x': expected an integer >= 1, got 0")
    b = Setting("flag", bool, False)
    assert b.check(True) is True
    config_error(lambda: b.check(1), "config 'flag': expected true or false, got 1")
    f = Setting("f", float, None, minimum=0.5, exclusive_minimum=True, nullable=True)
    assert f.check(None) is None
    config_error(lambda: f.check(0.5), "expected a number > 0.5 or null, got 0.5")


def test_parsed_overrides_validate():
    """The -c path end to end: parsed values have the types validation expects."""
    parsed = parse_overrides(["topology.workers=2", "topology.acker.executors=null",
                              "topology.message.timeout.secs=1.5", "input.path=/x"])
    merged = validate_config(parsed)
    assert merged["topology.workers"] == 2
    assert merged["topology.acker.executors"] is None
    assert merged["topology.message.timeout.secs"] == 1.5
    assert merged["input.path"] == "/x"
    config_error(lambda: validate_config(parse_overrides(["topology.workers=four"])),
                 "'topology.workers'", "'four'")
