"""Under CI=true a skipped test fails: CI installs everything, so a skip hides a missing step."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

PROBE = """
import pytest

needs_widget = pytest.mark.skipif(True, reason="no widget installed")

@needs_widget
def test_uses_the_widget():
    pass
"""


@pytest.mark.parametrize(("ci", "outcome"), [("true", {"errors": 1}), ("", {"skipped": 1})])
def test_a_skip_fails_only_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                    ci: str, outcome: dict[str, int]) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest((Path(__file__).with_name("conftest.py")).read_text())
    pytester.makepyfile(test_probe=PROBE)
    pytester.runpytest_inprocess().assert_outcomes(**outcome)
