"""The whole daemon, driven the way a team uses it: admin API + official MCP SDK clients + real Chromium."""

import asyncio
import base64
import re

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred


def run_async(coro):
    """Await an asyncio coroutine (SDK client code) from a Twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


def _text(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def _browser_flow(session, page_url: str) -> dict:
    """The core tool flow on one MCP session; returns what it observed."""
    from mcp import types

    listed = await session.list_tools()
    names = {tool.name for tool in listed.tools}
    opened = await session.call_tool("new_page", {"url": page_url})
    assert not opened.is_error, _text(opened)
    page_id = int(re.search(r"^(\d+): .*\[selected\]", _text(opened), re.M).group(1))
    snapshot = _text(await session.call_tool("take_snapshot", {"pageId": page_id}))
    uid_of = {m.group(2): m.group(1) for m in re.finditer(r'uid=(\S+) (?:textbox|button) "([^"]+)"', snapshot)}
    filled = await session.call_tool("fill", {"pageId": page_id, "uid": uid_of["Name"], "value": "Alice"})
    assert not filled.is_error, _text(filled)
    clicked = await session.call_tool("click", {"pageId": page_id, "uid": uid_of["Submit"]})
    assert not clicked.is_error, _text(clicked)
    evaluated = await session.call_tool(
        "evaluate_script", {"pageId": page_id, "function": "() => document.getElementById('output').textContent"}
    )
    shot = await session.call_tool("take_screenshot", {"pageId": page_id})
    images = [block for block in shot.content if isinstance(block, types.ImageContent)]
    return {
        "names": names,
        "snapshot": snapshot,
        "evaluated": _text(evaluated),
        "image": base64.b64decode(images[0].data) if images else b"",
    }


def _check_flow(observed: dict) -> None:
    assert {"new_page", "take_snapshot", "fill", "click", "evaluate_script", "take_screenshot"} <= observed["names"]
    assert 'textbox "Name"' in observed["snapshot"]
    assert '"clicked Alice"' in observed["evaluated"]
    assert observed["image"].startswith(b"\x89PNG\r\n\x1a\n")


@pytest_twisted.ensureDeferred
async def test_flow_over_legacy_sse(proxy, chromium, fixture_site):
    from mcp import ClientSession
    from mcp.client.sse import sse_client

    token = await proxy.token_for("alice")
    await proxy.register("alice", chromium.browser_url, token)

    async def flow():
        headers = {"Authorization": f"Bearer {token}"}
        async with sse_client(proxy.base_url + "/sse", headers=headers) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await _browser_flow(session, fixture_site.url("index.html"))

    _check_flow(await run_async(flow()))


@pytest_twisted.ensureDeferred
async def test_flow_over_streamable_http(proxy, chromium, fixture_site):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    token = await proxy.token_for("bob")
    await proxy.register("bob", chromium.browser_url, token)

    async def flow():
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with client, streamable_http_client(proxy.base_url + "/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                initialized = await session.initialize()
                assert initialized.protocol_version == "2025-11-25"
                return await _browser_flow(session, fixture_site.url("index.html"))

    _check_flow(await run_async(flow()))


@pytest_twisted.ensureDeferred
async def test_flow_over_stateless_2026(proxy, chromium, fixture_site):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    token = await proxy.token_for("carol")
    await proxy.register("carol", chromium.browser_url, token)

    async def flow():
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http:
            transport = streamable_http_client(proxy.base_url + "/mcp", http_client=http)
            async with Client(transport) as client:
                assert client.session.protocol_version == "2026-07-28"
                return await _browser_flow(client, fixture_site.url("index.html"))

    _check_flow(await run_async(flow()))


@pytest_twisted.ensureDeferred
async def test_two_users_never_see_each_others_pages(proxy, chromium, private_chromium, fixture_site):
    from mcp import ClientSession
    from mcp.client.sse import sse_client

    alice = await proxy.token_for("alice")
    mallory = await proxy.token_for("mallory")
    await proxy.register("alice", chromium.browser_url, alice)
    await proxy.register("mallory", private_chromium.browser_url, mallory)

    async def open_page(token, url):
        async with sse_client(proxy.base_url + "/sse", headers={"Authorization": f"Bearer {token}"}) as (r, w):
            async with ClientSession(r, w) as session:
                await session.initialize()
                opened = await session.call_tool("new_page", {"url": url})
                return _text(opened)

    alice_pages = await run_async(open_page(alice, fixture_site.url("index.html")))
    mallory_pages = await run_async(open_page(mallory, fixture_site.url("second.html")))
    assert "index.html" in alice_pages and "second.html" not in alice_pages
    assert "second.html" in mallory_pages and "index.html" not in mallory_pages
    # Mallory's browser really has no page of Alice's.
    targets = await (await treq.get(private_chromium.browser_url + "/json/list", persistent=False)).json()
    assert not any("index.html" in t["url"] for t in targets)


@pytest_twisted.ensureDeferred
async def test_auth_failures(proxy):
    code, body, headers = await proxy.api("GET", "/api/users", token="mcpx_0000000000000000_nope")
    assert code == 401 and body["error"]["code"]
    assert headers.getRawHeaders("www-authenticate")
    token = await proxy.token_for("dave")
    code, body, _ = await proxy.api("GET", "/api/users", token=token)
    assert code == 403
    code, body, _ = await proxy.api("GET", "/api/users/dave/status", token=token, headers={"X-User-Id": "erin"})
    assert code == 403
    token_id = token.split("_")[1]
    code, _, _ = await proxy.api("DELETE", f"/api/tokens/{token_id}")
    assert code == 204
    code, body, _ = await proxy.api("GET", "/api/users/dave/status", token=token)
    assert code == 401
    response = await treq.get(proxy.base_url + "/sse", persistent=False)
    assert response.code == 401
    assert response.headers.getRawHeaders("www-authenticate")


@pytest.mark.parametrize("user_id", ["alice\n", "", "a b", "x" * 129, 7])
@pytest_twisted.ensureDeferred
async def test_tokens_are_made_for_well_formed_user_ids_only(proxy, user_id):
    code, body, _ = await proxy.api("POST", "/api/tokens", {"userId": user_id, "permissions": ["tools:*"]})
    assert code == 400 and "userId" in body["error"]["message"]
    code, body, _ = await proxy.api("GET", "/api/tokens")
    assert all(token["userId"] != user_id for token in body["tokens"])


@pytest_twisted.ensureDeferred
async def test_health_and_status(proxy, chromium):
    code, body, headers = await proxy.api("GET", "/health")
    assert code == 200 and body["status"] == "ok" and body["registeredUsers"] == 0
    assert headers.getRawHeaders("x-request-id")
    token = await proxy.token_for("frank")
    answer = await proxy.register("frank", chromium.browser_url, token)
    assert answer["success"] is True and answer["sessionToken"].startswith("mcpx_")
    code, status, _ = await proxy.api("GET", "/api/users/frank/status", token=answer["sessionToken"])
    assert code == 200
    assert status["userId"] == "frank" and status["browserURL"] == chromium.browser_url
    assert status["browserStatus"] in ("connected", "reconnecting", "disconnected")
    code, body, _ = await proxy.api("GET", "/health")
    assert body["registeredUsers"] == 1


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("ftp://127.0.0.1:9222", "scheme"),
        ("http://169.254.169.254", "169.254.169.254"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_register_refuses_bad_browser_urls(proxy, url, fragment):
    token = await proxy.token_for("gina")
    code, body, _ = await proxy.api("POST", "/api/register", {"browserURL": url}, token)
    assert code == 400, body
    assert fragment in body["error"]["message"]
    code, _, _ = await proxy.api("GET", "/api/users/gina/status", token=token)
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_chrome_killed_mid_call_and_restarted(proxy, private_chromium, fixture_site):
    from mcp import ClientSession
    from mcp.client.sse import sse_client
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    token = await proxy.token_for("henry")
    await proxy.register("henry", private_chromium.browser_url, token)
    headers = {"Authorization": f"Bearer {token}"}

    async def start_waiting():
        async with sse_client(proxy.base_url + "/sse", headers=headers) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                opened = await session.call_tool("new_page", {"url": fixture_site.url("index.html")})
                page_id = int(re.search(r"^(\d+): .*\[selected\]", _text(opened), re.M).group(1))
                return await session.call_tool(
                    "wait_for", {"pageId": page_id, "text": ["never shown"], "timeout": 20000}
                )

    waiting = run_async(start_waiting())
    await deferLater(reactor, 1.5, lambda: None)
    started = reactor.seconds()
    await private_chromium.kill()
    result = await waiting
    assert result.is_error
    assert reactor.seconds() - started < 10, "a call on a dead browser must fail fast"
    await private_chromium.restart()

    async def list_after_restart():
        async with sse_client(proxy.base_url + "/sse", headers=headers) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.call_tool("new_page", {"url": fixture_site.url("second.html")})

    for _ in range(40):
        _code, status, _ = await proxy.api("GET", "/api/users/henry/status", token=token)
        if status["browserStatus"] == "connected":
            break
        await deferLater(reactor, 0.5, lambda: None)
    assert status["browserStatus"] == "connected"
    reopened = await run_async(list_after_restart())
    assert not reopened.is_error, _text(reopened)
    assert "second.html" in _text(reopened)


@pytest_twisted.ensureDeferred
async def test_artifacts_reach_their_owner_only(proxy, chromium, fixture_site):
    from mcp import ClientSession, types
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.exceptions import MCPError

    owner = await proxy.token_for("gina")
    other = await proxy.token_for("hank")
    await proxy.register("gina", chromium.browser_url, owner)

    async def session_of(token, work):
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with client, streamable_http_client(proxy.base_url + "/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    async def save(session):
        opened = await session.call_tool("new_page", {"url": fixture_site.url("index.html")})
        page_id = int(re.search(r"^(\d+): .*\[selected\]", _text(opened), re.M).group(1))
        shot = await session.call_tool("take_screenshot", {"pageId": page_id, "filePath": "shots/home.png"})
        assert not shot.is_error, _text(shot)
        links = [block for block in shot.content if isinstance(block, types.ResourceLink)]
        listed = await session.list_resources()
        read = await session.read_resource(links[0].uri)
        return links, listed, read

    links, listed, read = await run_async(session_of(owner, save))
    uri = str(links[0].uri)
    assert uri.startswith("mcproxy://artifacts/") and links[0].name == "shots/home.png"
    assert [str(r.uri) for r in listed.resources] == [uri]
    assert base64.b64decode(read.contents[0].blob).startswith(b"\x89PNG\r\n\x1a\n")

    async def snoop(session):
        listed = await session.list_resources()
        try:
            await session.read_resource(uri)
        except MCPError as e:
            return listed, e
        return listed, None

    listed, refused = await run_async(session_of(other, snoop))
    assert listed.resources == []
    assert refused is not None and "not found" in str(refused).lower()


@pytest_twisted.ensureDeferred
async def test_the_daemon_serves_the_dashboard_to_admins_only(proxy):
    page = await treq.get(proxy.base_url + "/admin", persistent=False)
    html = await page.text()
    assert page.code == 200 and "<title>" in html
    assert "default-src" in page.headers.getRawHeaders("content-security-policy")[0]
    code, overview, _ = await proxy.api("GET", "/admin/api/overview")
    assert code == 200 and {"users", "sessions", "recentCalls", "process"} <= set(overview)
    user = await proxy.token_for("ivan")
    code, body, _ = await proxy.api("GET", "/admin/api/overview", token=user)
    assert code == 403 and "not an admin token" in body["error"]["message"]
