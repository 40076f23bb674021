"""Artifacts in a cluster end to end (design §3.10, test C7): three real ``twistd mcproxy``
nodes on a Redis of their own and real Chromium, every request sent to another node than
the one before. A screenshot saved on its user's owner stays listed and readable when the
user moves: fetched from the process that holds it while that process runs, read from
``artifacts.shared_dir`` even once it is gone, and "Resource not found" without either.
Every process is started and stopped by its PID.
"""

import base64
import re

import pytest_twisted

from mcproxy.testing.cluster import Cluster, ClusterNode, started_cluster
from mcproxy.testing.tool_calls import until

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WAIT = 30.0
"""Seconds a step may take before the test gives up (a bound, not a measure)."""


class Client:
    """One user's stateless requests, each sent to the running node after the one before."""

    def __init__(self, cluster: Cluster, token: str):
        self.cluster = cluster
        self.token = token
        self.turn = 0
        self.rid = 0
        #: The node each request went to, by its id, and the node that ran it.
        self.sent: list[tuple[str, str]] = []

    async def request(self, method: str, params: dict, *, avoid: ClusterNode | None = None) -> dict:
        nodes = [node for node in self.cluster.nodes if node is not avoid and node.running]
        node = nodes[self.turn % len(nodes)]
        self.turn += 1
        self.rid += 1
        proxy = self.cluster.proxy(self.cluster.nodes.index(node))
        answer, headers = await proxy.request_with_headers(self.token, method, params, self.rid)
        self.sent.append((node.node_id, (headers.getRawHeaders("X-MCProxy-Node") or ["?"])[0]))
        return answer

    async def tool(self, name: str, arguments: dict) -> str:
        answer = await self.request("tools/call", {"name": name, "arguments": arguments})
        assert "result" in answer and not answer["result"].get("isError"), answer
        return "\n".join(block.get("text", "") for block in answer["result"]["content"])

    async def screenshot(self, url: str) -> str:
        """Open ``url`` and save a screenshot of it as an artifact: its URI."""
        opened = await self.tool("new_page", {"url": url})
        page_id = re.search(rf"^(\d+): .*\({re.escape(url)}\)", opened, re.M)
        assert page_id, opened
        saved = await self.tool("take_screenshot", {"pageId": int(page_id.group(1)), "filePath": "shots/c7.png"})
        uri = re.search(r"saved as (mcproxy://artifacts/[0-9a-f]{32})", saved)
        assert uri, saved
        return uri.group(1)

    async def listed(self) -> list[dict]:
        answer = await self.request("resources/list", {})
        assert "result" in answer, answer
        return answer["result"]["resources"]

    async def read(self, uri: str, **where) -> dict:
        return await self.request("resources/read", {"uri": uri}, **where)


def png_of(answer: dict) -> bytes:
    assert "result" in answer, answer
    (contents,) = answer["result"]["contents"]
    data = base64.b64decode(contents["blob"])
    assert contents["mimeType"] == "image/png" and data.startswith(PNG_SIGNATURE), contents["mimeType"]
    return data


async def saved_on_owner(cluster: Cluster, chromium, fixture_site, user: str) -> tuple[Client, ClusterNode, str, bytes]:
    """``user`` registered with real Chromium and a screenshot saved on its owner, read back
    through a node that is not the owner: (client, owner, URI, bytes)."""
    token = await cluster.token_for(user)
    client = Client(cluster, token)
    await cluster.register(user, chromium.browser_url, token, node=1)
    owner = cluster.node_named((await cluster.owners([user]))[user])
    uri = await client.screenshot(fixture_site.url(f"index.html?{user}"))
    assert [ran for _, ran in client.sent] == [owner.node_id] * 2, client.sent
    answer = await client.read(uri, avoid=owner)
    assert client.sent[-1][0] != owner.node_id and client.sent[-1][1] == owner.node_id, client.sent
    return client, owner, uri, png_of(answer)


async def drained(cluster: Cluster, owner: ClusterNode, user: str) -> ClusterNode:
    """SIGTERM ``owner`` (a graceful drain) and wait until another node owns ``user``: that node."""
    assert await owner.terminate() is not None
    edge = next(index for index, node in enumerate(cluster.nodes) if node is not owner)
    seen: dict = {}

    async def moved() -> bool:
        seen.update(await cluster.owners(node=edge))
        return seen.get(user) not in (None, owner.node_id)

    await until(cluster.reactor, moved, WAIT, seen=lambda: seen)
    return cluster.node_named(seen[user])


@pytest_twisted.ensureDeferred
async def test_c7_an_artifact_is_fetched_from_its_live_holder_and_not_found_once_it_is_gone(
    reactor, tmp_path, chromium, fixture_site
):
    cluster = await started_cluster(reactor, tmp_path)
    try:
        client, holder, uri, data = await saved_on_owner(cluster, chromium, fixture_site, "c7-hop")
        new_owner = await drained(cluster, holder, "c7-hop")

        # The holder is gone: still listed (its record lives until it expires), but unreadable.
        listed = await client.listed()
        assert [(r["uri"], r["name"], r["size"]) for r in listed] == [(uri, "shots/c7.png", len(data))]
        answer = await client.read(uri)
        assert answer["error"]["message"] == f"Resource not found: {uri}", answer
        assert client.sent[-1][1] == new_owner.node_id
        await until(reactor, lambda: any("which is gone" in line for line in new_owner.lines), WAIT)

        # The holder is back (its files and sidecars are where it left them): the new owner
        # fetches the file from it over the internal hop.
        await holder.start()
        assert png_of(await client.read(uri, avoid=new_owner)) == data
        assert client.sent[-1][1] == new_owner.node_id, client.sent

        # The hop is the internal listener's alone.
        code, body, _ = await cluster.proxy(0).api("GET", "/_cluster/artifacts/" + uri.rsplit("/", 1)[1])
        assert code == 404 and body["error"]["code"] == "not_found", body
    finally:
        await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_c7_with_a_shared_dir_an_artifact_outlives_the_process_that_saved_it(
    reactor, tmp_path, chromium, fixture_site
):
    shared = tmp_path / "shared"
    cluster = await started_cluster(reactor, tmp_path / "cluster", artifacts={"shared_dir": str(shared)})
    try:
        client, holder, uri, data = await saved_on_owner(cluster, chromium, fixture_site, "c7-shared")
        assert (shared / holder.node_id).is_dir()
        new_owner = await drained(cluster, holder, "c7-shared")

        assert [r["uri"] for r in await client.listed()] == [uri]
        assert png_of(await client.read(uri)) == data
        assert client.sent[-1][1] == new_owner.node_id

        # Saved again under its name by the new owner: the old file's record is replaced, and
        # the old one goes with the next sweep of the process that wrote it.
        new_uri = await client.screenshot(fixture_site.url("index.html?again"))
        assert [r["uri"] for r in await client.listed()] == [new_uri]
        answer = await client.read(uri)
        assert answer["error"]["message"] == f"Resource not found: {uri}", answer
        assert png_of(await client.read(new_uri)).startswith(PNG_SIGNATURE)
    finally:
        await cluster.stop()
