"""Liveness and readiness over HTTP, for process managers and Kubernetes probes.

``GET /healthz`` answers 200 while the process serves at all; ``GET /readyz`` answers
200 when the role can do its job (its ``ready()`` says why not, with a 503, otherwise).
Nimbus serves both on its API port; a supervisor on its own ``--health-port``, with
``GET /metrics`` and its own JSON routes (its workers' logs) beside them.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

from streamflow.errors import StreamflowError

Readiness = Callable[[], tuple[bool, str]]
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
Route = Callable[[dict[str, str], str | None], tuple[HTTPStatus, Any]]
"""A JSON GET route: (query parameters, Authorization header) -> (status, answer)."""


def probe(path: str, ready: Readiness) -> tuple[HTTPStatus, dict[str, Any]] | None:
    """The answer to a probe path, or None if ``path`` is not one."""
    if path == "/healthz":
        return HTTPStatus.OK, {"alive": True}
    if path == "/readyz":
        ok, why = ready()
        return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), {"ready": ok, "reason": why}
    return None


def serve_probes(port: int, ready: Readiness, metrics: Callable[[], bytes],
                 routes: Mapping[str, Route] | None = None) -> ThreadingHTTPServer:
    """Serve /healthz, /readyz, /metrics (Prometheus text) and ``routes`` on ``port`` from
    a daemon thread."""
    extra: Mapping[str, Route] = routes or {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics":
                data = metrics()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", PROMETHEUS_TEXT)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            route = extra.get(url.path)
            answer: tuple[HTTPStatus, Any] | None = (
                route(dict(parse_qsl(url.query)), self.headers.get("Authorization")) if route
                else probe(url.path, ready)
            )
            status, body = answer if answer else (HTTPStatus.NOT_FOUND, {"error": "no such path"})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    try:
        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    except OSError as exc:
        raise StreamflowError(f"cannot serve health probes on port {port}: {exc.strerror}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
