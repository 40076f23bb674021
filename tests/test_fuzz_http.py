"""Hypothesis against the daemon's whole HTTP surface and its JSON-RPC layer.

Requests are fed as raw bytes into the real site (every resource, the real auth chain and a
memory store) over an in-memory transport. Whatever comes in, the answer must be an HTTP
response below 500 with a JSON body (or an SSE stream / empty body), never a traceback.
"""

import json
import re
from collections import Counter

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.fuzz import fuzz_settings

PATHS = [
    "/mcp",
    "/sse",
    "/message",
    "/message?sessionId=x",
    "/health",
    "/api/tokens",
    "/api/register",
    "/api/users",
    "/api/users/alice/status",
    "/api/users/alice",
    "/api/tokens/0123456789abcdef",
    "/api/tokens/0123456789abcdef/rotate",
    "/",
    "/nope",
    "/mcp/../api/users",
    "/%ff%fe",
]
METHODS = ["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD", "PATCH", "BREW"]
HEADER_NAMES = [
    "Authorization",
    "Content-Type",
    "Accept",
    "Origin",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Mcp-Method",
    "Mcp-Name",
    "X-User-Id",
    "X-Request-Id",
    "Last-Event-ID",
    "X-Forwarded-For",
    "Host",
]
header_value = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    st.sampled_from(
        [
            "application/json",
            "text/event-stream",
            "Bearer ",
            "Basic Zm9vOmJhcg==",
            "2026-07-28",
            "tools/call",
            "null",
            "http://evil.example",
            "127.0.0.1",
        ]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
rpc_like = st.fixed_dictionaries(
    {
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "method": st.sampled_from(
            [
                "initialize",
                "tools/list",
                "tools/call",
                "resources/read",
                "resources/list",
                "ping",
                "server/discover",
                "logging/setLevel",
                "notifications/cancelled",
                "nope",
            ]
        )
        | st.text(max_size=10),
    },
    optional={"id": st.integers() | st.text(max_size=5) | st.none(), "params": json_values},
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    rpc_like.map(lambda v: json.dumps(v).encode()),
)

STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")
counted = {"cases": 0}
statuses: Counter = Counter()


@pytest_twisted.async_yield_fixture(scope="module")
async def site(tmp_path_factory):
    from twisted.internet import reactor

    lifted = {"user_rate": 1e6, "user_burst": 10**6, "address_rate": 1e6, "address_burst": 10**6}
    proxy = await start_proxy(reactor, tmp_path_factory.mktemp("fuzz"), ratelimit=lifted)
    token = await proxy.token_for("alice")
    yield proxy.service.ports[0].factory, token
    await proxy.stop()


def _exchange(factory, raw: bytes) -> bytes:
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    answer = transport.value()
    protocol.connectionLost(Failure(ConnectionDone()))
    return answer


def _check(answer: bytes) -> None:
    if not answer:
        statuses["none yet"] += 1  # an SSE stream or an answer still on its way
        return
    match = STATUS_LINE.match(answer)
    assert match, answer[:200]
    status = int(match.group(1))
    statuses[status] += 1
    assert status < 500, answer[:500]
    assert b"Traceback" not in answer and b"<html" not in answer.lower(), answer[:500]
    head, _, body = answer.partition(b"\r\n\r\n")
    if body and b"text/event-stream" not in head.lower() and b"chunked" not in head.lower():
        json.loads(body)


@fuzz_settings(400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS),
    headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_value), max_size=6),
    body=bodies,
    authorized=st.booleans(),
)
def test_any_request_gets_a_clean_answer(site, method, path, headers, body, authorized):
    factory, token = site
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:3000"]
    if authorized:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    _check(_exchange(factory, raw))
    counted["cases"] += 1


@fuzz_settings(400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=rpc_like, modern=st.booleans(), path=st.sampled_from(["/mcp", "/message?sessionId=x"]))
def test_any_jsonrpc_message_over_http_gets_a_clean_answer(site, message, modern, path):
    factory, token = site
    body = json.dumps(message).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1:3000",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Content-Length: {len(body)}",
    ]
    if modern:
        lines += ["MCP-Protocol-Version: 2026-07-28", f"Mcp-Method: {message['method']}"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
    _check(_exchange(factory, raw))
    counted["cases"] += 1


@fuzz_settings(300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_raw_garbage_never_breaks_the_server(site, raw):
    factory, _ = site
    _check(_exchange(factory, raw))
    counted["cases"] += 1


@fuzz_settings(400)
@given(body=bodies)
def test_jsonrpc_decoding_fails_only_with_jsonrpc_errors(body):
    from mcproxy.mcp.jsonrpc import RpcError, parse_message

    try:
        parse_message(body)
    except RpcError as e:
        assert e.code in (-32700, -32600)
    counted["cases"] += 1


@pytest.mark.fuzz
def test_report_the_number_of_cases():
    """Runs last in this module: the fuzzing above ran (and how much)."""
    print(f"\nHTTP/JSON-RPC fuzz cases run: {counted['cases']}; HTTP answers: {dict(statuses)}")
    assert counted["cases"] >= 1500
    assert sum(n for status, n in statuses.items() if status != "none yet") >= 800
