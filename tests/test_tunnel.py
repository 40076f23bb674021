"""Browsers that dial out: ``mcproxy-connect --browser-url`` to real Chromium, through the real
daemon, driven by the official MCP SDK client."""

import asyncio
import re

import pytest_twisted
from twisted.internet.defer import Deferred

from mcproxy.testing.tool_calls import until


def run_async(coro):
    """Await an asyncio coroutine (SDK client code) from a Twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


def _text(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def core_flow(base_url: str, token: str, page_url: str) -> dict:
    """``new_page``, ``take_snapshot`` and ``evaluate_script`` over one MCP SDK session."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def flow():
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with client, streamable_http_client(base_url + "/mcp", http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                opened = await session.call_tool("new_page", {"url": page_url})
                assert not opened.is_error, _text(opened)
                page_id = int(re.search(r"^(\d+): .*\[selected\]", _text(opened), re.M).group(1))
                snapshot = await session.call_tool("take_snapshot", {"pageId": page_id})
                evaluated = await session.call_tool(
                    "evaluate_script", {"pageId": page_id, "function": "() => document.title + '!'"}
                )
                await session.call_tool("close_page", {"pageId": page_id})
                return {"snapshot": _text(snapshot), "evaluated": _text(evaluated)}

    return await run_async(flow())


def check_core_flow(observed: dict) -> None:
    assert 'textbox "Name"' in observed["snapshot"], observed["snapshot"]
    assert "!" in observed["evaluated"] and "Error" not in observed["evaluated"], observed["evaluated"]


async def status_of(proxy, user_id: str) -> dict:
    code, body, _ = await proxy.api("GET", f"/api/users/{user_id}/status")
    assert code == 200, body
    return body


async def wait_status(reactor, proxy, user_id: str, wanted: str, timeout: float = 30.0) -> dict:
    seen: list = []

    async def check():
        body = await status_of(proxy, user_id)
        seen.append(body)
        return body["browserStatus"] == wanted

    await until(reactor, check, timeout, seen, what=f"{user_id}'s browser {wanted}")
    return seen[-1]


@pytest_twisted.async_yield_fixture()
async def connects(reactor):
    """Start `mcproxy.testing.tunnel.Connect` processes; every one is stopped afterwards."""
    from mcproxy.testing.tunnel import Connect

    started: list[Connect] = []

    def start(proxy_url: str, token: str, *args: str) -> Connect:
        client = Connect(reactor, proxy_url, token, *args)
        client.start()
        started.append(client)
        return client

    yield start
    for client in started:
        await client.close()


@pytest_twisted.async_yield_fixture()
async def daemon(reactor, tmp_path):
    """A real ``twistd mcproxy`` (sqlite store, so it keeps its users over a restart)."""
    from mcproxy.testing.process import Daemon

    process = Daemon(
        reactor,
        tmp_path,
        store={"url": f"sqlite:{tmp_path / 'store.db'}"},
        browser={"backoff_max": 2.0, "connect_timeout": 5.0, "max_message_bytes": 1024 * 1024},
    )
    running = await process.start()
    process.running_proxy = running
    yield process
    await process.close()


@pytest_twisted.ensureDeferred
async def test_a_tunnel_registers_its_user_and_carries_the_core_flow(reactor, daemon, connects, chromium, fixture_site):
    proxy = daemon.running_proxy
    token = await proxy.token_for("alice", "tools:*", "register")
    client = connects(proxy.base_url, token, "--browser-url", chromium.browser_url)
    line = await client.tunnel_up()
    assert "as alice" in line
    status = await wait_status(reactor, proxy, "alice", "connected")
    assert status["browserURL"] == "tunnel:127.0.0.1", status
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))
