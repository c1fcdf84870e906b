"""The ETL example topology, run through the real ``streamflow local`` command."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from commands import ROOT, streamflow, summary_rows

ETL = ROOT / "topologies" / "etl.py"
SAMPLE = ROOT / "topologies" / "events-sample.jsonl"


def assert_all_acked(stderr: str, lines: int) -> None:
    """Every line's tree completed (invalid ones included) and nothing failed anywhere."""
    rows = summary_rows(stderr)
    assert rows["events"][5] == str(lines), stderr  # spout acked
    for name, cells in rows.items():
        assert cells[6] == "0", f"{name} failed tuples:\n{stderr}"


def malformed(rng: random.Random, n: int) -> str:
    """One malformed line of a kind picked at random, made unique by ``n``."""
    user = f"user{rng.randrange(50)}"
    kinds = [
        f'{{"id": {n}, "user": "{user}", "amount": 1',                  # truncated JSON
        f"not json at all #{n}",
        f'{{"id": {n}, "user": "{user}"}}',                              # missing amount
        f'{{"user": "{user}", "amount": 3, "n": {n}}}',                  # missing id
        f'{{"id": {n}, "amount": 3}}',                                   # missing user
        f'{{"id": {n}, "user": "{user}", "amount": "12.5"}}',            # string amount
        f'{{"id": true, "user": "{user}", "amount": 2, "n": {n}}}',      # bool id
        f'{{"id": {n}.0, "user": "{user}", "amount": 2}}',               # float id
        f'{{"id": {n}, "user": "", "amount": 2}}',                       # empty user
        f'{{"id": {n}, "user": 42, "amount": 2}}',                       # number user
        f'{{"id": {n}, "user": "{user}", "amount": false}}',             # bool amount
        f'{{"id": {n}, "user": "{user}", "amount": null}}',              # null amount
        f"[{n}, 1, 2]",                                                  # not an object
        f'{{"id": {n}, "user": "{user}", "amount": NaN}}',               # NaN is not JSON
    ]
    return rng.choice(kinds)


def write_input(path: Path, lines: int = 20_000) -> tuple[dict[int, tuple[str, float]], set[str]]:
    """About 5% malformed lines; returns the valid events by id and the malformed lines."""
    rng = random.Random(7)
    valid: dict[int, tuple[str, float]] = {}
    bad: set[str] = set()
    with path.open("w") as f:
        for n in range(lines):
            if rng.random() < 0.05:
                line = malformed(rng, n)
                bad.add(line)
            else:
                user = f"user{rng.randrange(50)}"
                amount: float = rng.randint(1, 1000)
                if rng.random() < 0.5:
                    amount = round(rng.uniform(0.01, 500), 2)
                valid[n] = (user, amount)
                line = json.dumps({"id": n, "user": user, "amount": amount})
            f.write(line + "\n")
    assert len(bad) > 500
    return valid, bad


def test_etl_on_20k_events(tmp_path: Path) -> None:
    source, output, dlq = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    valid, bad = write_input(source)

    result = streamflow("local", str(ETL), "-c", f"input.path={source}", "-c", f"output.path={output}",
                        "-c", f"deadletter.path={dlq}")
    assert result.returncode == 0, result.stderr
    assert_all_acked(result.stderr, len(valid) + len(bad))

    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(valid)  # each valid id exactly once
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        assert (r["user"], r["amount"]) == valid[r["id"]]
        by_user[r["user"]].append(r)
    for user, rows in by_user.items():
        # Amounts are positive, so one user's totals rise in the order enrich saw them:
        # sorted by total, each total is the one before plus the event's amount.
        rows.sort(key=lambda r: r["user_total"])
        running = 0.0
        for r in rows:
            running += r["amount"]
            assert math.isclose(r["user_total"], running, rel_tol=1e-9), (user, r)
        expected = sum(amount for u, amount in valid.values() if u == user)
        assert math.isclose(rows[-1]["user_total"], expected, rel_tol=1e-9), user

    dead = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert sorted(d["line"] for d in dead) == sorted(bad)  # each malformed line once, as read
    for d in dead:
        assert d["error"].strip() and "\n" not in d["error"], d

    # Without a dead-letter file, the invalid lines are counted and the count printed.
    output2 = tmp_path / "out2.jsonl"
    result = streamflow("local", str(ETL), "-c", f"input.path={source}", "-c", f"output.path={output2}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"invalid lines: {len(bad)}"]
    assert_all_acked(result.stderr, len(valid) + len(bad))
    assert len(output2.read_text().splitlines()) == len(valid)


def test_etl_on_the_sample(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    result = streamflow("local", str(ETL), "-c", f"output.path={output}")
    assert result.returncode == 0, result.stderr
    lines = SAMPLE.read_text().splitlines()
    assert_all_acked(result.stderr, len(lines))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert 0 < len(records) < len(lines)
    assert result.stdout.splitlines() == [f"invalid lines: {len(lines) - len(records)}"]
    totals: dict[str, float] = defaultdict(float)
    for r in records:
        totals[r["user"]] += r["amount"]
    for user, total in totals.items():
        assert math.isclose(max(r["user_total"] for r in records if r["user"] == user), total)


def test_etl_without_an_output_path() -> None:
    result = streamflow("local", str(ETL))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "streamflow: error: etl: -c output.path=FILE (or -c kafka.bootstrap=HOST:PORT) is required")
