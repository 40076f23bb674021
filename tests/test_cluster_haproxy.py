"""The shipped ``etc/haproxy/mcproxy.cfg`` in front of three cluster nodes, driven by the
official MCP SDK clients: round robin without stickiness, every transport.

HAProxy comes from Debian's package (``make test`` installs it when missing). The test runs
it in the foreground as a child process, on the shipped configuration with only its listening
port and its servers replaced, and stops it by its PID.
"""

import asyncio
import os
import pathlib
import re
import shutil

import pytest_twisted
import treq
from twisted.internet.defer import Deferred

from mcproxy.testing.cluster import Cluster
from mcproxy.testing.process import ChildProcess, free_port
from mcproxy.testing.tool_calls import until

#: Seconds the three SDK flows may take (a client stuck on an error fails the test instead).
FLOWS_TIMEOUT = 120

SHIPPED = pathlib.Path(__file__).resolve().parent.parent / "etc" / "haproxy" / "mcproxy.cfg"


def run_async(coroutine) -> Deferred:
    """Await asyncio (SDK client) code from a Twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


class HAProxy(ChildProcess):
    """``haproxy -db`` on the shipped configuration, listening on ``port`` for ``servers``."""

    def __init__(self, reactor, directory: pathlib.Path, servers: list[str]):
        super().__init__(reactor)
        self.port = free_port()
        config = SHIPPED.read_text()
        config = re.sub(r"bind 127\.0\.0\.1:\d+", f"bind 127.0.0.1:{self.port}", config)
        config = re.sub(r"^    server .*\n", "", config, flags=re.M)
        config += "".join(f"    server n{i} {server} check\n" for i, server in enumerate(servers, 1))
        self.config_path = directory / "haproxy.cfg"
        self.config_path.write_text(config)

    def describe(self) -> str:
        return f"haproxy on port {self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it and wait until it answers through a server."""
        haproxy = shutil.which("haproxy")
        assert haproxy, "haproxy is missing: install Debian's 'haproxy' package (make test and .ci/run do)"
        self.launch([haproxy, "-db", "-f", str(self.config_path)], path=str(self.config_path.parent))

        async def serving() -> bool:
            try:
                response = await treq.get(self.url + "/health", persistent=False, timeout=2)
                await response.content()
            except Exception:
                return False
            return response.code == 200

        await until(self.reactor, serving, 20, seen=self.tail, what="haproxy serving")


async def requests_served(cluster: Cluster) -> list[float]:
    """``mcproxy_http_requests_total`` of /mcp, /sse and /message, summed per node."""
    counts = []
    for node in range(len(cluster.nodes)):
        response = await treq.get(
            cluster.nodes[node].base_url + "/metrics",
            headers={"Authorization": f"Bearer {cluster.admin_token}"},
            persistent=False,
        )
        text = (await response.content()).decode()
        found = re.findall(r'^mcproxy_http_requests_total\{[^}]*route="/(?:mcp|sse|message)"[^}]*\} (\S+)$', text, re.M)
        counts.append(sum(float(value) for value in found))
    return counts


@pytest_twisted.ensureDeferred
async def test_the_sdk_clients_work_through_the_shipped_haproxy_config_in_round_robin(reactor, tmp_path):
    import httpx2
    from mcp import Client, ClientSession
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    cluster = Cluster.create(reactor, tmp_path / "cluster", ratelimit={"user_rate": 1000.0, "user_burst": 1000})
    balancer = None
    try:
        await cluster.start()
        token = await cluster.token_for("hap-user")
        browser = cluster.fake_browser()
        await cluster.register("hap-user", browser.url, token)
        os.makedirs(tmp_path / "haproxy", exist_ok=True)
        balancer = HAProxy(
            reactor, tmp_path / "haproxy", [node.base_url.removeprefix("http://") for node in cluster.nodes]
        )
        await balancer.start()
        before = await requests_served(cluster)
        headers = {"Authorization": f"Bearer {token}"}

        def pages(result) -> str:
            assert not result.is_error, result
            return result.content[0].text

        async def flows():
            async with sse_client(balancer.url + "/sse", headers=headers) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    assert "list_pages" in {tool.name for tool in (await session.list_tools()).tools}
                    for _ in range(6):
                        assert pages(await session.call_tool("list_pages", {})).startswith("## Pages")
            async with httpx2.AsyncClient(headers=headers) as http:
                async with streamable_http_client(balancer.url + "/mcp", http_client=http) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        for _ in range(6):
                            assert pages(await session.call_tool("list_pages", {})).startswith("## Pages")
            async with create_mcp_http_client(headers=headers) as http:
                async with Client(streamable_http_client(balancer.url + "/mcp", http_client=http)) as client:
                    assert client.session.protocol_version == "2026-07-28"
                    for _ in range(6):
                        assert pages(await client.call_tool("list_pages", {})).startswith("## Pages")

        await run_async(flows()).addTimeout(FLOWS_TIMEOUT, reactor)
        after = await requests_served(cluster)
        # Round robin spread the requests over every node, and every one was answered above.
        assert all(later > earlier for earlier, later in zip(before, after, strict=True)), (before, after)
        assert len(browser.links()) == 1  # one CDP connection for the whole cluster
    finally:
        if balancer is not None:
            await balancer.close()
        await cluster.stop()
