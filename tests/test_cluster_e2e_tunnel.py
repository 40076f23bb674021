"""A browser's tunnel in a cluster: the process ``mcproxy-connect`` reaches becomes its user's
owner (the tunnel pulls the user), every other process forwards to it, and a user moved away
from its tunnel comes back with it (test C18 of the cluster design). Three real ``twistd``
nodes, a real headless Chromium behind ``mcproxy-connect``, the official MCP SDK client.
"""

import pytest_twisted

from mcproxy.testing.cluster import node_of, text_of
from mcproxy.testing.tool_calls import until
from mcproxy.testing.tunnel import check_core_flow, core_flow

USER = "tunnelled"


async def owner_is(reactor, cluster, node_id: str) -> None:
    """Wait until every process names ``node_id`` as the user's owner."""
    seen: dict = {}

    async def owned() -> bool:
        for node in range(len(cluster.nodes)):
            seen[node] = (await cluster.owners([USER], node=node))[USER]
        return all(owner == node_id for owner in seen.values())

    await until(reactor, owned, 30, seen=lambda: seen, what=f"{USER} owned by {node_id}")


async def served_by(cluster, token: str, node_id: str) -> None:
    """A call through every process is run by ``node_id``."""
    for node in range(len(cluster.nodes)):
        answer, headers = await cluster.proxy(node).call_tool_with_headers(token, "list_pages")
        assert text_of(answer).startswith("## Pages") and node_of(headers) == node_id, (node, answer)


@pytest_twisted.ensureDeferred
async def test_c18_a_tunnel_pulls_its_user_to_the_process_it_reached(
    reactor, own_cluster, connects, chromium, fixture_site
):
    cluster = own_cluster
    n1, n2, n3 = cluster.nodes
    token = await cluster.token_for(USER)  # tools and register (which lets a tunnel in)
    await cluster.register(USER, "tunnel:", token, node=0)  # n1 owns the user; no tunnel yet
    await owner_is(reactor, cluster, n1.node_id)

    client = connects(n2.base_url, token, "--browser-url", chromium.browser_url)
    await client.tunnel_up()
    await owner_is(reactor, cluster, n2.node_id)  # n1 handed the user to the tunnel's process
    status = await until(reactor, lambda: connected_status(cluster, 0), 30, what="the browser connected")
    assert status["node"] == n2.node_id and status["browserURL"] == "tunnel:127.0.0.1", status
    await served_by(cluster, token, n2.node_id)
    check_core_flow(await core_flow(n1.base_url, token, fixture_site.url("index.html")))  # forwarded to n2

    # An operator moves the user away from its tunnel: the tunnel closes, mcproxy-connect
    # comes back to the process it dials, and pulls the user back there.
    back = client.line_with("connected to")
    code, moved, _ = await cluster.api("POST", f"/api/users/{USER}/move", {"node": n3.node_id}, node=2)
    assert code == 200 and moved["from"] == n2.node_id, moved
    await back
    await owner_is(reactor, cluster, n2.node_id)
    await until(reactor, lambda: connected_status(cluster, 2), 30, what="the browser connected again")

    # The client stops; started again against n3, the user follows it there.
    await client.kill()
    again = connects(n3.base_url, token, "--browser-url", chromium.browser_url)
    await again.tunnel_up()
    await owner_is(reactor, cluster, n3.node_id)
    await until(reactor, lambda: connected_status(cluster, 1), 30, what="the browser connected through n3")
    await served_by(cluster, token, n3.node_id)


async def connected_status(cluster, node: int) -> dict | None:
    """The user's status through ``node`` once its browser is connected, else None."""
    code, status, _ = await cluster.api("GET", f"/api/users/{USER}/status", node=node)
    assert code == 200, status
    return status if status["browserStatus"] == "connected" else None
