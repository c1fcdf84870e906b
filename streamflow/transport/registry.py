"""User value types that the data serializer carries between workers, as Storm's
``topology.kryo.register``.

By default a value crosses between workers only if it is data: None, bool, int, float,
str, bytes, and lists, tuples, dicts, sets and frozensets of data. A topology names any
other type it emits in its config, under ``topology.serializer.register``, in one of two
forms (both may be mixed in one list):

- ``"module:Class"``: the class turns its instances into data and back itself, with a
  method ``to_data(self)`` and a classmethod ``from_data(cls, data)``;
- ``{"module:Class": "module:Serializer"}``: ``Serializer`` (a class, instantiated with no
  argument, or a module-level object) has ``to_data(value)`` and ``from_data(data)``.

``to_data`` must return data (registered types included). Every worker of a topology
reads the same list, and a type's place in it is its code on the wire: change the list
only by resubmitting the topology. A subclass of a registered class is not registered.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from streamflow.errors import ConfigError

REGISTER_KEY = "topology.serializer.register"


@dataclass(frozen=True)
class RegisteredType:
    """One registered type: its class and the functions between an instance and data."""

    cls: type
    to_data: Callable[[Any], Any]
    from_data: Callable[[Any], Any]


def resolve(entries: Iterable[str | Mapping[str, str]]) -> list[RegisteredType]:
    """The types of a ``topology.serializer.register`` list, in its order; a name that does
    not import, or a class or serializer without ``to_data``/``from_data``, raises
    :class:`~streamflow.errors.ConfigError` in one line."""
    types: list[RegisteredType] = []
    for entry in entries:
        if isinstance(entry, str):
            cls = _class(entry)
            types.append(RegisteredType(cls, _method(cls, "to_data", entry), _method(cls, "from_data", entry)))
        else:
            for class_name, serializer_name in entry.items():
                cls = _class(class_name)
                serializer = _named(serializer_name)
                if isinstance(serializer, type):
                    try:
                        serializer = serializer()
                    except Exception as exc:
                        raise ConfigError(f"config {REGISTER_KEY!r}: cannot create {serializer_name} "
                                          f"({type(exc).__name__}: {exc})") from None
                types.append(RegisteredType(cls, _method(serializer, "to_data", serializer_name),
                                            _method(serializer, "from_data", serializer_name)))
    seen = [t.cls for t in types]
    duplicates = {c.__qualname__ for c in seen if seen.count(c) > 1}
    if duplicates:
        raise ConfigError(f"config {REGISTER_KEY!r}: {', '.join(sorted(duplicates))} registered twice")
    return types


def _named(name: str) -> Any:
    """The object that ``"module:attribute.path"`` names."""
    module_name, _, path = name.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for attribute in path.split("."):
            found = getattr(found, attribute)
    except Exception as exc:
        raise ConfigError(f"config {REGISTER_KEY!r}: cannot import {name} ({type(exc).__name__}: {exc})") from None
    return found


def _class(name: str) -> type:
    found = _named(name)
    if not isinstance(found, type):
        raise ConfigError(f"config {REGISTER_KEY!r}: {name} is not a class")
    return found


def _method(owner: Any, method: str, name: str) -> Callable[[Any], Any]:
    found = getattr(owner, method, None)
    if not callable(found):
        raise ConfigError(f"config {REGISTER_KEY!r}: {name} has no {method}()")
    return found  # type: ignore[no-any-return]  # a class's own to_data is unbound: to_data(instance)
