"""Argparse types for the numbers commands take: the ``streamflow`` CLI's, and those of
the commands other packages add to it (``streamflow.cli.COMMAND_MODULES``). A bad value
is argparse's one-line usage error. :func:`switch` reads an on/off option."""

from __future__ import annotations

import argparse
import math
from typing import Callable, TypeVar

from streamflow.errors import StreamflowError

Number = TypeVar("Number", int, float)


def _positive(convert: Callable[[str], Number], what: str) -> Callable[[str], Number]:
    """An argparse type: ``convert(text)``, which must be finite and above 0."""
    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {what} above 0, got {text!r}")
        return value

    return parse


positive_float = _positive(float, "a number of seconds")
positive_int = _positive(int, "an integer")
percentage = _positive(float, "a percentage")


def switch(name: str, value: bool | str) -> bool:
    """An on/off option: True or False from the command line, else its environment variable's
    text (1/0, true/false, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise StreamflowError(f"STREAMFLOW_{name}: expected 1 or 0 (true/false, yes/no, on/off), got {value!r}")
