"""Browsers that dial out: ``mcproxy-connect --browser-url`` to real Chromium, through the real
daemon, driven by the official MCP SDK client; the proxy's end of the tunnel against hostile peers."""

import json

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred

from mcproxy.testing.tunnel import alice_tunnelled, check_core_flow, core_flow, status_of, wait_status


@pytest_twisted.ensureDeferred
async def test_a_tunnel_registers_its_user_and_carries_the_core_flow(
    reactor, tunnel_daemon, connects, chromium, fixture_site
):
    proxy = tunnel_daemon.running_proxy
    token = await proxy.token_for("alice", "tools:*", "register")
    client = connects(proxy.base_url, token, "--browser-url", chromium.browser_url)
    line = await client.tunnel_up()
    assert "as alice" in line
    status = await wait_status(reactor, proxy, "alice", "connected")
    assert status["browserURL"] == "tunnel:127.0.0.1", status
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))


@pytest_twisted.ensureDeferred
async def test_a_dropped_tunnel_comes_back_by_itself(reactor, tunnel_daemon, connects, chromium, fixture_site):
    from mcproxy.testing.cluster import Relay

    proxy = tunnel_daemon.running_proxy
    relay = Relay(reactor, tunnel_daemon.port)
    try:
        proxy_url = f"http://127.0.0.1:{relay.local_port}"
        token, client = await alice_tunnelled(
            reactor, proxy, connects, "--browser-url", chromium.browser_url, proxy_url=proxy_url
        )
        reconnecting = client.line_with("reconnecting in 1 s")
        relay.cut()
        await reconnecting
        status = await wait_status(reactor, proxy, "alice", "reconnecting")
        assert status["browserURL"] == "tunnel:", status
        assert status["lastError"].startswith("connection lost: the tunnel closed"), status
        back = client.line_with("connected to")
        await relay.heal()
        await back
        await wait_status(reactor, proxy, "alice", "connected")
        check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))
    finally:
        await relay.close()


@pytest_twisted.ensureDeferred
async def test_the_tunnel_comes_back_after_the_proxy_restarts(reactor, tunnel_daemon, connects, chromium, fixture_site):
    proxy = tunnel_daemon.running_proxy
    token, client = await alice_tunnelled(reactor, proxy, connects, "--browser-url", chromium.browser_url)
    reconnecting = client.line_with("reconnecting in")
    back = client.line_with("connected to")
    await tunnel_daemon.restart()
    assert "the proxy is stopping" in await reconnecting
    back.addTimeout(30, reactor)
    await back
    await wait_status(reactor, proxy, "alice", "connected")
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))


@pytest_twisted.ensureDeferred
async def test_a_second_tunnel_of_the_same_user_replaces_the_first(
    reactor, tunnel_daemon, connects, chromium, fixture_site
):
    proxy = tunnel_daemon.running_proxy
    token, first = await alice_tunnelled(reactor, proxy, connects, "--browser-url", chromium.browser_url)
    second = connects(proxy.base_url, token, "--browser-url", chromium.browser_url)
    await second.tunnel_up()
    assert await first.exit_code() == 5
    assert "another mcproxy-connect of the same user replaced this one" in first.tail()
    await wait_status(reactor, proxy, "alice", "connected")
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))
    assert second.running


@pytest_twisted.ensureDeferred
async def test_a_tunnel_is_refused_without_a_valid_token_or_the_permission(reactor, tunnel_daemon, connects, chromium):
    proxy = tunnel_daemon.running_proxy
    bad = connects(proxy.base_url, "not-a-token", "--browser-url", chromium.browser_url)
    assert await bad.exit_code() == 3
    assert "the proxy refused the token" in bad.tail()
    tools_only = await proxy.token_for("carol", "tools:*")
    refused = connects(proxy.base_url, tools_only, "--browser-url", chromium.browser_url)
    assert await refused.exit_code() == 4
    assert "'tunnel'" in refused.tail()


@pytest_twisted.ensureDeferred
async def test_a_tunnel_serves_its_own_user_only(reactor, tunnel_daemon, connects, chromium):
    proxy = tunnel_daemon.running_proxy
    alice = await proxy.token_for("alice", "tools:*", "register")
    await proxy.register("alice", "tunnel:", alice)
    bob = await proxy.token_for("bob", "tunnel")
    client = connects(proxy.base_url, bob, "--browser-url", chromium.browser_url)
    assert "as bob" in await client.tunnel_up()
    answer = await proxy.call_tool(alice, "list_pages")
    assert "your browser's tunnel is not connected; run mcproxy-connect" in str(answer), answer
    assert (await status_of(proxy, "alice"))["browserURL"] == "tunnel:"
    # A token that may only tunnel calls no tools, and registers nothing.
    assert 'not allowed to call "list_pages"' in str(await proxy.call_tool(bob, "list_pages"))
    code, _, _ = await proxy.api("GET", "/api/users/bob/status")
    assert code == 404
    # Nor may bob's token open alice's tunnel by naming her.
    _, closed = await raw_tunnel(reactor, proxy.base_url, bob, **{"X-User-Id": "alice"})
    assert await closed == 4403
    assert (await status_of(proxy, "alice"))["browserStatus"] != "connected"


async def raw_tunnel(reactor, base_url: str, token: str, **headers: str):
    """A hand-driven tunnel peer: (its protocol, a Deferred of its close code)."""
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from mcproxy.tunnel import wire

    closed: Deferred = Deferred()
    opened: Deferred = Deferred()

    class Peer(WebSocketClientProtocol):
        def onOpen(self):
            opened.callback(self)

        def onClose(self, wasClean, code, reason):
            if not opened.called:
                opened.errback(AssertionError(f"no tunnel: {code} {reason}"))
            closed.callback(code)

    url = base_url.replace("http://", "ws://") + "/tunnel"
    headers["Authorization"] = f"Bearer {token}"
    factory = WebSocketClientFactory(url, reactor=reactor, protocols=[wire.SUBPROTOCOL], headers=headers)
    factory.protocol = Peer
    port = int(base_url.rsplit(":", 1)[1])
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    peer = await opened
    return peer, closed


def _hello() -> bytes:
    from mcproxy.tunnel import wire

    return wire.encode("hello", v=1, product="Chrome", mode="port")


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(b"{not json", True)], 4400),
        ([(b'{"t":"welcome","user":"alice"}', True)], 4400),
        ([(b'{"id":1,"method":"Browser.getVersion"}', False)], 4400),
        ([(_hello(), True), (b"\x00" * 5000, True)], 4400),
        ([(_hello(), True), (b"x" * (1024 * 1024 + 1), False)], 1009),
    ],
    ids=["not-json", "no-hello", "cdp-before-hello", "huge-control", "huge-cdp"],
)
@pytest_twisted.ensureDeferred
async def test_a_peer_that_sends_garbage_is_closed_and_nothing_else_is_affected(
    reactor, tunnel_daemon, connects, chromium, fixture_site, frames, code
):
    proxy = tunnel_daemon.running_proxy
    alice = await proxy.token_for("alice", "tools:*", "register")
    client = connects(proxy.base_url, alice, "--browser-url", chromium.browser_url)
    await client.tunnel_up()
    await wait_status(reactor, proxy, "alice", "connected")
    peer, closed = await raw_tunnel(reactor, proxy.base_url, await proxy.token_for("mallory", "tunnel"))
    for payload, binary in frames:
        peer.sendMessage(payload, isBinary=binary)
    closed.addTimeout(10, reactor)
    assert await closed == code, tunnel_daemon.tail()
    check_core_flow(await core_flow(proxy.base_url, alice, fixture_site.url("index.html")))
    assert client.running and not any("reconnecting" in line for line in client.lines), client.tail()


@pytest_twisted.ensureDeferred
async def test_require_tunnel_refuses_browsers_registered_by_url(reactor, tmp_path, chromium):
    from mcproxy.testing.daemon import start_proxy

    proxy = await start_proxy(reactor, tmp_path, browser={"require_tunnel": True})
    try:
        token = await proxy.token_for("alice", "tools:*", "register")
        code, body, _ = await proxy.api(
            "POST", "/api/register", {"userId": "alice", "browserURL": chromium.browser_url}, token
        )
        assert (code, body["error"]["code"]) == (403, "tunnel_required"), body
        assert "mcproxy-connect" in body["error"]["message"]
        assert (await proxy.register("alice", "tunnel:", token))["success"]
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_tunnel_answers_what_is_no_tunnel_with_a_json_error(proxy):
    import treq

    response = await treq.get(proxy.base_url + "/tunnel", persistent=False)
    assert response.code == 400
    assert (await response.json())["error"]["code"] == "websocket_expected"


@pytest_twisted.ensureDeferred
async def test_a_closed_tunnel_gives_its_place_under_the_address_cap_back(reactor, tmp_path):
    from mcproxy.testing.daemon import start_proxy

    proxy = await start_proxy(reactor, tmp_path, server={"max_connections_per_address": 2})
    try:
        token = await proxy.token_for("mallory", "tunnel")
        for _ in range(4):
            peer, closed = await raw_tunnel(reactor, proxy.base_url, token)
            peer.sendMessage(_hello(), isBinary=True)
            peer.sendClose(1000)
            await closed
        held = [await raw_tunnel(reactor, proxy.base_url, token) for _ in range(2)]
        response = await treq.get(proxy.base_url + "/health", persistent=False)
        assert response.code == 503
        assert (await response.json())["error"]["code"] == "too_many_connections"
        for peer, closed in held:
            peer.sendClose(1000)
            await closed
    finally:
        await proxy.stop()


def test_a_launched_chrome_answers_only_the_calls_of_the_open_connection():
    from mcproxy.browser.pipe import Renumbering

    numbers = Renumbering()
    first = json.loads(numbers.outgoing(b'{"id":1,"method":"Target.attachToTarget","params":{}}'))
    late = json.loads(numbers.outgoing(b'{"id":2,"method":"Browser.getVersion","params":{}}'))
    answer = numbers.incoming(b'{"id":%d,"result":{"sessionId":"S1"}}' % first["id"])
    assert json.loads(answer) == {"id": 1, "result": {"sessionId": "S1"}}
    event = b'{"method":"Page.loadEventFired","sessionId":"S1","params":{}}'
    assert numbers.incoming(event) is event  # passed on as it came: the connection decodes it
    shot = numbers.outgoing(b'{"id":3,"method":"Page.captureScreenshot","params":{}}')
    big = b'"' + b"A" * 100_000 + b'"'
    assert numbers.incoming(b'{"id":%d,"result":{"data":%s}}' % (json.loads(shot)["id"], big)) == (
        b'{"id":3,"result":{"data":' + big + b"}}"
    )

    told = [json.loads(message) for message in numbers.closing()]
    assert [call["method"] for call in told] == [
        "Target.setAutoAttach",
        "Target.setDiscoverTargets",
        "Target.detachFromTarget",
    ]
    assert told[2]["params"] == {"sessionId": "S1"}
    # The next connection starts its ids at 1 again: the late answer of the first reaches nobody.
    again = json.loads(numbers.outgoing(b'{"id":2,"method":"Target.getTargets","params":{}}'))
    assert numbers.incoming(b'{"id":%d,"result":{}}' % late["id"]) is None
    assert numbers.incoming(b'{"id":%d,"result":{}}' % told[0]["id"]) is None
    assert json.loads(numbers.incoming(b'{"id":%d,"result":{}}' % again["id"])) == {"id": 2, "result": {}}


@pytest_twisted.ensureDeferred
async def test_the_client_sends_small_frames_at_once_both_ways(reactor, proxy, chromium):
    import io
    import socket

    from mcproxy.testing.tool_calls import until
    from mcproxy.tunnel.client import Connector, PortBrowser, Status

    def no_delay(transport) -> bool:
        return bool(transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    browser = PortBrowser(reactor, chromium.browser_url)
    connector = Connector(
        reactor, proxy.base_url, await proxy.token_for("alice", "tools:*", "register"), browser, Status(io.StringIO())
    )
    connector.start()
    try:
        await wait_status(reactor, proxy, "alice", "connected")
        await until(reactor, lambda: browser._socket is not None, what="the DevTools socket")
        assert no_delay(connector._protocol.transport)
        assert no_delay(browser._socket.transport)
    finally:
        connector.stop()
        await browser.stop()
        await until(reactor, lambda: proxy.service.tunnels.tunnel_of("alice") is None, what="the tunnel closed")


@pytest_twisted.ensureDeferred
async def test_revoking_its_token_closes_the_tunnel_for_good(reactor, tunnel_daemon, connects, chromium):
    proxy = tunnel_daemon.running_proxy
    token, client = await alice_tunnelled(reactor, proxy, connects, "--browser-url", chromium.browser_url)
    token_id = token.split("_")[1]
    code, _, _ = await proxy.api("DELETE", f"/api/tokens/{token_id}")
    assert code == 204
    assert await client.exit_code() == 3
    assert "the token was revoked or expired" in client.tail()
