"""The one HTTP server of every role: a route table, bearer authentication, limits,
probes and ``/metrics``.

A server is a table from ``(method, path)`` to a :class:`Route`. Nimbus serves its API,
its pages and its probes from one; a supervisor its probes, ``/metrics`` and its workers'
logs; a worker answers ``GET /metrics`` on its slot port.

The core, :class:`HttpApi`, does no I/O, so a threaded server (:func:`serve`) and an
asyncio listener share it: :meth:`HttpApi.start` takes the request line and headers and
decides all it can before a byte of body is read (the route, the token, the body's
length and type), then :meth:`Pending.finish` takes the body and answers.
:meth:`HttpApi.answer` does both with a blocking body reader. A server that reads and
writes bytes itself parses the head with :func:`parse_head` and writes
:meth:`Response.encode`.

What holds for every request, in this order: an unknown path is a 404 and a known path
with another method a 405; a route that needs the token gets a 401 without it, whatever
else is wrong with the request; a body needs a Content-Length (411), a non-negative one
(400), no larger than the route's cap (413); a route that takes a body takes JSON only
(415), an empty one too, so that a browser's cross-origin ``text/plain`` form post never
reaches it (a browser sends no JSON cross-origin without asking the server first).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from streamflow.errors import StreamflowError, refuse_placeholder

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
JSON = "application/json"
MAX_BODY = 1 << 20
"""The largest body a route takes unless it says otherwise."""
SOCKET_TIMEOUT_SECS = 10.0
"""How long a connection may leave the server waiting for its next bytes."""
MAX_CONNECTIONS = 64
"""Connections served at once; one more is answered 503 and closed at once, so that
clients that send slowly or not at all hold at most this many threads."""
SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
     "form-action 'self'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)
"""Headers of every answer: pages load only their own scripts and styles, are never
framed, and no answer is cached (they carry cluster data)."""


class ApiError(Exception):
    """A request that cannot be done: the HTTP status and a one-line reason."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """A request as a handler sees it. ``tail`` is the rest of the path after the route's
    own (unquoted; empty if none): the ``NAME`` of ``/api/v1/kill/NAME``."""

    method: str
    path: str
    tail: str
    query: dict[str, str]
    headers: Mapping[str, str]
    """By lower-case name."""
    body: bytes = b""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} if there is none); raises :class:`ApiError` (400)."""
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(value, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not a JSON object")
        return value


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    content_type: str
    body: bytes

    @classmethod
    def json(cls, status: HTTPStatus, answer: Any) -> Response:
        return cls(status, JSON, json.dumps(answer).encode())

    @classmethod
    def error(cls, status: HTTPStatus, message: str) -> Response:
        return cls.json(status, {"error": message})

    def headers(self) -> list[tuple[str, str]]:
        """Every header of the answer, with its length and the security headers."""
        return [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
                *SECURITY_HEADERS]

    def encode(self) -> bytes:
        """The whole answer as HTTP/1.0 bytes, for a server that writes them itself."""
        head = [f"HTTP/1.0 {self.status.value} {self.status.phrase}", *(f"{k}: {v}" for k, v in self.headers())]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """One route: its handler, whether it needs the token, the largest body it takes
    (0: none), and whether its path may go on (``tail``)."""

    handler: Handler
    auth: bool = True
    max_body: int = 0
    tail: bool = False


Routes = dict[tuple[str, str], Route]


@dataclass(frozen=True)
class Pending:
    """A request whose line and headers passed every check: ``length`` bytes of body to
    read, then :meth:`finish`."""

    route: Route
    request: Request
    length: int

    def finish(self, body: bytes) -> Response:
        if len(body) != self.length:
            return Response.error(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
        return _call(self.route, Request(self.request.method, self.request.path, self.request.tail,
                                         self.request.query, self.request.headers, body))


@dataclass
class HttpApi:
    """The routes of one server and the token its authenticated routes need (None: none
    needed). ``fallback`` answers a GET of a path no route has (nimbus's pages), or None."""

    routes: Routes
    token: str | None = None
    fallback: Callable[[str], Response | None] | None = None
    _paths: dict[str, list[str]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        for method, path in self.routes:
            self._paths.setdefault(path, []).append(method)

    def start(self, method: str, target: str, headers: Iterable[tuple[str, str]]) -> Response | Pending:
        """Check a request by its line and headers (name and value pairs, as sent): an
        answer if it ends here, else what body to read for it."""
        try:
            url = urllib.parse.urlsplit(target)
        except ValueError:  # "//[", an unclosed IPv6 host
            return Response.error(HTTPStatus.BAD_REQUEST, "malformed request target")
        found = self._route(url.path)
        if found is None:
            page = self.fallback(url.path) if self.fallback is not None and method == "GET" else None
            return page or Response.error(HTTPStatus.NOT_FOUND, f"no such path {url.path}")
        path, tail = found
        route = self.routes.get((method, path))
        if route is None:
            return Response.error(HTTPStatus.METHOD_NOT_ALLOWED,
                                  f"{url.path} takes {', '.join(sorted(self._paths[path]))}, not {method}")
        try:
            lowered = _lowered(headers)
            if route.auth and not self.authorized(lowered.get("authorization")):
                raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong API token")
            length = _body_length(route, lowered)
            query = dict(urllib.parse.parse_qsl(url.query))
        except ApiError as exc:
            return Response.error(exc.status, str(exc))
        pending = Pending(route, Request(method, path, tail, query, lowered), length)
        return pending if length else pending.finish(b"")

    def answer(self, method: str, target: str, headers: Iterable[tuple[str, str]],
               read_body: Callable[[int], bytes]) -> Response:
        """Answer one request, reading its body (once every check passed) with
        ``read_body(n)``."""
        step = self.start(method, target, headers)
        return step if isinstance(step, Response) else step.finish(read_body(step.length))

    def authorized(self, header: str | None) -> bool:
        """Whether an Authorization header carries the token (always, with no token)."""
        if self.token is None:
            return True
        if header is None or not header.isascii():
            return False
        return hmac.compare_digest(header, f"Bearer {self.token}")

    def _route(self, path: str) -> tuple[str, str] | None:
        """The route path that ``path`` is, or that it goes on from, and the rest."""
        if path in self._paths:
            return path, ""
        head, _, rest = path.rpartition("/")
        while head:
            if head in self._paths and any(self.routes[(m, head)].tail for m in self._paths[head]):
                return head, urllib.parse.unquote(path[len(head) + 1:])
            head, _, rest = head.rpartition("/")
        return None


MAX_HEAD = 16 * 1024
"""The longest request line and headers :func:`parse_head` takes."""


def parse_head(head: bytes) -> tuple[str, str, list[tuple[str, str]]]:
    """The method, target and headers of a request's head (its bytes up to and with the
    blank line), for a server that reads them itself (the worker's asyncio listener);
    raises :class:`ApiError` (400) for one that is not HTTP/1.x, or over :data:`MAX_HEAD`."""
    if len(head) > MAX_HEAD:
        raise ApiError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"the request's head is over {MAX_HEAD} bytes")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not (parts[0].isascii() and parts[0].isalpha()):
        raise ApiError(HTTPStatus.BAD_REQUEST, "not an HTTP/1.x request line")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ApiError(HTTPStatus.BAD_REQUEST, "malformed header line")
        headers.append((name, value.strip()))
    return parts[0], parts[1], headers


def _lowered(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers by lower-case name; a second Content-Length or Authorization is refused
    (which one would count is what request smuggling plays on)."""
    lowered: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in lowered and key in ("content-length", "authorization"):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"more than one {name} header")
        lowered[key] = value
    return lowered


def _body_length(route: Route, headers: Mapping[str, str]) -> int:
    """The body's length from its headers, checked against the route: raises :class:`ApiError`."""
    text = headers.get("content-length")
    if headers.get("transfer-encoding"):
        raise ApiError(HTTPStatus.NOT_IMPLEMENTED, "chunked bodies are not taken: send a Content-Length")
    if route.max_body == 0:
        if text not in (None, "0"):
            raise ApiError(HTTPStatus.BAD_REQUEST, "this route takes no body")
        return 0
    if text is None:
        raise ApiError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required")
    if not (text.isascii() and text.isdigit()):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Content-Length must be a number of bytes, got {text[:40]!r}")
    length = int(text)
    if length > route.max_body:
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"the body has {length} bytes, over the {route.max_body} this route takes")
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != JSON:
        raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                       f"the body must be {JSON}, not {content_type or 'untyped'}")
    return length


def _call(route: Route, request: Request) -> Response:
    """The route's answer; an error is a one-line JSON answer, never a dropped connection."""
    try:
        return route.handler(request)
    except ApiError as exc:
        return Response.error(exc.status, str(exc))
    except Exception as exc:  # ZooKeeper away, say
        reason = f"{request.method} {request.path} failed: {type(exc).__name__}: {exc}"
        log.error("%s", reason, exc_info=log.isEnabledFor(logging.DEBUG))
        return Response.error(HTTPStatus.INTERNAL_SERVER_ERROR, reason)


# -- routes every role serves -------------------------------------------------------------

Readiness = Callable[[], tuple[bool, str]]


def probe_routes(ready: Readiness) -> Routes:
    """``GET /healthz`` (200 while the process serves at all) and ``GET /readyz`` (200
    when the role can do its job, else 503 with ``ready()``'s reason), for process
    managers and Kubernetes probes: open to all, they tell nothing about topologies."""
    def healthz(_: Request) -> Response:
        return Response.json(HTTPStatus.OK, {"alive": True})

    def readyz(_: Request) -> Response:
        ok, why = ready()
        return Response.json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ok, "reason": why})

    return {("GET", "/healthz"): Route(healthz, auth=False), ("GET", "/readyz"): Route(readyz, auth=False)}


def metrics_route(exposition: Callable[[], bytes], auth: bool) -> Routes:
    """``GET /metrics``: Prometheus text; behind the token unless ``auth`` is False."""
    return {("GET", "/metrics"): Route(lambda _: Response(HTTPStatus.OK, PROMETHEUS_TEXT, exposition()), auth)}


# -- where and with what a server listens --------------------------------------------------


def read_token(path: str | None) -> str | None:
    """The API token from ``--token-file`` (first line, stripped); None without a file."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise StreamflowError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise StreamflowError(f"token file {path} is empty")
    refuse_placeholder(token, f"token file {path}")
    return token


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1): what a
    server without a token may listen on (protected mode)."""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


# -- the threaded server ------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    """The listen backlog: a burst of connections is taken, and answered 503 past the
    limit, rather than left to the kernel to drop and the clients to retry."""

    def __init__(self, address: tuple[str, int], api: HttpApi, max_connections: int) -> None:
        self.api = api
        self._slots = threading.BoundedSemaphore(max_connections)
        self._active = 0
        self._idle = threading.Condition()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        with self._idle:
            self._active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for no request to be in flight, still serving
        (a probe then learns the process is not ready), then stop; False if requests were
        still running."""
        with self._idle:
            idle = self._idle.wait_for(lambda: self._active == 0, timeout)
        self.shutdown()
        return idle


def _refuse(connection: socket.socket) -> None:
    """Answer a connection over the limit with a 503, without waiting on it. What the
    client sent already is read first: closing a socket with unread data resets the
    connection, and the client would lose the answer."""
    connection.setblocking(False)
    try:
        connection.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n")
        connection.shutdown(socket.SHUT_WR)
        connection.recv(65536)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "streamflow"
    timeout = SOCKET_TIMEOUT_SECS

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)

    def _serve(self) -> None:
        response = self.server.api.answer(self.command, self.path, self.headers.items(), self.rfile.read)
        self.send_response(response.status)
        for name, value in response.headers():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


def serve(api: HttpApi, host: str, port: int, what: str,
          max_connections: int = MAX_CONNECTIONS, tls: ssl.SSLContext | None = None) -> _Server:
    """Serve ``api`` on ``host:port`` from a daemon thread, over HTTPS with ``tls``;
    ``what`` names the server in the one-line error when the port cannot be bound.
    ``shutdown()`` stops it at once, ``drain(timeout)`` once the requests in flight are
    answered. A TLS handshake happens in the connection's own thread, under its timeout,
    so a client that stalls it holds one connection, not the server."""
    try:
        server = _Server((host, port), api, max_connections)
    except OSError as exc:
        raise StreamflowError(f"{what} cannot serve on port {port}: {exc.strerror}") from None
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name=what, daemon=True).start()
    return server
