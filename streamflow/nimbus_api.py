"""Nimbus's HTTP API: its route table, and forwarding from a standby to the leader.

``/api/v1/<op>[/<name>]`` calls one of :attr:`Nimbus.ops <streamflow.nimbus.Nimbus.ops>`:
a POST with its JSON body (a submission's up to the package size, others up to
:data:`~streamflow.httpapi.MAX_BODY`), a GET with its query parameters. Every one needs
the API token when nimbus has one. Beside them: the probes, ``/metrics`` (behind the
token too unless ``metrics_open``) and the web UI's pages, which hold no data: their
scripts fetch it from the API with the token the user enters.

A standby answers ``cluster`` and ``logs`` itself (they read ZooKeeper and supervisors
only) and forwards every other call to the leader with the caller's token.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from typing import Any

from streamflow import webui
from streamflow.httpapi import (
    MAX_BODY,
    Handler,
    HttpApi,
    Request,
    Response,
    Route,
    Routes,
    metrics_route,
    probe_routes,
)
from streamflow.metrics import exposition
from streamflow.nimbus import Nimbus, Op
from streamflow.package import MAX_PACKAGE_BYTES

PREFIX = "/api/v1"
READ_ANYWHERE = frozenset({"cluster", "logs"})
"""Operations a standby answers itself."""
SUBMIT_MAX_BODY = MAX_PACKAGE_BYTES * 4 // 3 + MAX_BODY
"""A submission's body: the package in base64, and up to :data:`MAX_BODY` of the rest."""
FORWARD_TIMEOUT_SECS = 120.0


def nimbus_api(nimbus: Nimbus, token: str | None, metrics_open: bool = False) -> HttpApi:
    """The whole HTTP API of ``nimbus``: its operations, probes, metrics and pages."""
    routes: Routes = {**probe_routes(nimbus.ready),
                      **metrics_route(lambda: exposition(nimbus.registry), auth=not metrics_open)}
    for (method, op), call in nimbus.ops.items():
        max_body = (SUBMIT_MAX_BODY if op == "submit" else MAX_BODY) if method == "POST" else 0
        routes[(method, f"{PREFIX}/{op}")] = Route(_operation(nimbus, op, call), max_body=max_body, tail=True)
    return HttpApi(routes, token, fallback=_page)


def _page(path: str) -> Response | None:
    page = webui.page(path)
    return None if page is None else Response(HTTPStatus.OK, *page)


def _operation(nimbus: Nimbus, op: str, call: Op) -> Handler:
    """The route of one operation: answered here, or by the leader."""
    def handle(request: Request) -> Response:
        body = request.json() if request.method == "POST" else dict(request.query)
        if not nimbus.leading.is_set() and op not in READ_ANYWHERE:
            return _forward(nimbus, request, body)
        return Response.json(HTTPStatus.OK, call(body, request.tail))

    return handle


def _forward(nimbus: Nimbus, request: Request, body: dict[str, Any]) -> Response:
    """The leader's answer to ``request``, or a 503 when there is none to ask."""
    leader = nimbus.leader_url()
    if leader is None or leader == nimbus.url:
        return Response.error(HTTPStatus.SERVICE_UNAVAILABLE, "no nimbus leader at the moment; retry")
    path = request.path + (f"/{urllib.parse.quote(request.tail)}" if request.tail else "")
    if request.method == "GET" and body:
        path += "?" + urllib.parse.urlencode(body)
    auth = request.headers.get("authorization")
    forwarded = urllib.request.Request(
        leader + path, method=request.method,
        data=json.dumps(body).encode() if request.method == "POST" else None,
        headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})},
    )
    try:
        with urllib.request.urlopen(forwarded, timeout=FORWARD_TIMEOUT_SECS,
                                    context=nimbus.client_tls) as response:
            return Response(HTTPStatus(response.status), response.headers.get_content_type(), response.read())
    except urllib.error.HTTPError as exc:
        return Response(HTTPStatus(exc.code), exc.headers.get_content_type(), exc.read())
    except OSError as exc:
        return Response.error(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot reach the leader {leader}: {exc}")
