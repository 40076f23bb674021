"""Cluster events through real Redis pub/sub: round trips, what is ignored, and the
subscriber subscribing again after its connection is killed."""

import io
import json
import os
import secrets
import signal
import socket
import subprocess

import pytest_twisted

from mcproxy import config as configuration
from mcproxy.admin.cli import Options, run
from mcproxy.auth.tokens import create_token
from mcproxy.cluster.events import IGNORED, MAX_EVENT_BYTES, RELOAD, TOKEN_REVOKED, USER, Events, encode, publish
from mcproxy.storage import open_store
from mcproxy.storage.redis import parse_redis_url
from mcproxy.testing.coordination import open_control
from mcproxy.testing.stores import redis_test_url
from mcproxy.testing.tool_calls import until


@pytest_twisted.async_yield_fixture()
async def nodes(reactor, control):
    """Makes subscribed `Events` of nodes on ``control``'s Redis and prefix; stops them at the end."""
    made = []

    async def make(node_id, url=None, control=control):
        events = Events(reactor, url or redis_test_url(), node_id, prefix=control.prefix, ping_interval=0.2)
        events.control = control
        made.append(events)
        await events.start()
        await events.subscribed().addTimeout(5, reactor)
        return events

    yield make
    for events in made:
        await events.stop()


def recording(events, kind):
    seen = []
    events.on(kind, seen.append)
    return seen


@pytest_twisted.ensureDeferred
async def test_an_event_reaches_every_other_node(reactor, nodes):
    n1, n2, n3 = await nodes("n1"), await nodes("n2"), await nodes("n3")
    revoked = {node.node_id: recording(node, TOKEN_REVOKED) for node in (n1, n2, n3)}
    reloads = recording(n2, RELOAD)
    assert await n1.publish(TOKEN_REVOKED, token="0123456789abcdef")
    await until(reactor, lambda: revoked["n2"] and revoked["n3"], 5, what="the event on n2 and n3")
    assert revoked["n2"] == [{"v": 1, "t": TOKEN_REVOKED, "from": "n1", "token": "0123456789abcdef"}]
    assert revoked["n1"] == []  # the sender acted already
    assert reloads == []  # handlers hear only their type
    assert n2.counts == {TOKEN_REVOKED: 1}


@pytest_twisted.ensureDeferred
async def test_a_tool_outside_the_cluster_can_send_events(reactor, control, nodes):
    n1 = await nodes("n1")
    deleted = recording(n1, USER)
    assert await publish(control, USER, "mcproxy-admin", user="alice", change="deleted")
    await until(reactor, lambda: deleted, 5, what="the event on n1")
    assert deleted[0]["user"] == "alice" and deleted[0]["from"] == "mcproxy-admin"


@pytest_twisted.ensureDeferred
async def test_what_is_not_an_event_of_ours_is_ignored(reactor, control, nodes):
    n1 = await nodes("n1")
    failing, seen = [], recording(n1, RELOAD)

    def broken(event):
        failing.append(event)
        raise RuntimeError("a handler bug")

    n1.on(TOKEN_REVOKED, broken)
    channel = control.key("events")
    for junk in (
        "not json",
        "[1, 2]",
        json.dumps({"v": 2, "t": RELOAD, "from": "n9"}),
        encode("no_such_type", "n9"),
        encode(RELOAD, "n9", padding="x" * MAX_EVENT_BYTES),
    ):
        await control.redis.publish(channel, junk)
    await control.redis.publish(channel, encode(TOKEN_REVOKED, "n9", token="0123456789abcdef"))
    await control.redis.publish(channel, encode(RELOAD, "n9"))
    await until(reactor, lambda: seen, 5, what="the valid event after the junk")
    assert n1.counts == {IGNORED: 5, TOKEN_REVOKED: 1, RELOAD: 1}
    assert len(failing) == 1  # a failing handler is logged; the next event is still handled
    assert seen == [{"v": 1, "t": RELOAD, "from": "n9"}]


@pytest_twisted.async_yield_fixture()
async def own_redis(reactor, tmp_path):
    """A redis-server of this test alone (it kills the subscribers of its Redis)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        opened = await open_control(reactor, url, prefix=f"mcproxy:test-{secrets.token_hex(6)}:", timeout=5.0)
        yield url, opened
        await opened.close()
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(10)


@pytest_twisted.ensureDeferred
async def test_the_subscriber_subscribes_again_after_its_connection_is_killed(reactor, own_redis, nodes):
    url, control = own_redis
    assert parse_redis_url(url)[1] != 6379
    n1 = await nodes("n1", url, control)
    n2 = await nodes("n2", url, control)
    caught_up, seen = [], recording(n2, TOKEN_REVOKED)
    n2.on_resubscribed(lambda: caught_up.append(n2.subscriptions))
    assert n2.subscriptions == 1 and caught_up == []
    killed = await control.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert int(killed) == 2
    await until(reactor, lambda: n1.subscriptions == 2 and n2.subscriptions == 2, 10, what="both subscribed again")
    assert caught_up == [2]  # what the lost events would have done is checked at once
    assert await n1.publish(TOKEN_REVOKED, token="0123456789abcdef")
    await until(reactor, lambda: seen, 5, what="an event after the re-subscription")


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_replaced(reactor, own_redis, nodes):
    url, control = own_redis
    n1 = await nodes("n1", url, control)
    n1._subscriber.transport.pauseProducing()  # hears nothing more, as a half-open connection
    await until(reactor, lambda: n1.subscriptions == 2, 10, what="a new subscription after the unanswered PING")


@pytest_twisted.ensureDeferred
async def test_mcproxy_admin_tells_the_cluster_of_a_revocation(reactor, own_redis):
    url, _ = own_redis
    config = configuration.load(
        None,
        environ={},
        overrides={
            "store": {"url": url},
            "cluster": {"enabled": True, "internal_listen": "tcp:3201:interface=127.0.0.1", "node_id": "n9"},
        },
    )
    listening = Events(reactor, url, "n1")  # the default prefix, as mcproxy-admin's
    await listening.start()
    try:
        await listening.subscribed().addTimeout(5, reactor)
        revoked = recording(listening, TOKEN_REVOKED)
        store = await open_store(url, reactor)
        try:
            _, record = await create_token(store, "alice", ["tools:*"], None, reactor)
        finally:
            await store.close()
        options = Options()
        options.parseOptions(["tokens", "revoke", record.token_id])
        out, err = io.StringIO(), io.StringIO()
        await run(reactor, options, config, out, err)
        assert out.getvalue() == f"revoked {record.token_id}\n" and err.getvalue() == ""
        await until(reactor, lambda: revoked, 5, what="the revocation event")
        assert revoked == [{"v": 1, "t": TOKEN_REVOKED, "from": "mcproxy-admin", "token": record.token_id}]
    finally:
        await listening.stop()
