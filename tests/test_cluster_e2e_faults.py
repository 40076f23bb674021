"""Cluster mode when things break (the test plan of the cluster design, C9, C12, C13, C15,
C16): an owner killed in the middle of a call, Redis gone for a moment or for good, a node cut
off from Redis, one node unable to reach another.

Each test starts its own three ``twistd mcproxy`` nodes on a Redis of their own, with the short
fault timers (`FAST_TIMERS`), and checks both what the cluster does and what the client sees.
Every process is started and stopped by its PID.
"""

import os

import pytest_twisted
from twisted.internet.defer import Deferred

from mcproxy.testing.cluster import (
    FAST_TIMERS,
    Cluster,
    ClusterNode,
    cluster_nodes,
    node_of,
    register_users,
    served_within_failover,
    started_cluster,
    text_of,
)
from mcproxy.testing.fake_cdp import HANG, FakeChrome
from mcproxy.testing.tool_calls import sleep, until

#: Seconds a busy machine may add to a bound the cluster promises (a bound, not a measure).
SLACK = 10.0


@pytest_twisted.async_yield_fixture()
async def relayed_cluster(reactor, tmp_path):
    """Three cluster nodes whose every link (to Redis, to each other) goes through a `Relay`."""
    running = await started_cluster(reactor, tmp_path, relayed=True)
    yield running
    await running.stop()


def other_than(cluster: Cluster, node: ClusterNode) -> int:
    """The index of a node that is not ``node``."""
    return next(index for index, each in enumerate(cluster.nodes) if each is not node)


def hang(chrome: FakeChrome, methods: set[str]) -> None:
    """Leave each command of ``methods`` unanswered while its name is in the set (the test
    empties it to let the browser answer again)."""
    for method in methods:
        answer = chrome.handlers.get(method, lambda params, session: {})
        chrome.handlers[method] = lambda params, session, m=method, a=answer: (
            HANG if m in methods else a(params, session)
        )


def healthy(node: ClusterNode):
    """A check for `until`: ``node``'s ``/health`` (code, body) once it answers 200."""

    async def check():
        code, body = await node.health()
        return (code, body) if code == 200 else None

    return check


async def health_of(cluster: Cluster) -> dict[str, tuple[int, str]]:
    """Each node's ``/health``: node id → (status code, status)."""
    seen = {}
    for node in cluster.nodes:
        code, health = await node.health()
        seen[node.node_id] = (code, health["status"] if health else "")
    return seen


# -- C9: the owner dies in the middle of a call ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_c9_calls_running_on_a_killed_owner_end_owner_lost_or_are_repeated_when_read_only(own_cluster, reactor):
    name = "c9-user"
    token, browser = (await register_users(own_cluster, [name]))[name]
    owner = own_cluster.node_named((await own_cluster.owners([name]))[name])
    edge = other_than(own_cluster, owner)
    chrome = browser.chrome
    hanging = {"Target.createTarget", "Target.getTargets"}
    hang(chrome, hanging)
    earlier = len(chrome.calls)
    # Both go through the edge to the owner, whose browser never answers them.
    changing = Deferred.fromCoroutine(own_cluster.proxy(edge).post_tool_call(token, "new_page", {"url": "about:blank"}))
    reading = Deferred.fromCoroutine(own_cluster.proxy(edge).post_tool_call(token, "list_pages", rid=2))
    await until(reactor, lambda: hanging <= set(chrome.methods()[earlier:]), 10, seen=chrome.methods)
    # Longer than the failover wait: the wait for a new owner counts from the loss, not the request.
    await sleep(reactor, FAST_TIMERS["failover_wait"])
    assert not changing.called and not reading.called
    await owner.kill()
    hanging.clear()
    bound = FAST_TIMERS["failover_wait"] + FAST_TIMERS["node_ttl"] + SLACK
    code, _, answer = await changing.addTimeout(bound, reactor)
    # It may have run: the model is told so, as a tool error it can act on.
    assert code == 200 and answer["id"] == 1 and answer["result"]["isError"], answer
    assert "may or may not have happened" in answer["result"]["content"][0]["text"], answer
    code, headers, answer = await reading.addTimeout(bound, reactor)
    assert code == 200 and text_of(answer).startswith("## Pages"), answer
    assert node_of(headers) != owner.node_id
    assert chrome.methods().count("Target.createTarget") == 1  # what changes something is never repeated
    assert len(browser.links()) == 2 and len(browser.connections) == 1


# -- C12, C13: Redis goes away --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_c12_redis_away_for_a_second_fences_nobody_and_moves_nobody(reactor, tmp_path):
    # A lease of 5 s outlasts the second without Redis and the control pool's reconnection.
    timers = {**FAST_TIMERS, "node_ttl": 5.0}
    cluster = await started_cluster(reactor, tmp_path, appendonly=True, cluster=timers)
    try:
        names = ["b-a", "b-b", "b-c"]
        users = await register_users(cluster, names)
        before = await cluster.owners(names)
        epochs = {node: entry["epoch"] for node, entry in (await cluster_nodes(cluster)).items()}
        statuses: set[tuple[int, str]] = set()

        async def healthy() -> bool:
            seen = await health_of(cluster)
            statuses.update(seen.values())
            return all(code == 200 for code, _ in seen.values())

        await cluster.redis.kill()
        away_until = reactor.seconds() + 1.0
        while reactor.seconds() < away_until:
            await healthy()
        await cluster.redis.restart()
        await until(reactor, healthy, 15, seen=lambda: statuses)
        # The store's failure may show meanwhile, the lease's never.
        assert statuses <= {(200, "ok"), (503, "store_unavailable")}, statuses
        for index, name in enumerate(names):
            answer, headers = await cluster.proxy(index).call_tool_with_headers(users[name][0], "list_pages")
            assert text_of(answer).startswith("## Pages") and node_of(headers) == before[name]
        assert await cluster.owners(names) == before
        assert {node: entry["epoch"] for node, entry in (await cluster_nodes(cluster)).items()} == epochs
        for name, (_, browser) in users.items():
            assert len(browser.links()) == 1 and len(browser.connections) == 1, name
    finally:
        await cluster.stop()


def admin_token_of(node: ClusterNode) -> str | None:
    """The admin token in ``node``'s data directory, if it wrote one."""
    path = os.path.join(node.root, "admin-token")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read().strip()


@pytest_twisted.ensureDeferred
async def test_c13_redis_back_empty_past_a_lease_each_node_takes_back_its_own_users(reactor, tmp_path):
    # The nodes re-register on their own once Redis is back; the grace must outlast that and
    # the operator's restore.
    grace = 8.0
    cluster = await started_cluster(reactor, tmp_path, cluster={"claim_grace": grace})
    try:
        names = ["e-a", "e-b", "e-c", "e-d"]
        users = await register_users(cluster, names)
        before = await cluster.owners(names)
        backup = await cluster.redis.dump("user", "users", "token", "tokens", "user-tokens")
        await cluster.redis.kill()
        statuses: dict = {}

        async def every_node(status: str, code: int) -> bool:
            statuses.update(await health_of(cluster))
            return all(seen == (code, status) for seen in statuses.values())

        await until(reactor, lambda: every_node("fenced", 503), FAST_TIMERS["node_ttl"] + SLACK, seen=lambda: statuses)
        code, headers, answer = await cluster.proxy(1).post_tool_call(users[names[0]][0], "list_pages")
        assert code == 503 and headers.getRawHeaders("Retry-After"), (code, answer)
        assert answer["error"]["code"] in ("store_unavailable", "coordination_unavailable"), answer
        # A fenced node lets go of every browser it held.
        for name, (_, browser) in users.items():
            await until(reactor, lambda b=browser: not b.connections, 10, what=f"{name}'s browser let go")

        await cluster.redis.restart()  # empty: no users, no tokens, no leases, no owners
        await until(reactor, lambda: every_node("ok", 200), 15, seen=lambda: statuses)
        assert (await cluster.api("GET", "/api/cluster"))[0] == 401  # the admin token went with the store
        # The node that found Redis empty made a new one, as on a first start.
        fresh = [token for token in map(admin_token_of, cluster.nodes) if token and token != cluster.admin_token]
        assert len(fresh) == 1, fresh
        code, view, _ = await cluster.api("GET", "/api/cluster", token=fresh[0])
        assert code == 200 and view["owners"] == {}, view
        assert all(not browser.connections for _, browser in users.values())

        # What the operator restores from a backup: the users (registered browsers) and their
        # tokens, the admin's included. Ownership is not restored: the nodes rebuild it.
        await cluster.redis.restore(backup)
        after = await cluster.owners(names, timeout=grace)
        assert after == before, (before, after)
        for index, (name, (token, browser)) in enumerate(users.items()):
            answer, headers = await cluster.proxy(index % 3).call_tool_with_headers(token, "list_pages")
            assert text_of(answer).startswith("## Pages") and node_of(headers) == before[name]
            assert len(browser.connections) == 1, name
        nodes: dict = {}

        async def each_held_once() -> bool:
            # Each process publishes how many users it holds with its lease, renewed every 0.4 s.
            nodes.update(await cluster_nodes(cluster))
            return sum(entry["stats"]["users"] for entry in nodes.values()) == len(names)

        await until(reactor, each_held_once, 10, seen=lambda: nodes)
    finally:
        await cluster.stop()


# -- C15, C16: partitions -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_c15_a_node_cut_off_from_redis_fences_itself_and_comes_back_owning_nothing(relayed_cluster, reactor):
    cluster = relayed_cluster
    names = ["f-a", "f-b", "f-c", "f-d"]
    users = await register_users(cluster, names)  # f-a and f-d through n1
    before = await cluster.owners(names)
    cut_off = cluster.nodes[0]
    theirs = [name for name, owner in before.items() if owner == cut_off.node_id]
    assert theirs, before
    old_links = {name: users[name][1].links()[0] for name in theirs}
    old_epoch = (await cluster_nodes(cluster, 1))[cut_off.node_id]["epoch"]

    cut_off.redis_relay.pause()  # silent: n1's Redis calls time out
    health: dict = {}

    async def fenced() -> bool:
        health["n1"] = await cut_off.health()
        return health["n1"][0] == 503 and health["n1"][1]["status"] == "fenced"

    await until(reactor, fenced, FAST_TIMERS["node_ttl"] + SLACK, seen=lambda: health)
    sent_by_then = {name: len(link.methods) for name, link in old_links.items()}  # past n1's deadline
    rehomed: dict = {}

    async def all_rehomed() -> bool:
        rehomed.update(await cluster.owners(theirs, node=1))
        return all(owner not in (None, cut_off.node_id) for owner in rehomed.values())

    await until(reactor, all_rehomed, FAST_TIMERS["node_ttl"] + SLACK, seen=lambda: rehomed)
    for name in theirs:
        _, ran_on = await served_within_failover(cluster, reactor, 2, users[name][0])
        assert ran_on == rehomed[name]
        await until(reactor, lambda n=name: old_links[n] not in users[n][1].connections, 10)

    cut_off.redis_relay.resume()
    seen: dict = {}

    async def back_without_users() -> bool:
        seen.update(await cluster_nodes(cluster, 1))
        entry = seen[cut_off.node_id]
        return entry["alive"] and entry["epoch"] != old_epoch and entry["stats"]["users"] == 0

    await until(reactor, back_without_users, 15, seen=lambda: seen.get(cut_off.node_id))
    _, body = await until(reactor, healthy(cut_off), 10)
    assert body["ownedUsers"] == 0, body
    # Through n1 again: forwarded to the new owners, which keep their users.
    for name in theirs:
        _, ran_on = await served_within_failover(cluster, reactor, 0, users[name][0])
        assert ran_on == rehomed[name]
    assert await cluster.owners(names) == {**before, **rehomed}
    for name in theirs:
        assert old_links[name].methods[sent_by_then[name] :] == [], (
            f"n1 sent CDP commands for {name} after the takeover"
        )
    for name, (_, browser) in users.items():
        assert len(browser.connections) == 1, name


@pytest_twisted.ensureDeferred
async def test_c16_a_node_that_cannot_reach_an_owner_refuses_and_nobody_takes_the_user(relayed_cluster, reactor):
    cluster = relayed_cluster
    name = "g-a"
    token, browser = (await register_users(cluster, [name]))[name]  # through n1, which owns it
    n1, n2, _ = cluster.nodes
    assert await cluster.owners([name]) == {name: n1.node_id}
    cluster.link(n2, n1).cut()  # n2 → n1 only: n3 reaches n1, n1 reaches everyone

    started = reactor.seconds()
    refused = Deferred.fromCoroutine(cluster.proxy(1).post_tool_call(token, "list_pages"))
    code, headers, answer = await refused.addTimeout(FAST_TIMERS["failover_wait"] + SLACK, reactor)
    assert reactor.seconds() - started >= FAST_TIMERS["failover_wait"]  # it waited for the owner first
    assert code == 503 and answer["error"]["code"] == "owner_unreachable", (code, answer)
    assert headers.getRawHeaders("Retry-After") == ["2"]
    answer, headers = await cluster.proxy(2).call_tool_with_headers(token, "list_pages")
    assert text_of(answer).startswith("## Pages") and node_of(headers) == n1.node_id
    # Unreachable from one node is not gone: nobody claims the user, its browser stays put.
    for node in range(3):
        assert await cluster.owners([name], node=node) == {name: n1.node_id}
    assert len(browser.links()) == 1 and len(browser.connections) == 1
    # The user list through n2 cannot ask n1 how the browser is, and says so; n3 can.
    for node, seen, error in ((1, "unknown", f"process {n1.node_id}"), (2, "connected", "")):
        code, listing, _ = await cluster.api("GET", "/api/users", node=node)
        (row,) = [row for row in listing["users"] if row["userId"] == name]
        assert code == 200 and row["node"] == n1.node_id and row["browserStatus"] == seen, row
        assert error in (row["lastError"] or ""), row

    await cluster.link(n2, n1).heal()
    answer, headers = await cluster.proxy(1).call_tool_with_headers(token, "list_pages")
    assert text_of(answer).startswith("## Pages") and node_of(headers) == n1.node_id
