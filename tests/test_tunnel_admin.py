"""What an operator's decisions do to tunnels: an unregistered user's tunnel closes for good,
and ``browser.require_tunnel`` keeps browsers registered by URL before it was set away. Real
``twistd``/in-process daemons, real headless Chromium, real ``mcproxy-connect``."""

import pytest_twisted

from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.tool_calls import until
from mcproxy.testing.tunnel import alice_tunnelled


@pytest_twisted.ensureDeferred
async def test_unregistering_a_user_closes_its_tunnel_for_good(reactor, tunnel_daemon, connects, chromium):
    proxy = tunnel_daemon.running_proxy
    _, client = await alice_tunnelled(reactor, proxy, connects, "--browser-url", chromium.browser_url)
    code, _, _ = await proxy.api("DELETE", "/api/users/alice")
    assert code == 204
    # The client stops rather than coming back, which would register alice again.
    assert await client.exit_code() == 8
    assert "the user was unregistered" in client.tail()
    code, body, _ = await proxy.api("GET", "/api/users/alice/status")
    assert code == 404, body


@pytest_twisted.ensureDeferred
async def test_require_tunnel_keeps_browsers_registered_by_url_before_away(reactor, tmp_path, chromium):
    store = {"url": f"sqlite:{tmp_path / 'store.db'}"}
    proxy = await start_proxy(reactor, tmp_path, store=store)
    try:
        token = await proxy.token_for("alice", "tools:*", "register")
        await proxy.register("alice", chromium.browser_url, token)
    finally:
        await proxy.stop()
    proxy = await start_proxy(reactor, tmp_path, store=store, browser={"require_tunnel": True, "backoff_max": 1.0})
    try:
        status: dict = {}

        async def refused() -> bool:
            code, body, _ = await proxy.api("GET", "/api/users/alice/status")
            status.update(body)
            return code == 200 and "browser.require_tunnel" in (body["lastError"] or "")

        await until(reactor, refused, 15, seen=lambda: status, what="the URL refused")
        assert status["browserStatus"] != "connected", status
        answer = await proxy.call_tool(token, "list_pages")
        assert answer["result"]["isError"] and "mcproxy-connect" in answer["result"]["content"][0]["text"], answer
    finally:
        await proxy.stop()
