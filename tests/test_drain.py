"""Graceful drain on SIGTERM: the MCP endpoints in-process on a Clock, then a real
``twistd -n mcproxy`` process driving real Chromium.

`open_page` is shared with tests/test_reload.py; `Daemon` (a twistd subprocess with a
config file the test can rewrite) lives in `mcproxy.testing.process`.
"""

import json
import re

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mcproxy.config import Config
from mcproxy.testing.daemon import RunningProxy
from mcproxy.testing.fake_tools import FakeToolProvider, fake_authenticate
from mcproxy.testing.process import Daemon
from mcproxy.testing.tool_calls import sleep


async def open_page(proxy: RunningProxy, token: str, url: str) -> int:
    """Open ``url`` in a new tab through the proxy; its pageId."""
    answer = await proxy.call_tool(token, "new_page", {"url": url}, rid="open")
    text = answer["result"]["content"][0]["text"]
    found = re.search(rf"^(\d+): .*\({re.escape(url)}\)", text, re.M)
    assert found, text
    return int(found.group(1))


async def exit_status(daemon: Daemon, reactor, seconds: float = 30):
    """The process's end (ProcessDone or ProcessTerminated), waiting at most ``seconds``."""
    return await daemon.exited(seconds)


# -- In-process: the endpoints' drain, on a Clock ------------------------------------------


@pytest.fixture
def drained(reactor):
    """McpTransports with the fake tools on a Clock, served on loopback: (transports, tools, clock, client)."""
    from mcproxy.auth.admission import Admission
    from mcproxy.session.registry import SessionRegistry
    from mcproxy.web.front import build_router
    from mcproxy.web.origins import OriginPolicy
    from mcproxy.web.site import ProxySite
    from mcproxy.web.transports import McpTransports

    clock = Clock()
    tools = FakeToolProvider(clock)
    sessions = SessionRegistry(clock, 1800)
    config = Config()
    transports = McpTransports(clock, config, tools, sessions)
    root = build_router(origins=OriginPolicy(config), admission=Admission(fake_authenticate), transports=transports)
    site = ProxySite(root, max_body_bytes=config.server.max_body_bytes, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    client = RunningProxy(service=None, base_url=f"http://127.0.0.1:{port.getHost().port}", admin_token="")
    yield transports, tools, clock, client
    sessions.close_all()
    pytest_twisted.blockon(port.stopListening())


MCP_HEADERS = {
    "Authorization": "Bearer user:alice",
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
}


async def open_streams(client: RunningProxy):
    """A Streamable HTTP session's GET stream and a legacy /sse stream: (their responses)."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    response = await treq.post(
        client.base_url + "/mcp", json.dumps(init).encode(), headers=MCP_HEADERS, persistent=False
    )
    session_id = response.headers.getRawHeaders("mcp-session-id")[0]
    await response.content()
    get_headers = {"Authorization": "Bearer user:alice", "Accept": "text/event-stream", "Mcp-Session-Id": session_id}
    streamable = await treq.get(client.base_url + "/mcp", headers=get_headers, unbuffered=True, persistent=False)
    legacy = await treq.get(client.base_url + "/sse", headers=get_headers, unbuffered=True, persistent=False)
    assert streamable.code == legacy.code == 200
    return streamable, legacy


@pytest_twisted.ensureDeferred
async def test_drain_cuts_calls_past_the_timeout_with_a_clear_error(drained, reactor):
    transports, tools, clock, client = drained
    streamable, legacy = await open_streams(client)
    streamable_ended, legacy_ended = streamable.content(), legacy.content()
    started = tools.when_started()
    call = Deferred.fromCoroutine(client.call_tool("user:alice", "slow", {"seconds": 100}, rid=7))
    await started
    await sleep(reactor, 0)  # `started` fires from inside the call, before the call is returned
    drain = Deferred.fromCoroutine(transports.drain(timeout=5))
    await streamable_ended  # notification streams close at once
    assert not legacy_ended.called  # the legacy stream may still carry answers
    refused = await treq.post(client.base_url + "/mcp", b"{}", headers=MCP_HEADERS, persistent=False)
    assert refused.code == 503 and refused.headers.getRawHeaders("retry-after") == ["1"]
    assert (await refused.json())["error"]["code"] == "draining"
    clock.advance(4.9)
    assert not call.called and not drain.called
    clock.advance(0.2)
    answer = await call
    assert answer["id"] == 7 and answer["error"]["code"] == -32011
    assert "shutting down" in answer["error"]["message"] and '"slow"' in answer["error"]["message"]
    assert await drain == 1 and tools.cancelled == ["slow"]
    await legacy_ended


@pytest_twisted.ensureDeferred
async def test_drain_waits_for_calls_that_finish_in_time(drained, reactor):
    transports, tools, clock, client = drained
    started = tools.when_started()
    call = Deferred.fromCoroutine(client.call_tool("user:alice", "slow", {"seconds": 3}, rid=8))
    await started
    await sleep(reactor, 0)
    drain = Deferred.fromCoroutine(transports.drain(timeout=10))
    clock.advance(3)
    answer = await call
    assert answer["result"]["content"][0]["text"] == "waited 3.0s"
    assert await drain == 0 and tools.cancelled == []


# -- A real daemon on SIGTERM ------------------------------------------------------------------


async def _daemon_with_a_waiting_call(reactor, tmp_path, chromium, fixture_site, drain_timeout: float):
    """A daemon whose user runs a wait_for for text that appears 10 s after the page loads.

    Returns (daemon, the running call, a pool whose connection is open to the daemon).
    """
    daemon = Daemon(reactor, tmp_path, server={"drain_timeout": drain_timeout})
    try:
        proxy = await daemon.start()
        token = await proxy.token_for("alice")
        await proxy.register("alice", chromium.browser_url, token)
        page_id = await open_page(proxy, token, fixture_site.url("drain_late_text.html?ms=10000"))
        call = Deferred.fromCoroutine(
            proxy.call_tool(
                token, "wait_for", {"pageId": page_id, "text": ["Late text arrived"], "timeout": 30000}, rid=42
            )
        )
        await sleep(reactor, 0.5)
        assert not call.called
    except BaseException:
        daemon.stop()
        raise
    return daemon, call, token


@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_call_within_the_drain_timeout_finish(reactor, tmp_path, chromium, fixture_site):
    daemon, call, _ = await _daemon_with_a_waiting_call(reactor, tmp_path, chromium, fixture_site, 15)
    try:
        daemon.signal("TERM")
        answer = await call
        assert not answer["result"].get("isError"), answer
        assert "Late text arrived" in answer["result"]["content"][0]["text"]
        ended = await exit_status(daemon, reactor)
    finally:
        daemon.stop()
    assert ended.exitCode == 0 and ended.signal is None, ended
    messages = daemon.messages()
    assert any("draining for up to 15.0 s" in m for m in messages), messages
    assert not any("were cancelled" in m for m in messages)
    assert "Server Shut Down." in messages[-1]


@pytest_twisted.ensureDeferred
async def test_sigterm_cuts_a_call_past_the_drain_timeout_and_refuses_new_requests(
    reactor, tmp_path, chromium, fixture_site
):
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    daemon, call, token = await _daemon_with_a_waiting_call(reactor, tmp_path, chromium, fixture_site, 2)
    # A keep-alive connection opened before the drain: new requests on it get 503.
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    client = HTTPClient(Agent(reactor, pool=pool))
    try:
        health = await client.get(daemon.base_url + "/health")
        assert health.code == 200
        await health.content()
        signalled = reactor.seconds()
        daemon.signal("TERM")
        await daemon.line_with("draining for up to 2.0 s")
        refused = await client.post(
            daemon.base_url + "/mcp",
            b"{}",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert refused.code == 503 and refused.headers.getRawHeaders("retry-after") == ["1"]
        assert (await refused.json())["error"]["code"] == "draining"
        answer = await call
        cut_after = reactor.seconds() - signalled
        ended = await exit_status(daemon, reactor)
    finally:
        daemon.stop()
        await pool.closeCachedConnections()
    assert answer["id"] == 42 and answer["error"]["code"] == -32011, answer
    assert "The server is shutting down" in answer["error"]["message"]
    assert 1.9 <= cut_after < 3.5, cut_after
    assert ended.exitCode == 0 and ended.signal is None, ended
    assert any("1 tool calls were cancelled" in m for m in daemon.messages())
