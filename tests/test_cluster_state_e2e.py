"""What survives a change of owner, end to end: three ``twistd mcproxy`` nodes, one real
Chromium, the owner killed (``kill -9``) or drained (SIGTERM) under a client that keeps
going through the other nodes (design §3.7, §3.8, test C19). Needs the cluster harness
(`mcproxy.testing.cluster`).
"""

import asyncio
import re

import pytest_twisted
from twisted.internet.defer import Deferred

from bench.lean_mcp import LeanStreamable
from bench.wire import connect
from mcproxy.testing.cluster import FAST_TIMERS, Cluster

NODE_HEADER = "X-MCProxy-Node"
#: Seconds a request may be held while its user finds a new owner, plus room for a busy machine.
FAILOVER = FAST_TIMERS["node_ttl"] + FAST_TIMERS["failover_wait"] + 15


def text_of(answer: dict) -> str:
    """The text of a successful tools/call answer (fails on an error)."""
    assert "result" in answer, answer
    text = "\n".join(block.get("text", "") for block in answer["result"]["content"])
    assert not answer["result"].get("isError"), text
    return text


def listed(text: str, url: str) -> list[tuple[int, bool]]:
    """(page id, selected) of each line of a ``## Pages`` section that shows ``url``."""
    lines = re.findall(rf"^(\d+): .*\({re.escape(url)}\)( \[selected\])?", text, re.M)
    return [(int(page_id), bool(selected)) for page_id, selected in lines]


@pytest_twisted.async_yield_fixture()
async def clusters(reactor, tmp_path):
    """Starts three nodes of this test alone with a given ``tools.tab_scope``; stops them."""
    started = []

    async def start(tab_scope: str) -> Cluster:
        cluster = Cluster.create(reactor, tmp_path, tools={"tab_scope": tab_scope})
        started.append(cluster)
        await cluster.start()
        return cluster

    yield start
    for cluster in started:
        await cluster.stop()


async def held_call(cluster: Cluster, reactor, node: int, token: str, name: str, arguments: dict, rid: int):
    """A stateless tool call through node ``node`` that may be held while its user moves:
    (the answer, the node that ran it)."""
    call = Deferred.fromCoroutine(cluster.proxy(node).call_tool_with_headers(token, name, arguments, rid))
    answer, headers = await call.addTimeout(FAILOVER, reactor)
    return answer, headers.getRawHeaders(NODE_HEADER)[0]


@pytest_twisted.ensureDeferred
async def test_page_ids_and_flags_survive_a_killed_owner(clusters, reactor, chromium, fixture_site):
    cluster = await clusters("user")  # the pages opened through the proxy for the user
    token = await cluster.token_for("state-kill")
    await cluster.register("state-kill", chromium.browser_url, token)
    url = fixture_site.url("index.html?state-kill")
    opened, owner = await held_call(cluster, reactor, 0, token, "new_page", {"url": url}, 1)
    ((page_id, _),) = listed(text_of(opened), url)
    victim = cluster.node_named(owner)
    edge = next(index for index, node in enumerate(cluster.nodes) if node is not victim)

    await victim.kill()
    pages, new_owner = await held_call(cluster, reactor, edge, token, "list_pages", {}, 2)
    assert new_owner != owner
    # Under tab scope "user" only pages opened through the proxy show: the flag came along.
    assert [found for found, _ in listed(text_of(pages), url)] == [page_id], text_of(pages)
    where, _ = await held_call(
        cluster, reactor, edge, token, "evaluate_script", {"pageId": page_id, "function": "() => location.href"}, 3
    )
    assert url in text_of(where)
    again = fixture_site.url("index.html?state-kill-again")
    reopened, _ = await held_call(cluster, reactor, edge, token, "new_page", {"url": again}, 4)
    ((next_id, _),) = listed(text_of(reopened), again)
    assert next_id > page_id  # the counter went on where the dead owner left it
    for closing in (page_id, next_id):
        await held_call(cluster, reactor, edge, token, "close_page", {"pageId": closing}, 5)


def from_asyncio(coroutine) -> Deferred:
    """Await an asyncio coroutine (the lean client) from a Twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


@pytest_twisted.ensureDeferred
async def test_c19_a_streamable_session_is_resumed_after_its_owner_drains(clusters, reactor, chromium, fixture_site):
    cluster = await clusters("session")  # the pages this session opened: the opener came along too
    token = await cluster.token_for("state-drain")
    await cluster.register("state-drain", chromium.browser_url, token)
    url = fixture_site.url("index.html?state-drain")
    first = await from_asyncio(LeanStreamable.open(cluster.base_urls, token))  # rotates over the nodes
    try:
        session_id = first.headers["Mcp-Session-Id"]
        ((page_id, selected),) = listed(await from_asyncio(first.tool("new_page", {"url": url})), url)
        assert selected
    finally:
        first.close()
    owner = (await cluster.owners(["state-drain"]))["state-drain"]
    drained = cluster.node_named(owner)
    stopping = Deferred.fromCoroutine(drained.terminate())
    survivors = [node.base_url for node in cluster.nodes if node is not drained]  # the balancer's view
    session = LeanStreamable(await from_asyncio(connect(survivors)), token)
    session.headers.update({"Mcp-Session-Id": session_id, "MCP-Protocol-Version": LeanStreamable.protocol_version})
    try:
        # The same session (no 404, no new initialize), the same page, still selected.
        listing = await from_asyncio(session.tool("list_pages", {}))
        assert listed(listing, url) == [(page_id, True)], listing
        assert session.headers["Mcp-Session-Id"] == session_id
        await stopping
        edge = next(index for index, node in enumerate(cluster.nodes) if node is not drained)
        assert (await cluster.owners(["state-drain"], node=edge))["state-drain"] != owner
        await from_asyncio(session.tool("close_page", {"pageId": page_id}))
    finally:
        session.close()
