"""Topology validation: every problem is a one-line TopologyError/ConfigError naming the
component and the problem; valid topologies build with their config defaults filled in."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from streamflow import KeyValueState, StatefulBolt
from streamflow.components import AsyncBolt, BasicBolt, Bolt, Spout
from streamflow.config import SETTINGS
from streamflow.errors import ConfigError, StreamflowError, TopologyError
from streamflow.topology import ACKER_COMPONENT, CHECKPOINT_COMPONENT, Topology, TopologyBuilder, task_layout
from streamflow.validation import validate


class WordSpout(Spout):
    outputs = ["word", "n"]


class MultiStreamSpout(Spout):
    outputs = {"default": ["word"], "errors": ["reason", "code"]}


class NoOutputSpout(Spout):
    pass


class SplitBolt(Bolt):
    outputs = ["word"]


class CountBolt(BasicBolt):
    outputs = {"counts": ["word", "count"]}


class SinkBolt(Bolt):
    pass


def make_outputs_bolt(declared):
    return type("CustomBolt", (Bolt,), {"outputs": declared})()


def make_outputs_spout(declared):
    return type("CustomSpout", (Spout,), {"outputs": declared})()


def expect_error(build, error_type, *fragments):
    """Run ``build`` and check the error: its type, one line, and the named fragments."""
    with pytest.raises(error_type) as info:
        build()
    error = info.value
    assert isinstance(error, StreamflowError)
    message = str(error)
    assert message, "empty message"
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def base_builder(name="wc") -> TopologyBuilder:
    builder = TopologyBuilder(name)
    builder.set_spout("words", WordSpout(), parallelism=2)
    return builder


def test_error_classes():
    assert issubclass(TopologyError, StreamflowError)
    assert issubclass(ConfigError, StreamflowError)
    assert not issubclass(TopologyError, ConfigError)


# --------------------------------------------------------------------------- valid topologies


def test_valid_topology_builds():
    builder = TopologyBuilder("wordcount")
    builder.set_spout("words", WordSpout(), parallelism=2)
    builder.set_bolt("split", SplitBolt(), parallelism=3).shuffle_grouping("words")
    builder.set_bolt("count", CountBolt(), parallelism=2).fields_grouping("split", ["word"])
    builder.set_bolt("sink", SinkBolt()).global_grouping("count", stream="counts")
    topology = builder.build({"topology.workers": 2, "input.path": "/tmp/x"})
    assert isinstance(topology, Topology)
    assert topology.name == "wordcount"
    assert set(topology.components) == {"words", "split", "count", "sink"}
    assert [s.name for s in topology.spouts] == ["words"]
    assert {s.name for s in topology.bolts} == {"split", "count", "sink"}
    assert topology.components["count"].outputs == {"counts": ("word", "count")}
    assert topology.components["words"].outputs == {"default": ("word", "n")}
    count_sub = topology.components["count"].inputs[0]
    assert (count_sub.source, count_sub.stream, count_sub.grouping, count_sub.fields) == (
        "split", "default", "fields", ("word",))
    assert [s.name for s, _ in topology.subscribers("count", "counts")] == ["sink"]
    assert topology.config["topology.workers"] == 2
    assert topology.config["input.path"] == "/tmp/x"  # user keys pass through
    validate(topology)  # a built topology is valid


def test_every_grouping_builds():
    builder = TopologyBuilder("all-groupings")
    builder.set_spout("words", WordSpout())
    declarer = builder.set_bolt("b", SinkBolt(), parallelism=2)
    declarer.shuffle_grouping("words").fields_grouping("words", ["word", "n"])
    declarer.all_grouping("words").global_grouping("words").direct_grouping("words")
    declarer.local_or_shuffle_grouping("words").partial_key_grouping("words", ["n"])
    declarer.none_grouping("words")
    declarer.grouping("words", "fields", "word")  # a lone field name as a str
    topology = builder.build()
    groupings = [s.grouping for s in topology.components["b"].inputs]
    assert groupings == ["shuffle", "fields", "all", "global", "direct", "local_or_shuffle",
                         "partial_key", "none", "fields"]
    assert topology.components["b"].inputs[-1].fields == ("word",)


def test_named_streams_and_spout_without_outputs_build():
    builder = TopologyBuilder("streams")
    builder.set_spout("src", MultiStreamSpout())
    builder.set_spout("quiet", NoOutputSpout())
    builder.set_bolt("errs", SinkBolt()).fields_grouping("src", ["code"], stream="errors")
    builder.set_bolt("ok", SinkBolt()).shuffle_grouping("src")
    topology = builder.build()
    assert topology.components["quiet"].outputs == {"default": ()}


def test_config_defaults_filled_in():
    topology = base_builder().build()
    assert topology.config["topology.message.timeout.secs"] == 30
    assert topology.config["topology.workers"] == 1
    assert topology.config["topology.acker.executors"] is None
    for key, setting in SETTINGS.items():
        assert topology.config[key] == setting.default
    assert isinstance(topology.config, MappingProxyType)
    with pytest.raises(TypeError):
        topology.config["topology.workers"] = 3  # type: ignore[index]


def test_given_config_overrides_defaults_and_is_not_mutated():
    given = {"topology.message.timeout.secs": 2.5}
    topology = base_builder().build(given)
    assert topology.config["topology.message.timeout.secs"] == 2.5
    assert given == {"topology.message.timeout.secs": 2.5}


def test_with_config_overrides_and_revalidates():
    topology = base_builder().build({"topology.workers": 2})
    changed = topology.with_config({"topology.workers": 4, "extra": True})
    assert changed.config["topology.workers"] == 4
    assert changed.config["extra"] is True
    assert topology.config["topology.workers"] == 2
    expect_error(lambda: topology.with_config({"topology.workers": 0}), ConfigError,
                 "topology.workers", "'wc'")


# --------------------------------------------------------------------------- task layout


def test_task_layout_sorted_by_name_acker_last():
    builder = TopologyBuilder("layout")
    builder.set_spout("zeta", WordSpout(), parallelism=2)
    builder.set_bolt("alpha", SinkBolt(), parallelism=3).shuffle_grouping("zeta")
    builder.set_bolt("mid", SplitBolt(), parallelism=1).shuffle_grouping("zeta")
    topology = builder.build({"topology.workers": 2})
    layout = topology.task_layout()
    assert list(layout) == ["alpha", "mid", "zeta", ACKER_COMPONENT]
    assert layout == {
        "alpha": (1, 2, 3),
        "mid": (4,),
        "zeta": (5, 6),
        ACKER_COMPONENT: (7, 8),  # one acker per worker when acker.executors is unset
    }
    assert topology.acker_count() == 2


def test_task_layout_acker_executors():
    builder = TopologyBuilder("layout")
    builder.set_spout("s", WordSpout(), parallelism=2)
    builder.set_bolt("b", SinkBolt(), parallelism=2).shuffle_grouping("s")
    three = builder.build({"topology.acker.executors": 3, "topology.workers": 5})
    assert three.task_layout() == {"b": (1, 2), "s": (3, 4), ACKER_COMPONENT: (5, 6, 7)}
    off = builder.build({"topology.acker.executors": 0})
    assert off.task_layout() == {"b": (1, 2), "s": (3, 4), ACKER_COMPONENT: ()}
    default = builder.build()
    assert default.task_layout()[ACKER_COMPONENT] == (5,)


class StateBolt(StatefulBolt):
    def init_state(self, state: KeyValueState) -> None:
        pass

    def process(self, tup):
        pass


def test_a_checkpointed_topology_lays_out_no_acker_and_still_tracks_trees():
    """Its trees complete at commit: no acker task in the layout nimbus and the workers
    derive, but acking (tracking) stays on unless turned off."""
    builder = TopologyBuilder("layout")
    builder.set_spout("s", WordSpout(), parallelism=2)
    builder.set_bolt("c", StateBolt(), parallelism=2).fields_grouping("s", ["word"])
    topology = builder.build({"topology.acker.executors": 3})
    assert topology.task_layout() == {"c": (1, 2), "s": (3, 4), ACKER_COMPONENT: (), CHECKPOINT_COMPONENT: (5,)}
    assert topology.acker_count() == 0 and topology.tracks_trees
    assert task_layout({"c": 2, "s": 2}, 3, checkpoints=True) == topology.task_layout()


def test_task_layout_independent_of_declaration_order():
    a = TopologyBuilder("t")
    a.set_spout("s", WordSpout(), parallelism=2)
    a.set_bolt("b", SinkBolt(), parallelism=2).shuffle_grouping("s")
    b = TopologyBuilder("t")
    b.set_bolt("b", SinkBolt(), parallelism=2).shuffle_grouping("s")
    b.set_spout("s", WordSpout(), parallelism=2)
    assert a.build().task_layout() == b.build().task_layout()


# --------------------------------------------------------------------------- structure errors


def test_cycle():
    builder = base_builder()
    builder.set_bolt("a", SplitBolt()).shuffle_grouping("words").shuffle_grouping("c")
    builder.set_bolt("b", SplitBolt()).shuffle_grouping("a")
    builder.set_bolt("c", SplitBolt()).shuffle_grouping("b")
    message = expect_error(builder.build, TopologyError, "cycle", "'wc'")
    assert "a -> b -> c -> a" in message or "b -> c -> a -> b" in message \
        or "c -> a -> b -> c" in message, message


def test_self_loop():
    builder = base_builder()
    builder.set_bolt("loop", SplitBolt()).shuffle_grouping("words").shuffle_grouping("loop")
    expect_error(builder.build, TopologyError, "'loop'", "cycle", "loop -> loop")


def test_unknown_source_component():
    builder = base_builder()
    builder.set_bolt("split", SplitBolt()).shuffle_grouping("wordz")
    expect_error(builder.build, TopologyError, "'split'", "unknown component", "'wordz'")


def test_unknown_stream():
    builder = base_builder()
    builder.set_bolt("split", SplitBolt()).shuffle_grouping("words", stream="nope")
    expect_error(builder.build, TopologyError, "'split'", "unknown stream", "'nope'",
                 "'words'", "default")


def test_unknown_stream_of_multi_stream_component():
    builder = TopologyBuilder("t")
    builder.set_spout("src", MultiStreamSpout())
    builder.set_bolt("b", SinkBolt()).shuffle_grouping("src", stream="warnings")
    expect_error(builder.build, TopologyError, "'b'", "unknown stream", "'warnings'",
                 "default, errors")


def test_default_stream_missing_when_only_named_streams():
    builder = base_builder()
    builder.set_bolt("count", CountBolt()).shuffle_grouping("words")
    builder.set_bolt("sink", SinkBolt()).shuffle_grouping("count")  # count has no default
    expect_error(builder.build, TopologyError, "'sink'", "unknown stream", "'default'",
                 "counts")


def test_fields_grouping_on_undeclared_field():
    builder = base_builder()
    builder.set_bolt("count", CountBolt()).fields_grouping("words", ["word", "lang"])
    expect_error(builder.build, TopologyError, "'count'", "fields grouping",
                 "undeclared field", "'lang'", "words:default", "word, n")


def test_partial_key_grouping_on_undeclared_field():
    builder = base_builder()
    builder.set_bolt("count", CountBolt()).partial_key_grouping("words", ["lang"])
    expect_error(builder.build, TopologyError, "'count'", "partial_key grouping",
                 "undeclared field", "'lang'")


def test_partial_key_grouping_without_fields():
    builder = base_builder()
    builder.set_bolt("count", CountBolt()).partial_key_grouping("words", [])
    expect_error(builder.build, TopologyError, "'count'", "partial_key grouping",
                 "'words'", "names no field")


def test_fields_grouping_without_fields():
    builder = base_builder()
    builder.set_bolt("count", CountBolt()).fields_grouping("words", ())
    expect_error(builder.build, TopologyError, "'count'", "fields grouping", "names no field")


@pytest.mark.parametrize("grouping", ["shuffle", "all", "global", "direct", "none",
                                      "local_or_shuffle"])
def test_fields_given_to_unkeyed_grouping(grouping):
    builder = base_builder()
    builder.set_bolt("split", SplitBolt()).grouping("words", grouping, ["word"])
    expect_error(builder.build, TopologyError, "'split'", f"{grouping} grouping",
                 "'words'", "takes no fields")


@pytest.mark.parametrize("parallelism", [0, -1, "2", True, False, 1.0, 2.5, None])
def test_bad_parallelism_bolt(parallelism):
    builder = base_builder()
    builder.set_bolt("split", SplitBolt(), parallelism=parallelism).shuffle_grouping("words")
    expect_error(builder.build, TopologyError, "'split'", "parallelism",
                 repr(parallelism))


@pytest.mark.parametrize("parallelism", [0, -1, "2", True])
def test_bad_parallelism_spout(parallelism):
    builder = TopologyBuilder("t")
    builder.set_spout("words", WordSpout(), parallelism=parallelism)
    expect_error(builder.build, TopologyError, "'words'", "parallelism", repr(parallelism))


def test_unknown_grouping_name():
    builder = base_builder()
    builder.set_bolt("split", SplitBolt()).grouping("words", "bogus")
    expect_error(builder.build, TopologyError, "'split'", "unknown grouping", "'bogus'",
                 "'words'", "shuffle")


def test_no_spout():
    builder = TopologyBuilder("empty")
    expect_error(builder.build, TopologyError, "'empty'", "no spout")
    builder.set_bolt("b", SinkBolt())
    expect_error(builder.build, TopologyError, "'empty'", "no spout")


def test_bolt_with_no_input():
    builder = base_builder()
    builder.set_bolt("orphan", SinkBolt())
    expect_error(builder.build, TopologyError, "'orphan'", "no input")


@pytest.mark.parametrize("second", ["spout", "bolt"])
def test_component_declared_twice(second):
    builder = base_builder()
    if second == "spout":
        builder.set_spout("words", WordSpout())
    else:
        builder.set_bolt("words", SinkBolt()).shuffle_grouping("words")
    expect_error(builder.build, TopologyError, "'words'", "declared twice")


def test_bolt_instance_passed_to_set_spout():
    builder = TopologyBuilder("t")
    builder.set_spout("words", SplitBolt())  # type: ignore[arg-type]
    expect_error(builder.build, TopologyError, "'words'", "expected a Spout instance",
                 "SplitBolt")


def test_spout_instance_passed_to_set_bolt():
    builder = base_builder()
    builder.set_bolt("split", WordSpout()).shuffle_grouping("words")  # type: ignore[arg-type]
    expect_error(builder.build, TopologyError, "'split'", "expected a Bolt instance",
                 "WordSpout")


def test_process_batch_on_an_async_bolt_is_refused_rather_than_never_called():
    class BatchingAsync(AsyncBolt):
        def process_batch(self, tuples):
            pass

    builder = base_builder()
    builder.set_bolt("split", BatchingAsync()).shuffle_grouping("words")
    expect_error(builder.build, TopologyError, "'split'", "never calls process_batch")


def test_process_columns_on_an_async_or_basic_bolt_is_refused():
    class ColumnsAsync(AsyncBolt):
        def process_columns(self, batch):
            pass

    class ColumnsBasic(BasicBolt):
        def process_columns(self, batch):
            pass

    builder = base_builder()
    builder.set_bolt("split", ColumnsAsync()).shuffle_grouping("words")
    expect_error(builder.build, TopologyError, "'split'", "never calls process_columns")
    builder = base_builder()
    builder.set_bolt("split", ColumnsBasic()).shuffle_grouping("words")
    expect_error(builder.build, TopologyError, "'split'", "a BasicBolt acks the tuples it processed",
                 "take columns in a Bolt")


def test_component_class_instead_of_instance():
    builder = TopologyBuilder("t")
    builder.set_spout("words", WordSpout)  # type: ignore[arg-type]
    expect_error(builder.build, TopologyError, "'words'", "expected a Spout instance")


@pytest.mark.parametrize(
    "declared, fragments",
    [
        ("word", ["outputs must be a list", "'word'"]),
        (["word", "word"], ["declares a field twice", "'default'"]),
        ({"s": ["a", "b", "a"]}, ["declares a field twice", "'s'"]),
        (["word", ""], ["must be a list of names"]),
        (["word", 3], ["must be a list of names"]),
        ({"s": "word"}, ["fields of stream 's'", "must be a list"]),
        (None, ["outputs must be a list"]),
        ({"": ["a"]}, ["stream name '' is invalid"]),
        ({"__tick": ["a"]}, ["stream name '__tick' is invalid"]),
        ({1: ["a"]}, ["stream name 1 is invalid"]),
    ],
)
def test_malformed_outputs(declared, fragments):
    builder = base_builder()
    builder.set_bolt("bad", make_outputs_bolt(declared)).shuffle_grouping("words")
    expect_error(builder.build, TopologyError, "'bad'", *fragments)


def test_malformed_spout_outputs():
    builder = TopologyBuilder("t")
    builder.set_spout("src", make_outputs_spout("line"))
    expect_error(builder.build, TopologyError, "'src'", "outputs must be a list")


@pytest.mark.parametrize("name", ["__acker", "__system", "__x"])
def test_reserved_component_name(name):
    builder = base_builder()
    builder.set_bolt(name, SinkBolt()).shuffle_grouping("words")
    expect_error(builder.build, TopologyError, repr(name), "invalid", "'__'")


@pytest.mark.parametrize("name", ["", 5, "a/b", "..", ".hidden", "-x", "a b", "é", "x" * 129])
def test_invalid_component_name(name):
    builder = TopologyBuilder("t")
    builder.set_spout(name, WordSpout())  # type: ignore[arg-type]
    expect_error(builder.build, TopologyError, repr(name), "invalid")


@pytest.mark.parametrize("name", ["", "   ", None, "a/b", ".."])
def test_invalid_topology_name(name):
    builder = TopologyBuilder(name)  # type: ignore[arg-type]
    builder.set_spout("s", WordSpout())
    expect_error(builder.build, TopologyError, "topology name", repr(name))


@pytest.mark.parametrize("stream", ["a/b", "..", "a:b"])
def test_invalid_stream_names_are_refused(stream):
    builder = TopologyBuilder("t")
    builder.set_spout("s", make_outputs_spout({stream: ["word"]}))
    expect_error(builder.build, TopologyError, repr(stream), "stream name", "letters, digits")


@pytest.mark.parametrize("field", ["a/b", "..", "a b"])
def test_invalid_field_names_are_refused(field):
    builder = TopologyBuilder("t")
    builder.set_spout("s", make_outputs_spout(["word", field]))
    expect_error(builder.build, TopologyError, "must be a list of names", repr(field))


def test_names_from_the_whole_alphabet_build():
    builder = TopologyBuilder("Word_Count-2.0")
    builder.set_spout("src_1-a.b", make_outputs_spout({"out.v-2": ["f_1", "g-2.x"]}))
    assert "src_1-a.b" in builder.build().components


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "config, fragments",
    [
        ({"topology.workers": "four"}, ["'topology.workers'", "'four'", "integer"]),
        ({"topology.workers": 0}, ["'topology.workers'", ">= 1"]),
        ({"topology.workers": 2.0}, ["'topology.workers'", "integer"]),
        ({"topology.workers": True}, ["'topology.workers'", "True"]),
        ({"topology.message.timeout.secs": 0}, ["'topology.message.timeout.secs'", "> 0"]),
        ({"topology.message.timeout.secs": "30"}, ["'topology.message.timeout.secs'"]),
        ({"topology.acker.executors": -1}, ["'topology.acker.executors'", ">= 0"]),
        ({"topology.max.spout.pending": 0}, ["'topology.max.spout.pending'"]),
        ({1: 2}, ["config key 1 is not a string"]),
    ],
)
def test_topology_config_errors(config, fragments):
    builder = base_builder()
    expect_error(lambda: builder.build(config), ConfigError, "topology 'wc'", *fragments)


@pytest.mark.parametrize(
    "config, fragments",
    [
        ({"topology.max.spout.pending": "many"}, ["'topology.max.spout.pending'", "'many'"]),
        ({"topology.tick.tuple.freq.secs": 0}, ["'topology.tick.tuple.freq.secs'", "> 0"]),
        ({"topology.tick.tuple.freq.secs": [1]}, ["'topology.tick.tuple.freq.secs'"]),
    ],
)
def test_component_config_errors(config, fragments):
    builder = base_builder()
    builder.set_bolt("count", CountBolt(), config=config).shuffle_grouping("words")
    expect_error(builder.build, ConfigError, "topology 'wc'", "component 'count'", *fragments)


def test_spout_config_error_names_spout():
    builder = TopologyBuilder("t")
    builder.set_spout("words", WordSpout(), config={"topology.max.spout.pending": -5})
    expect_error(builder.build, ConfigError, "component 'words'",
                 "'topology.max.spout.pending'", "-5")


def test_component_config_valid_and_kept():
    builder = base_builder()
    builder.set_bolt("count", CountBolt(), config={"topology.tick.tuple.freq.secs": 1,
                                                    "my.key": "x"}).shuffle_grouping("words")
    topology = builder.build()
    assert dict(topology.components["count"].config) == {"topology.tick.tuple.freq.secs": 1,
                                                          "my.key": "x"}


@pytest.mark.parametrize("where", ["topology", "component"])
def test_non_mapping_config(where):
    builder = base_builder()
    if where == "topology":
        expect_error(lambda: builder.build("four"), ConfigError, "mapping")  # type: ignore[arg-type]
    else:
        builder.set_bolt("count", CountBolt(), config=[1, 2]).shuffle_grouping("words")  # type: ignore[arg-type]
        expect_error(builder.build, ConfigError, "component 'count'", "mapping")


# --------------------------------------------------------------------------- ordering / one line


def test_first_problem_is_reported():
    """Config is checked before structure; a component's own problem before its inputs."""
    builder = base_builder()
    builder.set_bolt("split", SplitBolt(), parallelism=0).shuffle_grouping("missing")
    expect_error(lambda: builder.build({"topology.workers": "x"}), ConfigError,
                 "topology.workers")
    expect_error(builder.build, TopologyError, "'split'", "parallelism")


def test_names_with_newlines_are_refused_on_one_line():
    builder = TopologyBuilder("t")
    builder.set_spout("src", make_outputs_spout({"a\nb": ["x\ny"]}))
    builder.set_bolt("b", SinkBolt()).fields_grouping("src", ["z"], stream="a\nb")
    expect_error(builder.build, TopologyError, "'src'", "stream name", "invalid")
