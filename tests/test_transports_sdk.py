"""The three MCP transports, driven by the official MCP SDK clients over real loopback HTTP."""

import asyncio
import json

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mcproxy.config import Config
from mcproxy.testing.fake_tools import FakeToolProvider, fake_authenticate


def run_async(coro):
    """Await asyncio (SDK client) code from a pytest-twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


@attrs.define
class Served:
    url: str
    tools: FakeToolProvider
    sessions: object
    transports: object


def _serve(reactor, config, authenticate=fake_authenticate):
    """The MCP endpoints on the daemon's site (its time limits included), on loopback."""
    from mcproxy.auth.admission import Admission
    from mcproxy.session.registry import SessionRegistry
    from mcproxy.web.front import build_router
    from mcproxy.web.origins import OriginPolicy
    from mcproxy.web.site import ConnectionLimits, ProxySite
    from mcproxy.web.transports import McpTransports

    tools = FakeToolProvider(reactor)
    sessions = SessionRegistry(reactor, config.session.idle_timeout)
    transports = McpTransports(reactor, config, tools, sessions)
    root = build_router(origins=OriginPolicy(config), admission=Admission(authenticate), transports=transports)
    site = ProxySite(
        root, max_body_bytes=config.server.max_body_bytes, limits=ConnectionLimits.from_config(config), reactor=reactor
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    served = Served(f"http://127.0.0.1:{port.getHost().port}", tools, sessions, transports)
    return served, port


def serving(config, authenticate=fake_authenticate):
    """Fixture body: a `Served` for ``config``, stopped after the test."""
    from twisted.internet import reactor

    served, port = _serve(reactor, config, authenticate)
    yield served
    served.sessions.close_all()
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def server():
    yield from serving(
        Config().replace(
            server={"max_body_bytes": 64 * 1024, "sse_keepalive": 5.0},
            session={"max_in_flight": 4},
            cors={"allowed_origins": ["https://ide.example"]},
        )
    )


QUICK = 0.5
"""``server.request_timeout`` of the `quick_server` (seconds)."""

SLACK = 10.0
"""Seconds granted beyond a configured limit before a test calls the server too late."""


def within(awaitable, seconds: float):
    """A coroutine or Deferred, failing with TimeoutError if it takes over ``seconds``."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(awaitable).addTimeout(seconds, reactor)


@pytest.fixture
def quick_server():
    """A server whose requests have `QUICK` seconds to be answered."""
    yield from serving(Config().replace(server={"request_timeout": QUICK}))


def _auth(user: str) -> dict:
    return {"Authorization": f"Bearer user:{user}"}


def _text(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def _exercise(session, served: Served) -> None:
    """What every transport must do: list, call, fail, progress."""
    listed = await session.list_tools()
    assert {t.name for t in listed.tools} == {"echo", "slow", "progress", "log", "big", "fail"}
    echoed = await session.call_tool("echo", {"text": "hello"})
    assert not echoed.is_error and _text(echoed) == "hello"
    failed = await session.call_tool("fail", {})
    assert failed.is_error and "always fails" in _text(failed)
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    done = await session.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
    assert _text(done) == "done in 3 steps"
    assert seen == [(1, 3, "step 1 of 3"), (2, 3, "step 2 of 3"), (3, 3, "step 3 of 3")]


async def _cancel_by_timeout(session, served: Served) -> None:
    from mcp.shared.exceptions import MCPError

    with pytest.raises(MCPError):
        await session.call_tool("slow", {"seconds": 30}, read_timeout_seconds=0.3)
    for _ in range(100):
        if served.tools.cancelled:
            break
        await asyncio.sleep(0.02)
    assert served.tools.cancelled == ["slow"]
    # The session still works after the cancellation.
    assert _text(await session.call_tool("echo", {"text": "after"})) == "after"


@pytest_twisted.ensureDeferred
async def test_legacy_sse_with_sdk_client(server):
    from mcp import ClientSession
    from mcp.client.sse import sse_client

    async def flow():
        async with sse_client(server.url + "/sse", headers=_auth("alice")) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                assert init.server_info.name == "mcproxy"
                assert init.protocol_version == "2025-11-25"
                assert server.sessions.count("sse") == 1
                await _exercise(session, server)
                await _cancel_by_timeout(session, server)

    await run_async(flow())
    assert server.sessions.count() == 0  # the session ended with its stream


@pytest_twisted.ensureDeferred
async def test_streamable_http_with_sdk_client(server):
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPDeprecationWarning

    logged = []

    async def on_log(params):
        logged.append(params.level)

    async def flow():
        async with httpx2.AsyncClient(headers=_auth("alice")) as http:
            async with streamable_http_client(server.url + "/mcp", http_client=http) as (read, write):
                async with ClientSession(read, write, logging_callback=on_log) as session:
                    await session.initialize()
                    assert server.sessions.count("streamable") == 1
                    await _exercise(session, server)
                    with pytest.warns(MCPDeprecationWarning):
                        await session.set_logging_level("error")
                    await session.call_tool("log", {})
                    # Two megabytes: over the SDK's 1 MiB SSE limit, so this proves a JSON answer.
                    big = await session.call_tool("big", {"size": 2 * 1024 * 1024})
                    assert len(big.content[0].data) > 2 * 1024 * 1024
                    await _cancel_by_timeout(session, server)

    await run_async(flow())
    assert logged == ["error", "critical", "alert", "emergency"]
    assert server.sessions.count() == 0  # the client's DELETE ended it


@pytest_twisted.ensureDeferred
async def test_client_auto_mode_negotiates_2026(server):
    from mcp import Client

    seen = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async def flow():
        async with Client(server.url + "/mcp") as client:
            assert client.protocol_version == "2026-07-28"
            tools = await client.list_tools()
            assert "echo" in {t.name for t in tools.tools}
            assert _text(await client.call_tool("echo", {"text": "modern"})) == "modern"
            await client.call_tool("progress", {"steps": 2}, progress_callback=on_progress)
            assert (await client.call_tool("fail", {})).is_error

    await run_async(flow())
    assert seen == [1, 2]
    assert server.sessions.count() == 0  # stateless: no session was made
    principal = server.tools.calls[0][2].principal
    assert principal.user_id == "local" and server.tools.calls[0][2].session.session_id is None


@pytest_twisted.ensureDeferred
async def test_2026_cancellation_by_closing_the_request(server):
    from mcp import Client
    from mcp.shared.exceptions import MCPError

    async def flow():
        async with Client(server.url + "/mcp", read_timeout_seconds=0.3) as client:
            with pytest.raises(MCPError):
                await client.call_tool("slow", {"seconds": 30})
            for _ in range(100):
                if server.tools.cancelled:
                    break
                await asyncio.sleep(0.02)

    await run_async(flow())
    assert server.tools.cancelled == ["slow"]


@pytest_twisted.ensureDeferred
async def test_foreign_session_id_is_not_found_and_owner_unaffected(server):
    import treq
    from mcp import ClientSession
    from mcp.client.sse import sse_client

    ids = []
    foreign = {}

    async def flow():
        async with sse_client(server.url + "/sse", headers=_auth("alice"), on_session_created=ids.append) as (
            r,
            w,
        ):
            async with ClientSession(r, w) as session:
                await session.initialize()
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
                for who in ("bob", None):
                    headers = {"Content-Type": ["application/json"]}
                    if who:
                        headers["Authorization"] = [f"Bearer user:{who}"]
                    foreign[who] = await Deferred.asFuture(
                        treq.post(f"{server.url}/message?sessionId={ids[0]}", body, headers=headers),
                        asyncio.get_running_loop(),
                    )
                missing = await Deferred.asFuture(
                    treq.post(
                        f"{server.url}/message?sessionId=nope",
                        body,
                        headers={
                            "Content-Type": ["application/json"],
                            **{k: [v] for k, v in _auth("alice").items()},
                        },
                    ),
                    asyncio.get_running_loop(),
                )
                foreign["missing"] = missing
                assert _text(await session.call_tool("echo", {"text": "still mine"})) == "still mine"

    await run_async(flow())
    for response in foreign.values():
        assert response.code == 404
    body = await foreign["bob"].json()
    assert body == await foreign["missing"].json()
    assert body["error"]["code"] == "session_not_found"


async def _post(url, body: bytes, headers: dict | None = None, method: str = "POST"):
    import treq

    all_headers = {"Content-Type": ["application/json"], "Accept": ["application/json, text/event-stream"]}
    all_headers.update({k: [v] for k, v in (headers or {}).items()})
    return await treq.request(method, url, data=body, headers=all_headers)


def _init_body(version="2025-06-18") -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
    ).encode()


@pytest_twisted.ensureDeferred
async def test_http_level_refusals(server):
    mcp = server.url + "/mcp"
    too_big = await _post(mcp, b'{"x": "' + b"a" * 70000 + b'"}')
    assert too_big.code == 413
    assert (await too_big.json())["error"]["code"] == "payload_too_large"

    bad_origin = await _post(mcp, _init_body(), {"Origin": "https://evil.example"})
    assert bad_origin.code == 403
    assert bad_origin.headers.getRawHeaders(b"content-type") == [b"application/json"]
    good_origin = await _post(mcp, _init_body(), {"Origin": "https://ide.example"})
    assert good_origin.code == 200
    assert good_origin.headers.getRawHeaders(b"access-control-allow-origin") == [b"https://ide.example"]
    assert b"Mcp-Session-Id" in good_origin.headers.getRawHeaders(b"access-control-expose-headers")[0]
    await good_origin.text()
    loopback = await _post(mcp, _init_body(), {"Origin": "http://localhost:5173"})
    assert loopback.code == 200  # the test config listens on loopback only
    await loopback.text()

    malformed = await _post(mcp, b"{not json")
    assert malformed.code == 400
    assert (await malformed.json())["error"]["code"] == -32700
    batch = await _post(mcp, b"[]")
    assert (await batch.json())["error"]["code"] == -32600

    wrong_type = await _post(mcp, _init_body(), {"Content-Type": "text/plain"})
    assert wrong_type.code == 415
    await wrong_type.text()

    no_session = await _post(mcp, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode())
    assert no_session.code == 400
    assert (await no_session.json())["error"]["code"] == "session_required"

    unknown = await _post(mcp, b'{"jsonrpc":"2.0","id":2,"method":"ping"}', {"Mcp-Session-Id": "nope"})
    assert unknown.code == 404
    await unknown.text()

    preflight = await _post(mcp, b"", {"Origin": "https://ide.example"}, method="OPTIONS")
    assert preflight.code == 204
    assert preflight.headers.getRawHeaders(b"access-control-allow-methods") == [b"DELETE, GET, POST"]
    assert b"Mcp-Session-Id" in preflight.headers.getRawHeaders(b"access-control-allow-headers")[0]
    refused_preflight = await _post(mcp, b"", {"Origin": "https://evil.example"}, method="OPTIONS")
    assert refused_preflight.code == 403
    assert not refused_preflight.headers.getRawHeaders(b"access-control-allow-origin")
    await refused_preflight.text()

    put = await _post(mcp, b"{}", method="PUT")
    assert put.code == 405 and (await put.json())["error"]["code"] == "method_not_allowed"

    unauthorized = await _post(mcp, _init_body(), {"Authorization": "Bearer nobody"})
    assert unauthorized.code == 401
    assert unauthorized.headers.getRawHeaders(b"www-authenticate")
    await unauthorized.text()


@pytest_twisted.ensureDeferred
async def test_streamable_session_lifecycle_over_raw_http(server):
    mcp = server.url + "/mcp"
    init = await _post(mcp, _init_body("2024-11-05"), _auth("alice"))
    assert init.code == 200
    result = (await init.json())["result"]
    assert result["protocolVersion"] == "2024-11-05"
    assert result["capabilities"]["tools"] == {"listChanged": False}
    session_id = init.headers.getRawHeaders(b"mcp-session-id")[0].decode()

    def headers(user="alice"):
        return {"Mcp-Session-Id": session_id, **_auth(user)}

    note = await _post(mcp, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers())
    assert note.code == 202
    listed = await _post(mcp, b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}', headers())
    assert listed.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert len((await listed.json())["result"]["tools"]) == 6
    unknown_method = await _post(mcp, b'{"jsonrpc":"2.0","id":3,"method":"nope/nope"}', headers())
    assert (await unknown_method.json())["error"]["code"] == -32601

    foreign = await _post(mcp, b'{"jsonrpc":"2.0","id":4,"method":"ping"}', headers("bob"))
    assert foreign.code == 404
    await foreign.text()
    foreign_delete = await _post(mcp, b"", headers("bob"), method="DELETE")
    assert foreign_delete.code == 404
    await foreign_delete.text()

    deleted = await _post(mcp, b"", headers(), method="DELETE")
    assert deleted.code == 204
    gone = await _post(mcp, b'{"jsonrpc":"2.0","id":5,"method":"ping"}', headers())
    assert gone.code == 404
    await gone.text()


@pytest_twisted.ensureDeferred
async def test_2026_header_checks(server):
    mcp = server.url + "/mcp"
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {}, "_meta": meta},
        }
    ).encode()
    good = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
    ok = await _post(mcp, body, good)
    assert ok.code == 200 and (await ok.json())["result"]["resultType"] == "complete"
    for change in (
        {"Mcp-Method": "tools/list"},
        {"Mcp-Name": "fail"},
        {"MCP-Protocol-Version": "2025-11-25"},
    ):
        mismatch = await _post(mcp, body, {**good, **change})
        assert mismatch.code == 400, change
        assert (await mismatch.json())["error"]["code"] == -32020
    future = body.replace(b"2026-07-28", b"2099-01-01")
    unsupported = await _post(mcp, future, {**good, "MCP-Protocol-Version": "2099-01-01"})
    error = (await unsupported.json())["error"]
    assert error["code"] == -32022 and "2026-07-28" in error["data"]["supported"]


def test_sse_keepalive_comments_follow_the_clock():
    from mcproxy.web.sse import KeepAliveTimers, SseStream

    clock = Clock()
    request = _PushRequest.make()
    stream = SseStream(request, KeepAliveTimers(clock), keepalive=15)
    stream.start()
    stream.send("/message?sessionId=x", event="endpoint")
    clock.advance(14)
    assert b"".join(request.written).count(b": keep-alive") == 0
    clock.advance(1)
    clock.advance(15)
    written = b"".join(request.written)
    assert written.startswith(b"event: endpoint\ndata: /message?sessionId=x\n\n")
    assert written.count(b": keep-alive\n\n") == 2
    assert request.responseHeaders.getRawHeaders(b"x-accel-buffering") == [b"no"]
    assert request.responseHeaders.getRawHeaders(b"cache-control") == [b"no-cache"]
    closed = []
    stream.on_closed(lambda: closed.append(True))
    stream.close()
    clock.advance(60)
    assert closed == [True] and b"".join(request.written).count(b": keep-alive") == 2


async def _raw_session(mcp_url: str, user="alice") -> dict:
    init = await _post(mcp_url, _init_body("2025-11-25"), _auth(user))
    await init.json()
    session_id = init.headers.getRawHeaders(b"mcp-session-id")[0].decode()
    headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25", **_auth(user)}
    await (await _post(mcp_url, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers)).text()
    return headers


def _call(rid, name, arguments=None, meta=None) -> bytes:
    params = {"name": name, "arguments": arguments or {}}
    if meta:
        params["_meta"] = meta
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}).encode()


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {")]


@pytest_twisted.ensureDeferred
async def test_standalone_stream_carries_notifications_for_json_only_clients(server):
    import treq

    mcp = server.url + "/mcp"
    headers = await _raw_session(mcp)
    chunks = []
    stream = await treq.get(
        mcp,
        headers={**{k: [v] for k, v in headers.items()}, "Accept": ["text/event-stream"]},
        unbuffered=True,
    )
    assert stream.code == 200
    assert stream.headers.getRawHeaders(b"content-type")[0].startswith(b"text/event-stream")
    assert stream.headers.getRawHeaders(b"x-accel-buffering") == [b"no"]
    ended = treq.collect(stream, chunks.append)
    second = await treq.get(mcp, headers={k: [v] for k, v in headers.items()})
    assert second.code == 409
    await second.text()

    await (
        await _post(
            mcp,
            b'{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{"level":"critical"}}',
            headers,
        )
    ).json()
    answer = await _post(mcp, _call(2, "log"), {**headers, "Accept": "application/json"})
    assert answer.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert (await answer.json())["result"]["content"][0]["text"] == "logged"

    deleted = await _post(mcp, b"", headers, method="DELETE")
    assert deleted.code == 204
    await ended  # the session's end closes its stream
    levels = [e["params"]["level"] for e in _events(b"".join(chunks))]
    assert levels == ["critical", "alert", "emergency"]


@pytest_twisted.ensureDeferred
async def test_progress_token_answers_with_an_event_stream(server):
    mcp = server.url + "/mcp"
    headers = await _raw_session(mcp)
    answer = await _post(mcp, _call(3, "progress", {"steps": 2}, {"progressToken": "p"}), headers)
    assert answer.headers.getRawHeaders(b"content-type")[0].startswith(b"text/event-stream")
    events = _events(await answer.content())
    assert [e.get("method") for e in events] == ["notifications/progress", "notifications/progress", None]
    assert events[-1]["id"] == 3 and events[-1]["result"]["content"][0]["text"] == "done in 2 steps"


@pytest_twisted.ensureDeferred
async def test_cancelled_2025_request_ends_its_post_with_32800(server):
    mcp = server.url + "/mcp"
    headers = await _raw_session(mcp)
    started = server.tools.when_started()
    pending = Deferred.fromCoroutine(
        _post(mcp, _call(9, "slow", {"seconds": 30}), {**headers, "Accept": "application/json"})
    )
    await started
    cancel = b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9}}'
    assert (await _post(mcp, cancel, headers)).code == 202
    answer = await pending
    assert (await answer.json()) == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {"code": -32800, "message": "Request cancelled"},
    }
    assert server.tools.cancelled == ["slow"]


class _PushRequest:
    """A stand-in request that lets the test play the connection's flow control."""

    @staticmethod
    def make():
        from mcproxy.testing.requests import FakeRequest

        class Request(FakeRequest):
            producer = None
            aborted = False

            def registerProducer(self, producer, streaming):
                self.producer = producer

            def unregisterProducer(self):
                self.producer = None

        request = Request([b"sse"])

        class Transport:
            def abortConnection(self):
                request.aborted = True

        class Channel:
            transport = Transport()

        request.channel = Channel()
        return request


def test_sse_flow_control_holds_events_while_the_client_is_slow():
    from mcproxy.web.sse import KeepAliveTimers, SseStream

    request = _PushRequest.make()
    stream = SseStream(request, KeepAliveTimers(Clock()), keepalive=0, max_backlog=1000)
    stream.start()
    assert request.producer is stream
    stream.send("one")
    request.producer.pauseProducing()
    stream.send("two")
    assert b"".join(request.written) == b"event: message\ndata: one\n\n"
    request.producer.resumeProducing()
    assert b"".join(request.written).endswith(b"data: two\n\n")
    request.producer.pauseProducing()
    stream.send("x" * 2000)
    assert request.aborted and request.producer is None


def test_sse_close_delivers_what_waits():
    from mcproxy.web.sse import KeepAliveTimers, SseStream

    request = _PushRequest.make()
    stream = SseStream(request, KeepAliveTimers(Clock()), keepalive=0)
    stream.start()
    stream.pauseProducing()
    stream.send("last")
    stream.close()
    assert b"".join(request.written).endswith(b"data: last\n\n") and request.finished


@pytest_twisted.ensureDeferred
async def test_a_json_answered_call_past_the_time_limit_is_a_32001_error(quick_server):
    mcp = quick_server.url + "/mcp"
    headers = await _raw_session(mcp)
    answer = await within(
        _post(mcp, _call(7, "slow", {"seconds": 30}), {**headers, "Accept": "application/json"}), QUICK + SLACK
    )
    assert answer.code == 200
    error = (await answer.json())["error"]
    assert error["code"] == -32001 and "server.request_timeout" in error["message"]
    assert quick_server.tools.cancelled == ["slow"]
    # The session goes on.
    echoed = await _post(mcp, _call(8, "echo", {"text": "after"}), headers)
    assert (await echoed.json())["result"]["content"][0]["text"] == "after"


@pytest_twisted.ensureDeferred
async def test_streams_are_not_cut_by_the_time_limit(quick_server):
    """A POST answered as a stream (with progress) and a standalone GET outlive the limit."""
    import treq
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    mcp = quick_server.url + "/mcp"
    headers = await _raw_session(mcp)
    chunks = []
    standalone = await treq.get(
        mcp, headers={**{k: [v] for k, v in headers.items()}, "Accept": ["text/event-stream"]}, unbuffered=True
    )
    ended = treq.collect(standalone, chunks.append)
    answer = await _post(mcp, _call(3, "slow", {"seconds": 3 * QUICK}, {"progressToken": "p"}), headers)
    assert answer.headers.getRawHeaders(b"content-type")[0].startswith(b"text/event-stream")
    events = _events(await answer.content())
    assert events[-1]["result"]["content"][0]["text"] == f"waited {3 * QUICK}s"
    await deferLater(reactor, QUICK, lambda: None)
    assert not ended.called
    await (await _post(mcp, b"", headers, method="DELETE")).text()
    await ended
    assert b"stream open" in b"".join(chunks)
    assert quick_server.tools.cancelled == []


@pytest_twisted.ensureDeferred
async def test_legacy_call_past_the_time_limit_is_answered_on_the_stream(quick_server):
    from mcp import ClientSession
    from mcp.client.sse import sse_client
    from mcp.shared.exceptions import MCPError

    async def flow():
        async with sse_client(quick_server.url + "/sse", headers=_auth("alice")) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                with pytest.raises(MCPError) as raised:
                    await session.call_tool("slow", {"seconds": 30}, read_timeout_seconds=QUICK + SLACK)
                assert raised.value.error.code == -32001
                assert _text(await session.call_tool("echo", {"text": "after"})) == "after"

    await run_async(flow())
    assert quick_server.tools.cancelled == ["slow"]
