"""``mcproxy-connect`` in a process of its own, for tests: started, watched and stopped by its PID;
and the checks the tunnel tests share (the core tool flow over the MCP SDK, the user's status)."""

import asyncio
import re
import sys

from twisted.internet.defer import Deferred

from mcproxy.testing.process import ChildProcess, checkout_environment
from mcproxy.testing.tool_calls import until


class Connect(ChildProcess):
    """``python -m mcproxy.tunnel`` (what ``mcproxy-connect`` runs) with a token in
    ``MCPROXY_TOKEN``; its status lines are kept (`line_with`)."""

    def __init__(self, reactor, proxy_url: str, token: str, *args: str):
        super().__init__(reactor)
        self.proxy_url = proxy_url
        self.token = token
        self.args = args

    def start(self) -> None:
        env = checkout_environment()
        env["MCPROXY_TOKEN"] = self.token
        self.launch([sys.executable, "-m", "mcproxy.tunnel", "--proxy", self.proxy_url, *self.args], env=env)

    async def tunnel_up(self, seconds: float = 30.0) -> str:
        """Wait for the "connected" status line (failing with the output if it does not come)."""
        line = self.line_with("connected to")
        line.addTimeout(seconds, self.reactor)
        try:
            return await line
        except Exception:
            raise AssertionError(f"{self.describe()} did not connect:\n{self.tail()}") from None

    async def exit_code(self, seconds: float = 30.0) -> int | None:
        """The exit code, once the process has ended."""
        reason = await self.exited(seconds)
        return getattr(reason, "exitCode", None)

    def describe(self) -> str:
        return "mcproxy-connect"


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
                selected = re.search(r"^(\d+): .*\[selected\]", _text(opened), re.M)
                assert selected is not None, _text(opened)
                page_id = int(selected.group(1))
                snapshot = await session.call_tool("take_snapshot", {"pageId": page_id})
                evaluated = await session.call_tool(
                    "evaluate_script", {"pageId": page_id, "function": "() => document.title + '!'"}
                )
                await session.call_tool("close_page", {"pageId": page_id})
                return {"snapshot": _text(snapshot), "evaluated": _text(evaluated)}

    return await run_async(flow())


def check_core_flow(observed: dict) -> None:
    """What `core_flow` saw of tests/fixtures/index.html."""
    assert 'textbox "Name"' in observed["snapshot"], observed["snapshot"]
    assert '"mcproxy test page!"' in observed["evaluated"], observed["evaluated"]


async def status_of(proxy, user_id: str) -> dict:
    """The user's status (``GET /api/users/{id}/status``) from the admin API."""
    code, body, _ = await proxy.api("GET", f"/api/users/{user_id}/status")
    assert code == 200, body
    return body


async def wait_status(reactor, proxy, user_id: str, wanted: str, timeout: float = 30.0) -> dict:
    """Wait until the user is registered and its ``browserStatus`` is ``wanted``; the status then."""
    seen: list = []

    async def check():
        code, body, _ = await proxy.api("GET", f"/api/users/{user_id}/status")
        seen.append(body)
        return code == 200 and body["browserStatus"] == wanted

    await until(reactor, check, timeout, lambda: seen[-1:], what=f"{user_id}'s browser {wanted}")
    return seen[-1]


async def alice_tunnelled(reactor, proxy, connects, *args: str, proxy_url: str | None = None) -> tuple[str, Connect]:
    """alice's token (tools and register) and an ``mcproxy-connect`` with ``args`` to
    ``proxy_url`` (the proxy's own by default), once alice's browser behind it is connected."""
    token = await proxy.token_for("alice", "tools:*", "register")
    client = connects(proxy_url or proxy.base_url, token, *args)
    await client.tunnel_up()
    await wait_status(reactor, proxy, "alice", "connected")
    return token, client
