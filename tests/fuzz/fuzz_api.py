"""Fuzz the HTTP API's request parsing with atheris (coverage-guided, libFuzzer).

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_api.py -max_total_time=600

Every role's server goes through :func:`parse_head` (the worker's listener) or
:meth:`HttpApi.start` and :meth:`Pending.finish` (the threaded server). The contract: any
bytes give an answer (parse_head may refuse with :class:`ApiError`, which the server
answers), the token is never bypassed, and nothing else is raised. The routes here mirror
nimbus's kinds: open probes, an authenticated GET with a tail, an authenticated JSON POST
with a body cap. Not collected by pytest: tests/test_httpapi.py holds the hypothesis
properties.
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from streamflow.httpapi import ApiError, HttpApi, Pending, Request, Response, Route, parse_head, probe_routes

TOKEN = "fuzz-token"
CALLED: list[Request] = []


def _echo(request: Request) -> Response:
    CALLED.append(request)
    return Response.json(HTTPStatus.OK, {"tail": request.tail, "body": request.json()})


API = HttpApi({**probe_routes(lambda: (True, "ready")),
               ("GET", "/api/v1/status"): Route(_echo, tail=True),
               ("POST", "/api/v1/kill"): Route(_echo, max_body=1 << 20, tail=True)}, TOKEN)


def test_one_input(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        method, target, headers = parse_head(head + b"\r\n\r\n")
    except ApiError:
        return
    CALLED.clear()
    step = API.start(method, target, headers)
    response = step.finish(body[:step.length]) if isinstance(step, Pending) else step
    assert isinstance(response, Response)
    if CALLED and not CALLED[0].path.startswith(("/healthz", "/readyz")):
        assert CALLED[0].headers.get("authorization") == f"Bearer {TOKEN}", "a handler ran without the token"


def seed_corpus(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    seeds = [
        b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /api/v1/status/wc?x=1 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode(),
        f"POST /api/v1/kill/wc HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 11\r\n\r\n{{\"wait\": 1}}".encode(),
        b"POST /api/v1/kill/wc HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
    ]
    for n, seed in enumerate(seeds):
        (directory / f"seed-{n}").write_bytes(seed)


if __name__ == "__main__":
    corpus = Path(__file__).resolve().parents[2] / "build" / "fuzz" / "api"
    seed_corpus(corpus)
    atheris.Setup([*sys.argv, str(corpus)], test_one_input)
    atheris.Fuzz()
