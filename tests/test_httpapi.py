"""The HTTP core every role serves through, without a socket: routing, the token, the
body's limits and type, in the order that keeps an unauthenticated caller from costing
anything; and the threaded server's bound on connections."""

from __future__ import annotations

import json
import socket
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streamflow.httpapi import (
    MAX_BODY,
    ApiError,
    HttpApi,
    Pending,
    Request,
    Response,
    Route,
    is_loopback,
    metrics_route,
    parse_head,
    probe_routes,
    serve,
)

TOKEN = "t0ken"
AUTH = ("Authorization", f"Bearer {TOKEN}")
JSON_TYPE = ("Content-Type", "application/json")


def echo(request: Request) -> Response:
    return Response.json(HTTPStatus.OK, {"tail": request.tail, "query": request.query, "body": request.json()})


def failing(request: Request) -> Response:
    raise ApiError(HTTPStatus.CONFLICT, "already there")


API = HttpApi({
    ("POST", "/api/v1/kill"): Route(echo, max_body=100, tail=True),
    ("GET", "/api/v1/list"): Route(echo),
    ("POST", "/conflict"): Route(failing, max_body=100),
    **probe_routes(lambda: (False, "no leader")),
    **metrics_route(lambda: b"m 1\n", auth=True),
}, TOKEN, fallback=lambda path: Response(HTTPStatus.OK, "text/html", b"<p>") if path == "/" else None)


def answer(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> tuple[int, Any]:
    reads: list[int] = []

    def read(n: int) -> bytes:
        reads.append(n)
        return body[:n]

    response = API.answer(method, target, headers, read)
    if response.status == HTTPStatus.UNAUTHORIZED:
        assert not reads, "the body was read before the token was checked"
    decoded = json.loads(response.body) if response.content_type == "application/json" else response.body
    return response.status, decoded


def post(target: str, body: bytes, *extra: tuple[str, str]) -> tuple[int, Any]:
    return answer("POST", target, [AUTH, JSON_TYPE, ("Content-Length", str(len(body))), *extra], body)


def test_a_route_gets_its_tail_query_and_body() -> None:
    assert post("/api/v1/kill/my%20topo?x=1", b'{"wait": 3}') == (
        200, {"tail": "my topo", "query": {"x": "1"}, "body": {"wait": 3}})
    assert answer("GET", "/api/v1/list?a=b", [AUTH]) == (200, {"tail": "", "query": {"a": "b"}, "body": {}})


def test_unknown_paths_and_methods_and_a_tail_where_none_is_taken() -> None:
    assert answer("GET", "/nowhere", [AUTH])[0] == 404
    assert answer("GET", "/api/v1/list/extra", [AUTH])[0] == 404
    status, reply = answer("GET", "/api/v1/kill/x", [AUTH])
    assert status == 405 and reply["error"] == "/api/v1/kill/x takes POST, not GET"


def test_the_fallback_answers_gets_of_other_paths() -> None:
    assert answer("GET", "/", []) == (200, b"<p>")


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer t0ken ", "Bearer t\u00f6ken", "t0ken"])
def test_without_the_right_token_a_route_is_401_and_reads_no_body(authorization: str | None) -> None:
    headers = [] if authorization is None else [("Authorization", authorization)]
    huge = [JSON_TYPE, ("Content-Length", str(10**12))]
    assert answer("POST", "/api/v1/kill/x", headers + huge)[0] == 401
    assert answer("GET", "/api/v1/list", headers)[0] == 401
    assert answer("GET", "/metrics", headers)[0] == 401


def test_probes_are_open_and_metrics_answer_with_the_token() -> None:
    assert answer("GET", "/healthz", []) == (200, {"alive": True})
    assert answer("GET", "/readyz", []) == (503, {"ready": False, "reason": "no leader"})
    assert answer("GET", "/metrics", [AUTH]) == (200, b"m 1\n")


@pytest.mark.parametrize(("headers", "status"), [
    ([AUTH, JSON_TYPE], 411),
    ([AUTH, JSON_TYPE, ("Content-Length", "-1")], 400),
    ([AUTH, JSON_TYPE, ("Content-Length", "1e3")], 400),
    ([AUTH, JSON_TYPE, ("Content-Length", "101")], 413),
    ([AUTH, JSON_TYPE, ("Content-Length", "2"), ("Content-Length", "2")], 400),
    ([AUTH, ("Content-Type", "text/plain"), ("Content-Length", "2")], 415),
    ([AUTH, ("Content-Length", "2")], 415),
    ([AUTH, JSON_TYPE, ("Transfer-Encoding", "chunked")], 501),
])
def test_a_body_needs_a_sane_length_under_the_cap_and_json(headers: list[tuple[str, str]], status: int) -> None:
    assert answer("POST", "/api/v1/kill/x", headers, b"{}")[0] == status


def test_a_body_that_ends_early_or_is_not_an_object_is_400() -> None:
    assert answer("POST", "/api/v1/kill/x", [AUTH, JSON_TYPE, ("Content-Length", "50")], b"{}")[0] == 400
    assert post("/api/v1/kill/x", b"[1]") == (400, {"error": "the body is not a JSON object"})
    assert post("/api/v1/kill/x", b"\xff") == (400, {"error": "the body is not JSON"})


def test_a_get_route_takes_no_body() -> None:
    assert answer("GET", "/api/v1/list", [AUTH, ("Content-Length", "5")], b"hello")[0] == 400


def test_a_handlers_api_error_is_its_answer() -> None:
    assert post("/conflict", b"{}") == (409, {"error": "already there"})


def test_start_decides_before_the_body_and_finish_answers_with_it() -> None:
    step = API.start("POST", "/api/v1/kill/t", [AUTH, JSON_TYPE, ("Content-Length", "2")])
    assert isinstance(step, Pending) and step.length == 2
    assert json.loads(step.finish(b"{}").body)["tail"] == "t"


def test_every_answer_carries_the_security_headers() -> None:
    names = dict(Response.json(HTTPStatus.OK, {}).headers())
    assert names["X-Frame-Options"] == "DENY" and names["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in names["Content-Security-Policy"]


def test_a_head_read_as_bytes_parses_into_what_start_takes() -> None:
    head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: w\r\nAuthorization:  Bearer t0ken \r\n\r\n"
    method, target, headers = parse_head(head)
    assert (method, target, headers) == ("GET", "/metrics?x=1", [("Host", "w"), ("Authorization", "Bearer t0ken")])
    assert API.answer(method, target, headers, lambda n: b"").body == b"m 1\n"


@pytest.mark.parametrize("head", [b"\x16\x03\x01 hello", b"GET /\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
                                  b"\xff //]/ HTTP/1.1\r\n\r\n",  # found by atheris: a latin-1 letter as method
                                  b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n"])
def test_a_head_that_is_not_http_is_refused(head: bytes) -> None:
    with pytest.raises(ApiError):
        parse_head(head)


def test_a_target_urllib_cannot_split_is_a_400_not_an_exception() -> None:
    # Found by atheris (tests/fuzz/fuzz_api.py): "//]" raised ValueError out of start().
    assert answer("GET", "//]//////&//////", [AUTH]) == (400, {"error": "malformed request target"})
    assert answer("GET", "http://[::1/x", [AUTH])[0] == 400


def test_an_encoded_answer_carries_its_status_headers_and_body() -> None:
    data = Response.json(HTTPStatus.NOT_FOUND, {"error": "x"}).encode()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 404 Not Found\r\n") and b"X-Frame-Options: DENY" in head
    assert body == b'{"error": "x"}' and b"Content-Length: 14" in head


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                                ("::", False), ("no-such-host.invalid", False)])
def test_is_loopback_only_for_addresses_that_stay_on_this_machine(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_default_cap_is_one_mib() -> None:
    assert MAX_BODY == 1 << 20


def test_connections_over_the_limit_are_answered_503_at_once() -> None:
    server = serve(API, "127.0.0.1", 0, "test", max_connections=2)
    port = server.server_address[1]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
            assert third.recv(100).startswith(b"HTTP/1.0 503")
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()


# -- any request at all: a property-based test of the parsing -----------------------------

HEADER_NAMES = st.sampled_from(["Authorization", "authorization", "Content-Length", "Content-Type",
                                "Transfer-Encoding", "Host", "X-Other"])
TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40)
HEADER_VALUES = st.one_of(TEXT, st.sampled_from([f"Bearer {TOKEN}", "application/json", "0", "-5", "99999999999"]),
                          st.integers(-10, 200).map(str))
TARGETS = st.one_of(TEXT, st.sampled_from(["/api/v1/kill/x", "/api/v1/list", "/metrics", "/healthz", "/"]).flatmap(
    lambda base: st.builds(lambda rest: base + rest, TEXT)))
VALID = {200, 400, 401, 404, 405, 409, 411, 413, 415, 501, 503}


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), target=TARGETS,
       headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6), body=st.binary(max_size=120))
def test_any_request_gets_an_answer_and_no_body_is_read_without_the_token(
        method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
    reads: list[int] = []

    def read(n: int) -> bytes:
        reads.append(n)
        return body[:n]

    response = API.answer(method, target, headers, read)
    assert response.status in VALID
    authorized = [v for k, v in headers if k.lower() == "authorization"] == [f"Bearer {TOKEN}"]
    if reads:
        assert authorized and reads[0] <= 100
    if response.status == HTTPStatus.OK and method == "POST":
        assert authorized and json.loads(response.body)["body"] == json.loads(body)


@settings(max_examples=200, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.booleans(), st.integers(), TEXT),
                               max_size=5),
       tail=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"),
                    min_size=1, max_size=20))
def test_an_authorized_json_post_reaches_its_route_whole(payload: dict[str, Any], tail: str) -> None:
    body = json.dumps(payload).encode()
    assume(len(body) <= 100)
    status, reply = post(f"/api/v1/kill/{tail}", body)
    assert status == 200 and reply == {"tail": tail, "query": {}, "body": payload}


@settings(max_examples=400, deadline=None)
@given(head=st.one_of(st.binary(max_size=200), st.builds(
    lambda line, headers: line + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n",
    st.sampled_from([b"GET / HTTP/1.1", b"POST /api/v1/kill/x HTTP/1.0", b"GET  HTTP/1.1"]),
    st.lists(st.binary(max_size=30), max_size=5))))
def test_any_head_parses_or_is_refused_with_an_api_error(head: bytes) -> None:
    try:
        method, target, headers = parse_head(head)
    except ApiError as exc:
        assert exc.status in (400, 431)
        return
    assert API.answer(method, target, headers, lambda n: b"").status in VALID
