"""A browser the proxy launches, in a cluster: it runs on the host of the process that serves
its user, every other process forwards to it, and it moves with the user. Three real
``twistd`` nodes, real headless Chromium started by them over ``--remote-debugging-pipe``."""

import pytest_twisted

from mcproxy.testing.chromium import CONTAINER_ARGS, find_chrome
from mcproxy.testing.cluster import node_of, started_cluster, text_of
from mcproxy.testing.procfs import launched_browser
from mcproxy.testing.tool_calls import until

USER = "launched"


def browser_of(node) -> int | None:
    """The PID of the Chromium ``node`` launched for the user (None: none runs there)."""
    return launched_browser(node.pid, node.root, USER)


@pytest_twisted.ensureDeferred
async def test_a_launched_browser_runs_where_its_user_is_served_and_moves_with_it(reactor, tmp_path):
    launch = {"enabled": True, "chromium": find_chrome(), "args": list(CONTAINER_ARGS), "idle_timeout": 0}
    cluster = await started_cluster(reactor, tmp_path, launch=launch)
    try:
        token = await cluster.token_for(USER, "tools:*", "register", "launch")
        code, body, _ = await cluster.api("POST", "/api/register", {"userId": USER, "launch": True}, token, node=1)
        assert code == 201, body
        owner = cluster.node_named((await cluster.owners([USER]))[USER])
        await until(reactor, lambda: browser_of(owner) is not None, 30, what="the owner's Chromium")
        for node in range(3):
            answer, headers = await cluster.proxy(node).call_tool_with_headers(token, "list_pages")
            assert text_of(answer).startswith("## Pages") and node_of(headers) == owner.node_id, answer
        assert [browser_of(node) is not None for node in cluster.nodes].count(True) == 1

        to = next(node for node in cluster.nodes if node is not owner)
        code, moved, _ = await cluster.api("POST", f"/api/users/{USER}/move", {"node": to.node_id})
        assert code == 200 and moved["node"] == to.node_id, moved
        await until(reactor, lambda: browser_of(owner) is None, 30, what="the old owner's Chromium stopped")
        answer, headers = await cluster.proxy(0).call_tool_with_headers(token, "list_pages")
        assert text_of(answer).startswith("## Pages") and node_of(headers) == to.node_id, answer
        assert browser_of(to) is not None and [browser_of(node) is not None for node in cluster.nodes].count(True) == 1
    finally:
        await cluster.stop()
