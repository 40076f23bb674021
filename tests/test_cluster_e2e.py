"""Cluster mode end to end: three real ``twistd mcproxy`` nodes on one Redis of their own,
clients rotating over the nodes as a round-robin balancer would (the test plan of the
cluster design, tests C1-C4, C8, C10, C11, C14, C17, C20, and moves).

The nodes run the short fault timers (`FAST_TIMERS`). One cluster serves the module;
tests that kill a node start their own. Every process is started and stopped by its PID.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import re

import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock, deferLater

from bench.lean_mcp import LeanLegacySse, LeanStreamable
from mcproxy.testing.cluster import (
    FAST_TIMERS,
    Cluster,
    RedisServer,
    cluster_nodes,
    node_of,
    register_users,
    served_within_failover,
    started_cluster,
    text_of,
)
from mcproxy.testing.tool_calls import until


def from_asyncio(coroutine) -> Deferred:
    """Await an asyncio coroutine (the lean clients) from a Twisted test."""
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


@pytest_twisted.async_yield_fixture(scope="module")
async def cluster(reactor, tmp_path_factory):
    """Three cluster nodes shared by the tests that kill nothing. Their rate limits are
    shared, so a test's hundred quick requests would outrun the default user limit."""
    unlimited = {"user_rate": 1000.0, "user_burst": 1000}
    running = await started_cluster(reactor, tmp_path_factory.mktemp("cluster"), ratelimit=unlimited)
    yield running
    await running.stop()


# -- The harness itself, on what runs today: plain nodes sharing a Redis store -----------------


@pytest_twisted.ensureDeferred
async def test_harness_runs_three_plain_nodes_sharing_users_and_tokens(reactor, tmp_path):
    cluster = await started_cluster(reactor, tmp_path, enabled=False)
    try:
        assert len({node.pid for node in cluster.nodes}) == 3
        token = await cluster.token_for("alice")
        browser = cluster.fake_browser()
        await cluster.register("alice", browser.url, token, node=0)
        for node in (1, 2):
            code, body, _ = await cluster.api("GET", "/api/users/alice/status", token=token, node=node)
            assert code == 200 and body["userId"] == "alice", body
            answer = await cluster.proxy(node).call_tool(token, "list_pages")
            assert text_of(answer).startswith("## Pages")
        code, _, _ = await cluster.api("GET", "/api/users/alice/status", token="not-a-token", node=2)
        assert code == 401
        assert [cluster.next_url() for _ in range(4)] == cluster.base_urls + cluster.base_urls[:1]
        victim = cluster.nodes[1]
        victim.pause()
        await victim.kill()  # a paused process dies too
        assert isinstance(victim.exit_reason, ProcessTerminated) and victim.exit_reason.signal == 9
        assert (await cluster.nodes[2].health())[0] == 200
    finally:
        await cluster.stop()
    assert not any(node.running for node in cluster.nodes) and not cluster.redis.running


@pytest_twisted.ensureDeferred
async def test_harness_redis_restarts_on_its_port_with_its_data_when_appendonly(reactor, tmp_path):
    from txredisapi import Connection

    redis = RedisServer(reactor, tmp_path, appendonly=True)
    await redis.start()
    try:
        client = await Connection("127.0.0.1", redis.port, reconnect=False)
        await client.set("harness", "kept")
        await client.disconnect()
        await redis.kill()
        assert isinstance(redis.exit_reason, ProcessTerminated) and redis.exit_reason.signal == 9
        await redis.restart()
        client = await Connection("127.0.0.1", redis.port, reconnect=False)
        assert await client.get("harness") == "kept"
        await client.disconnect()
    finally:
        await redis.close()
    assert not redis.running


@pytest_twisted.ensureDeferred
async def test_harness_relays_partition_a_node_from_redis(reactor, tmp_path):
    cluster = await started_cluster(reactor, tmp_path, size=2, enabled=False, relayed=True)
    try:
        relay = cluster.nodes[1].redis_relay
        assert relay.connections, "the node's store does not go through its relay"

        async def token_made(node: int) -> bool:
            code, _, _ = await cluster.api("POST", "/api/tokens", {"userId": "bob", "permissions": []}, node=node)
            return code == 201

        relay.pause()
        made = Deferred.fromCoroutine(token_made(1))
        await until(reactor, lambda: relay.held, 10)  # the write reached the partition and stopped there
        assert not made.called
        assert await token_made(0)  # the other node's link is whole
        relay.resume()
        assert await made
        relay.cut()
        await until(reactor, lambda: not relay.connections, 10)
        await relay.heal()
        await until(reactor, lambda: token_made(1), 30)
    finally:
        await cluster.stop()


# -- Clients see one server ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_c1_legacy_sse_posts_rotated_over_the_nodes_answer_on_the_stream_in_order(cluster):
    token = await cluster.token_for("c1-user")
    await cluster.register("c1-user", cluster.fake_browser().url, token)
    session = await from_asyncio(LeanLegacySse.open(cluster.base_urls, token))
    try:
        statuses = []
        for number in range(100):
            method = "ping" if number % 2 else "tools/list"
            message = json.dumps({"jsonrpc": "2.0", "id": 1000 + number, "method": method, "params": {}}).encode()
            status, _, body = await from_asyncio(
                session.poster.request("POST", session.endpoint, session.headers, message)
            )
            statuses.append((status, body[:200]))
        assert [status for status, _ in statuses] == [202] * 100, [s for s in statuses if s[0] != 202][:5]
        answers = []
        while len(answers) < 100:
            event, data = await from_asyncio(session.stream.next_event(timeout=10))
            if event == "message":
                answers.append(json.loads(data))
        assert [answer["id"] for answer in answers] == list(range(1000, 1100))
        assert all("result" in answer for answer in answers), [a for a in answers if "result" not in a][:3]
        assert all(len(answer["result"]["tools"]) > 10 for answer in answers[::2]), "tools/list answers lack tools"
    finally:
        session.close()


@pytest_twisted.ensureDeferred
async def test_c2_streamable_session_from_n1_serves_requests_rotated_over_the_nodes(cluster):
    token = await cluster.token_for("c2-user")
    await cluster.register("c2-user", cluster.fake_browser().url, token)
    session = await from_asyncio(LeanStreamable.open(cluster.base_urls, token))  # initialize on n1
    try:
        session_id = session.headers["Mcp-Session-Id"]
        for number in range(100):
            if number % 2:
                assert await from_asyncio(session.call("ping", {})) == {}
            else:
                result = await from_asyncio(session.call("tools/list", {}))
                assert any(tool["name"] == "list_pages" for tool in result["tools"])
        assert session.headers["Mcp-Session-Id"] == session_id
    finally:
        session.close()


async def new_page(cluster: Cluster, token: str, node: int, url: str) -> tuple[int, str]:
    """Open ``url`` through node ``node`` (stateless): (its pageId, the node that ran it)."""
    answer, headers = await cluster.proxy(node).call_tool_with_headers(token, "new_page", {"url": url})
    found = re.search(rf"^(\d+): .*\({re.escape(url)}\)", text_of(answer), re.M)
    assert found, text_of(answer)
    return int(found.group(1)), node_of(headers)


@pytest_twisted.ensureDeferred
async def test_c3_stateless_page_ids_address_the_same_tab_through_every_node(cluster, chromium, fixture_site):
    token = await cluster.token_for("c3-user")
    await cluster.register("c3-user", chromium.browser_url, token, node=1)
    url = fixture_site.url("index.html?c3")
    page_id, owner = await new_page(cluster, token, 1, url)
    try:
        for node in (2, 0):
            proxy = cluster.proxy(node)
            listed, headers = await proxy.call_tool_with_headers(token, "list_pages", {}, rid=2)
            assert re.search(rf"^{page_id}: .*\({re.escape(url)}\)", text_of(listed), re.M), text_of(listed)
            assert node_of(headers) == owner
            snapshot, headers = await proxy.call_tool_with_headers(token, "take_snapshot", {"pageId": page_id}, rid=3)
            assert text_of(snapshot) and node_of(headers) == owner
            where, headers = await proxy.call_tool_with_headers(
                token, "evaluate_script", {"pageId": page_id, "function": "() => location.href"}, rid=4
            )
            assert url in text_of(where) and node_of(headers) == owner
    finally:
        await cluster.proxy(0).call_tool(token, "close_page", {"pageId": page_id}, rid=5)


# -- Ownership: one CDP connection per browser ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_c4_each_registered_browser_has_exactly_one_connection_across_the_cluster(cluster):
    names = ["c4-a", "c4-b", "c4-c"]
    users = await register_users(cluster, names)
    owners = await cluster.owners(names)
    assert set(owners.values()) <= {"n1", "n2", "n3"}
    # Every node serves every user once: a node that connected by itself would show here.
    for name, (token, browser) in users.items():
        for node in range(3):
            answer, headers = await cluster.proxy(node).call_tool_with_headers(token, "list_pages", {})
            assert text_of(answer).startswith("## Pages") and node_of(headers) == owners[name]
        assert len(browser.links()) == 1 and len(browser.connections) == 1, (name, len(browser.links()))
    nodes = await cluster_nodes(cluster, 2)
    assert sorted(nodes) == ["n1", "n2", "n3"]
    assert all(entry["alive"] and not entry["draining"] for entry in nodes.values()), nodes
    assert await cluster.owners(names, node=2) == owners
    for name, (token, _) in users.items():
        code, status, _ = await cluster.api("GET", f"/api/users/{name}/status", token=token, node=1)
        assert code == 200 and status["node"] == owners[name], status
    for node in cluster.nodes:
        code, health = await node.health()
        assert code == 200 and health["node"] == node.node_id, health


@pytest_twisted.ensureDeferred
async def test_c4_a_restarted_cluster_connects_each_registered_browser_once(own_cluster, reactor):
    names = ["r-a", "r-b", "r-c"]
    users = await register_users(own_cluster, names)
    await own_cluster.owners(names)
    for node in own_cluster.nodes:
        await node.kill()
    await until(reactor, lambda: all(not browser.connections for _, browser in users.values()), 10)
    # The users are in Redis before any node starts: today every node connects to each.
    await own_cluster.start_nodes()
    owners = await own_cluster.owners(names)
    for name, (token, browser) in users.items():
        answer, headers = await own_cluster.proxy(2).call_tool_with_headers(token, "list_pages", {})
        assert text_of(answer) and node_of(headers) == owners[name]
        assert len(browser.links()) == 2 and len(browser.connections) == 1, (name, len(browser.links()))


# -- Failures ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_c8_a_killed_owners_user_is_served_by_a_new_owner(own_cluster, reactor):
    names = ["k-a", "k-b", "k-c", "k-d"]
    users = await register_users(own_cluster, names)
    owners = await own_cluster.owners(names)
    victim_user = names[0]
    victim = own_cluster.node_named(owners[victim_user])
    token, browser = users[victim_user]
    assert len(browser.links()) == 1
    await victim.kill()
    await until(reactor, lambda: not browser.connections, 10)  # the old CDP connection dropped
    edge = next(index for index, node in enumerate(own_cluster.nodes) if node is not victim)
    # Held at the edge until a new owner is found, then served: not failed.
    _, new_owner = await served_within_failover(own_cluster, reactor, edge, token)
    assert new_owner != victim.node_id and new_owner in {"n1", "n2", "n3"}
    assert len(browser.links()) == 2 and len(browser.connections) == 1
    after = await own_cluster.owners(names, node=edge)
    assert after[victim_user] == new_owner
    survivors = {name: owner for name, owner in owners.items() if owner != victim.node_id}
    assert {name: after[name] for name in survivors} == survivors
    for name in survivors:
        assert len(users[name][1].links()) == 1, name


@pytest_twisted.ensureDeferred
async def test_c11_a_drained_owners_users_are_handed_over_with_no_failed_request(own_cluster, reactor):
    names = ["d-a", "d-b", "d-c"]
    users = await register_users(own_cluster, names)
    owners = await own_cluster.owners(names)
    drained = own_cluster.node_named(owners["d-a"])
    survivors = [index for index, node in enumerate(own_cluster.nodes) if node is not drained]  # the balancer's view
    moved = [name for name in names if owners[name] == drained.node_id]
    answers: list[tuple[str, str]] = []  # (user, node that ran it), in order
    draining = True

    async def calls(name: str) -> None:
        token = users[name][0]
        while draining:
            # A stateless loop of about 20 calls per second per user, rotating over the survivors.
            _, node = await served_within_failover(own_cluster, reactor, survivors[len(answers) % 2], token)
            answers.append((name, node))
            await deferLater(reactor, 0.05, lambda: None)

    loops = [Deferred.fromCoroutine(calls(name)) for name in moved]
    await until(reactor, lambda: len(answers) >= 10, what="calls before the drain")
    stopping = Deferred.fromCoroutine(drained.terminate())
    await stopping
    after = len(answers)
    await until(reactor, lambda: len(answers) >= after + 10, what="calls after the drain")
    draining = False
    for loop in loops:
        await loop  # every call answered: served_within_failover fails on any error
    assert {node for name, node in answers[after:]} <= {own_cluster.nodes[i].node_id for i in survivors}
    final = await own_cluster.owners(names, node=survivors[0])
    assert all(final[name] != drained.node_id for name in names), final
    for name in names:
        await until(reactor, lambda b=users[name][1]: len(b.connections) == 1, 10)


@pytest_twisted.ensureDeferred
async def test_c10_a_paused_owner_sends_nothing_after_the_takeover_and_comes_back_empty(own_cluster, reactor):
    names = ["p-a", "p-b", "p-c"]
    users = await register_users(own_cluster, names)
    owners = await own_cluster.owners(names)
    paused_user = names[0]
    paused = own_cluster.node_named(owners[paused_user])
    token, browser = users[paused_user]
    [old_link] = browser.links()
    edge = next(index for index, node in enumerate(own_cluster.nodes) if node is not paused)
    old_epoch = (await cluster_nodes(own_cluster, edge))[paused.node_id]["epoch"]
    paused.pause()
    try:
        # Held while the paused owner's lease runs out, then served by a new owner.
        _, new_owner = await served_within_failover(own_cluster, reactor, edge, token)
        assert new_owner != paused.node_id
        assert len(browser.links()) == 2
        commands_at_takeover = len(old_link.methods)
    finally:
        paused.resume()
    seen: dict = {}

    async def back_with_a_new_epoch_and_no_users() -> bool:
        seen.update(await cluster_nodes(own_cluster, edge))
        entry = seen[paused.node_id]
        return entry["alive"] and entry["epoch"] != old_epoch and entry["stats"]["users"] == 0

    await until(reactor, back_with_a_new_epoch_and_no_users, 15, seen=lambda: seen.get(paused.node_id))
    # Through the node that was paused: forwarded to the new owner.
    _, ran_on = await served_within_failover(own_cluster, reactor, own_cluster.nodes.index(paused), token)
    assert ran_on == new_owner
    await until(reactor, lambda: old_link not in browser.connections, 10)
    assert old_link.methods[commands_at_takeover:] == [], "the fenced node sent CDP commands after the takeover"
    assert len(browser.links()) == 2
    after = await own_cluster.owners(names)
    assert paused.node_id not in after.values(), after


@pytest_twisted.ensureDeferred
async def test_c17_a_second_process_with_a_node_id_in_use_refuses_to_start(cluster):
    duplicate = cluster.spare_node("n1")
    duplicate.spawn()
    try:
        reason = await duplicate.exited(2 * FAST_TIMERS["node_ttl"] + 15)
    finally:
        await duplicate.close()  # never two n1 for the tests that follow
    assert isinstance(reason, ProcessTerminated) and reason.exitCode, (reason, duplicate.tail())
    assert any("cluster.node_id" in line for line in duplicate.lines), duplicate.tail()  # message or traceback
    code, health = await cluster.nodes[0].health()
    assert code == 200 and health["node"] == "n1"


# -- The internal listener -----------------------------------------------------------------------


def resealed(value: bytes, secret: bytes | None, **changes) -> bytes:
    """An envelope with ``changes`` to its fields, signed with ``secret`` (None: the old MAC kept)."""
    version, payload, mac = value.split(b".")
    fields = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    fields.update(changes)
    payload = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=")
    if secret is not None:
        mac = base64.urlsafe_b64encode(hmac.digest(secret, payload, hashlib.sha256)).rstrip(b"=")
    return b".".join((version, payload, mac))


@pytest_twisted.ensureDeferred
async def test_c20_the_internal_listener_runs_only_requests_with_a_valid_envelope(cluster, reactor):
    from mcproxy.auth.principal import Principal
    from mcproxy.cluster.envelope import HEADER, Envelope

    name = "c20-user"
    token, browser = (await register_users(cluster, [name]))[name]
    owner_id = (await cluster.owners([name]))[name]
    owner = cluster.node_named(owner_id)
    edge_id = next(node.node_id for node in cluster.nodes if node is not owner)
    secret = cluster.secret.encode()
    principal = Principal(user_id=name, permissions=frozenset({"tools:*"}))

    def message(rid: int) -> bytes:
        params = {
            "name": "new_page",
            # FakeChrome never reports a load: the call opens the tab, then gives up waiting.
            "arguments": {"url": "about:blank#c20", "timeout": 500},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        }
        return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}).encode()

    def sealed(body: bytes, *, key: bytes = secret, clock=reactor) -> bytes:
        return Envelope(key, edge_id, clock).seal(
            to=owner_id, principal=principal, client="127.0.0.1", method=b"POST", path=b"/mcp", body=body, rid="c20"
        )

    async def post(body: bytes, envelope: bytes | None, path: str = "/mcp"):
        headers = {
            "Authorization": f"Bearer {token}",  # a valid token is no envelope
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "new_page",
        }
        if envelope is not None:
            headers[HEADER.decode()] = envelope.decode()
        response = await treq.post(owner.internal_url + path, body, headers=headers, persistent=False)
        content = await response.content()
        return response.code, json.loads(content) if content else None

    def created() -> int:
        return browser.chrome.methods().count("Target.createTarget")

    stale = Clock()
    stale.advance(reactor.seconds() - 120)
    body = message(1)
    good = sealed(body)
    refused = {
        "missing": (body, None, "/mcp"),
        "malformed": (body, b"v1.not-an-envelope", "/mcp"),
        "wrong secret": (body, sealed(body, key=b"x" * 40), "/mcp"),
        "tampered body": (message(2), good, "/mcp"),
        "tampered user": (body, resealed(good, None, user="someone-else"), "/mcp"),
        "tampered path": (body, good, "/mcp?tampered=1"),
        "stale": (body, sealed(body, clock=stale), "/mcp"),
        "second hop": (body, resealed(good, secret, hop=2), "/mcp"),
        "other node": (body, resealed(good, secret, to=edge_id), "/mcp"),
    }
    for case, (sent, envelope, path) in refused.items():
        code, answer = await post(sent, envelope, path)
        assert code == 401 and answer["error"]["code"] == "forged_forward", (case, code, answer)
    assert created() == 0
    # The control: the same request with its envelope intact runs, once; a replay does not.
    code, answer = await post(body, good)
    assert code == 200 and answer["id"] == 1 and "result" in answer, answer
    assert created() == 1
    code, answer = await post(body, good)
    assert code in (401, 409), (code, answer)
    assert created() == 1


# -- Redis goes away ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_c14_redis_down_past_a_lease_fences_every_node_and_its_return_needs_no_restart(reactor, tmp_path):
    # Once Redis is back, each process notices on its own (a reconnect, a renewal tick), later
    # on a busy machine: the default grace (10 s) lets the last one back find its users still
    # waiting for it. The test waits that long only if a process is that late.
    grace = 10.0
    cluster = await started_cluster(reactor, tmp_path, appendonly=True, cluster={"claim_grace": grace})
    try:
        names = ["r-a", "r-b", "r-c"]
        users = await register_users(cluster, names)
        before = await cluster.owners(names)
        token = users["r-a"][0]
        await cluster.redis.kill()
        statuses: dict = {}

        async def every_node_fenced() -> bool:
            # The store's failure shows first (store_unavailable), the lease's once it ran out.
            statuses.update({node.node_id: await node.health() for node in cluster.nodes})
            return all(code == 503 and health["status"] == "fenced" for code, health in statuses.values())

        await until(reactor, every_node_fenced, FAST_TIMERS["node_ttl"] + 10, seen=lambda: statuses)
        code, headers, answer = await cluster.proxy(1).post_tool_call(token, "list_pages")
        assert code == 503 and headers.getRawHeaders("Retry-After"), (code, answer)
        assert answer["error"]["code"] in ("store_unavailable", "coordination_unavailable"), answer
        await cluster.redis.restart()
        served: dict = {}

        async def served_again() -> bool:
            served["answer"] = await cluster.proxy(1).post_tool_call(token, "list_pages")
            return served["answer"][0] == 200

        await until(reactor, served_again, grace + 15, seen=lambda: served)
        assert text_of(served["answer"][2]).startswith("## Pages")
        after = await cluster.owners(names)
        # Each node took its own users back (the logs say when each one came back, if not).
        assert after == before, (before, after, {node.node_id: node.tail(12) for node in cluster.nodes})
        for name, (_, user_browser) in users.items():
            await until(reactor, lambda b=user_browser: len(b.connections) == 1, 10)
            assert len(user_browser.connections) == 1, name
    finally:
        await cluster.stop()


@pytest_twisted.ensureDeferred
async def test_an_admin_moves_a_user_to_another_process(cluster, reactor):
    (name,) = names = ["move-a"]
    token, browser = (await register_users(cluster, names))[name]
    before = (await cluster.owners(names))[name]
    to = next(node.node_id for node in cluster.nodes if node.node_id != before)
    edge = next(i for i, node in enumerate(cluster.nodes) if node.node_id not in (before, to))
    code, moved, _ = await cluster.api("POST", f"/api/users/{name}/move", {"node": to}, node=edge)
    assert code == 200 and moved == {"userId": name, "node": to, "from": before}, moved
    assert await cluster.owners(names) == {name: to}
    # The browser moved with the user: the old connection closed, one new one is open.
    await until(reactor, lambda: len(browser.connections) == 1 and len(browser.links()) == 2, 10)
    for node in range(3):
        code, headers, answer = await cluster.proxy(node).post_tool_call(token, "list_pages")
        assert code == 200 and node_of(headers) == to and text_of(answer).startswith("## Pages"), answer
    # Moved nowhere: a process that is not in the cluster, a node id that is no string.
    code, refused, _ = await cluster.api("POST", f"/api/users/{name}/move", {"node": "n9"}, node=edge)
    assert code == 409 and refused["error"]["code"] == "node_unavailable", refused
    code, refused, _ = await cluster.api("POST", f"/api/users/{name}/move", {"node": 3}, node=edge)
    assert code == 400 and refused["error"]["code"] == "invalid_node", refused
    code, refused, _ = await cluster.api("POST", "/api/users/nobody/move", node=edge)
    assert code == 404, refused
    # Without a body the user goes where placement ranks it, never where it is.
    code, moved, _ = await cluster.api("POST", f"/api/users/{name}/move", node=edge)
    assert code == 200 and moved["from"] == to and moved["node"] not in (to, None), moved


@pytest_twisted.ensureDeferred
async def test_every_process_lists_each_user_as_the_process_serving_it_sees_it(cluster, reactor):
    names = ["list-a", "list-b", "list-c"]
    users = await register_users(cluster, names)  # through n1, n2, n3
    owners = await cluster.owners(names)
    # One legacy SSE session of list-a, through a process that (likely) pipes it to the owner.
    session = await from_asyncio(LeanLegacySse.open([cluster.nodes[1].base_url], users["list-a"][0]))
    try:
        for node in range(3):
            rows: dict = {}

            async def counted(node=node, rows=rows) -> bool:
                code, listing, _ = await cluster.api("GET", "/api/users", node=node)
                assert code == 200, listing
                rows.update({row["userId"]: row for row in listing["users"] if row["userId"] in names})
                return all(rows[name]["browserStatus"] == "connected" for name in names)

            await until(reactor, counted, 10, seen=lambda rows=rows: rows)
            assert {name: rows[name]["node"] for name in names} == owners
            assert [rows[name]["activeSessions"] for name in names] == [1, 0, 0], rows
    finally:
        session.close()


@pytest_twisted.ensureDeferred
async def test_the_dashboard_shows_every_process_and_the_owner_of_each_user(cluster, reactor):
    names = ["dash-a", "dash-b"]
    await register_users(cluster, names)
    owners = await cluster.owners(names)
    seen: dict = {}

    async def counted() -> bool:
        # Each process publishes how many users it owns with its lease, renewed every 0.4 s.
        code, seen["overview"], _ = await cluster.api("GET", "/admin/api/overview", node=2)
        assert code == 200, seen["overview"]
        return sum(node["users"] for node in seen["overview"]["cluster"]["nodes"]) >= len(names)

    await until(reactor, counted, 10, seen=lambda: seen)
    shown = seen["overview"]["cluster"]
    assert shown["node"] == "n3"
    assert sorted(node["id"] for node in shown["nodes"]) == ["n1", "n2", "n3"]
    assert all(node["alive"] and not node["draining"] for node in shown["nodes"])
    rows = {row["userId"]: row for row in seen["overview"]["users"]}
    assert {name: rows[name]["node"] for name in names} == owners
