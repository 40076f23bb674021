"""Cluster mode's configuration and per-request routing, in-process: what the edge does with
each answer of the owner (`mcproxy.cluster.routing`), and the node's identity and secret
(`mcproxy.cluster.service`). The three-process behaviour is tests/test_cluster_e2e.py."""

import io
import json

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mcproxy import config as configuration
from mcproxy.auth.principal import Principal
from mcproxy.cluster.forward import NotOwner, OwnerDraining, OwnerLost, OwnerUnreachable
from mcproxy.cluster.ownership import Owner
from mcproxy.cluster.routing import EdgePlacement, Misdirected, OwnerCheck, OwnerUnavailable
from mcproxy.cluster.service import cluster_secret, internal_address
from mcproxy.config import ConfigError
from mcproxy.mcp.codes import OWNER_LOST
from mcproxy.testing.requests import FakeRequest

SECRET = "s" * 40
CLUSTER = {
    "enabled": True,
    "node_id": "n1",
    "internal_listen": "tcp:3201:interface=10.0.0.5",
    "secret": SECRET,
}


def load(cluster: dict, store: str = "redis://127.0.0.1:6379/0"):
    return configuration.load(None, environ={}, overrides={"store": {"url": store}, "cluster": cluster})


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "store", "key"),
    [
        ({}, "sqlite:/tmp/x.sqlite3", "cluster.enabled"),
        ({"internal_listen": ""}, "redis://127.0.0.1:6379/0", "cluster.internal_listen"),
        ({"renew_interval": 5.0}, "redis://127.0.0.1:6379/0", "cluster.renew_interval"),
        ({"node_ttl": 0.0}, "redis://127.0.0.1:6379/0", "cluster.node_ttl"),
        ({"node_id": "n 1"}, "redis://127.0.0.1:6379/0", "cluster.node_id"),
        ({"advertise_url": "10.0.0.5:3201"}, "redis://127.0.0.1:6379/0", "cluster.advertise_url"),
        ({"max_forward_connections": 0}, "redis://127.0.0.1:6379/0", "cluster.max_forward_connections"),
    ],
)
def test_cluster_configuration_is_refused_naming_the_key(change, store, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load({**CLUSTER, **change}, store)


def test_cluster_keys_come_from_the_environment():
    config = configuration.load(
        None,
        environ={
            "MCPROXY_STORE_URL": "redis://127.0.0.1:6379/0",
            "MCPROXY_CLUSTER_ENABLED": "true",
            "MCPROXY_CLUSTER_INTERNAL_LISTEN": "tcp:3201:interface=127.0.0.1",
            "MCPROXY_CLUSTER_SECRET": SECRET,
            "MCPROXY_CLUSTER_NODE_TTL": "6",
        },
    )
    assert config.cluster.enabled and config.cluster.node_ttl == 6.0
    assert cluster_secret(config.cluster) == SECRET.encode()


def test_disabled_cluster_checks_nothing():
    assert load({"enabled": False, "internal_listen": ""}, "sqlite:/tmp/x.sqlite3").cluster.enabled is False


def test_the_secret_must_be_long_enough_and_given_once(tmp_path):
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        cluster_secret(load({**CLUSTER, "secret": "short"}).cluster)
    secret_file = tmp_path / "secret"
    secret_file.write_text("k" * 32 + "\n")
    assert cluster_secret(load({**CLUSTER, "secret": "", "secret_file": str(secret_file)}).cluster) == b"k" * 32
    with pytest.raises(ConfigError, match=r"cluster\.secret_file"):
        cluster_secret(load({**CLUSTER, "secret_file": str(secret_file)}).cluster)
    with pytest.raises(ConfigError, match="cannot read"):
        cluster_secret(load({**CLUSTER, "secret": "", "secret_file": str(tmp_path / "missing")}).cluster)


def test_identity_from_the_internal_listener():
    assert internal_address(load(CLUSTER)) == ("n1", "http://10.0.0.5:3201")
    node, url = internal_address(load({**CLUSTER, "node_id": "", "internal_listen": r"ssl:3202:interface=\:\:1"}))
    assert node.endswith(":3202") and url == "https://[::1]:3202"
    given = internal_address(load({**CLUSTER, "advertise_url": "http://n1.internal:3201/"}))
    assert given == ("n1", "http://n1.internal:3201")
    with pytest.raises(ConfigError, match=r"cluster\.advertise_url"):
        internal_address(load({**CLUSTER, "internal_listen": "tcp:3201"}))
    with pytest.raises(ConfigError, match=r"cluster\.node_id"):
        internal_address(load({**CLUSTER, "node_id": "", "internal_listen": "tcp:0:interface=127.0.0.1"}))


# -- routing ------------------------------------------------------------------------------


@attrs.define
class ScriptedOwnership:
    """Ownership whose owner records a test sets; it counts claims."""

    me: str = "edge"
    owner: Owner | None = None
    mine: set = attrs.Factory(set)
    claims: int = 0
    forgotten: int = 0
    awaited: tuple | None = None  # (node, coming back) while nobody owns the user
    live: set = attrs.Factory(lambda: {"n2"})  # the nodes serving (leased, not draining)

    def owns(self, user):
        return user in self.mine

    async def owner_of(self, user, *, fresh=False):
        return self.owner

    async def claim(self, user):
        self.claims += 1
        if self.owner is None or not self.owner.alive:
            self.mine.add(user)
            self.owner = Owner(node=self.me, epoch="e", token=1, url="", alive=True)
        return self.owner

    def forget(self, user):
        self.forgotten += 1

    def serving(self, node):
        return node in self.live

    async def awaited_by(self, user):
        return self.awaited if self.owner is None or not self.owner.alive else None


@attrs.define
class ScriptedForwarder:
    """A forwarder that fails with the scripted outcomes, then answers."""

    outcomes: list = attrs.Factory(list)
    sent: list = attrs.Factory(list)

    async def forward(self, request, *, to, url, principal, body, rid, rpc_id=None):
        self.sent.append((to, body, rpc_id))
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if isinstance(outcome, Deferred):
                await outcome  # an owner that answers (or fails) when, if ever, the test says
            else:
                raise outcome
        request.setResponseCode(200)
        request.write(b"relayed")
        request.finish()


@attrs.define
class Node:
    ownership: ScriptedOwnership
    forwarder: ScriptedForwarder
    node_id: str = "edge"


def call(method: str = "tools/call") -> FakeRequest:
    request = FakeRequest([b"mcp"])
    request.method = b"POST"
    request.content = io.BytesIO(json.dumps({"jsonrpc": "2.0", "id": 7, "method": method}).encode())
    request.principal = Principal("alice")
    return request


def placement(outcomes=(), owner_alive=True):
    clock = Clock()
    ownership = ScriptedOwnership(owner=Owner(node="n2", epoch="e", token=5, url="http://n2", alive=owner_alive))
    node = Node(ownership, ScriptedForwarder(list(outcomes)))
    return clock, node, EdgePlacement(clock, node, failover_wait=3.0, max_body=1 << 20)


def advance(clock: Clock, until, step: float = 0.1) -> None:
    for _ in range(1000):
        if until.called:
            return
        clock.advance(step)


@pytest_twisted.ensureDeferred
async def test_a_user_owned_here_is_served_here():
    _, node, edge = placement()
    node.ownership.mine.add("alice")
    request = call()
    assert await edge.place(request, "alice") is False
    assert request.responseHeaders.getRawHeaders(b"X-MCProxy-Node") == [b"edge"]
    assert node.forwarder.sent == []


@pytest_twisted.ensureDeferred
async def test_a_user_without_a_live_owner_is_claimed_and_served_here():
    _, node, edge = placement(owner_alive=False)
    assert await edge.place(call(), "alice") is False
    assert node.ownership.claims == 1 and node.forwarder.sent == []


@pytest_twisted.ensureDeferred
async def test_a_user_owned_elsewhere_is_forwarded_with_its_body_and_json_rpc_id():
    _, node, edge = placement()
    request = call()
    assert await edge.place(request, "alice") is True
    assert request.written == [b"relayed"]
    [(to, body, rpc_id)] = node.forwarder.sent
    assert to == "n2" and json.loads(body)["method"] == "tools/call" and rpc_id == 7
    assert edge.outcomes == {"ok": 1}


def test_answers_that_were_not_run_are_sent_again_until_the_owner_answers():
    clock, node, edge = placement([NotOwner("moved", owner=None), OwnerDraining("leaving"), OwnerUnreachable("down")])
    done = Deferred.fromCoroutine(edge.place(call(), "alice"))
    advance(clock, done)
    assert done.result is True
    assert len(node.forwarder.sent) == 4 and node.ownership.forgotten == 3


def test_an_owner_unreachable_past_the_failover_wait_is_a_503_with_retry_after():
    clock, node, edge = placement([OwnerUnreachable("down")] * 100)
    request = call()
    done = Deferred.fromCoroutine(edge.place(request, "alice"))
    advance(clock, done)
    failure = done.result
    done.addErrback(lambda _: None)
    assert failure.check(OwnerUnavailable) and failure.value.http_status == 503
    assert failure.value.retry_after == 2  # the Retry-After of its answer
    assert 25 <= len(node.forwarder.sent) <= 35  # every 0.1 s for 3 s


def test_during_the_claim_grace_a_user_whose_process_may_come_back_is_not_taken():
    # After a Redis outage every lease lapsed; the process named in the record comes back
    # for its users, so an edge that came back first answers 503 meanwhile, claiming nothing.
    clock, node, edge = placement(owner_alive=False)
    node.ownership.awaited = ("n2", True)
    done = Deferred.fromCoroutine(edge.place(call(), "alice"))
    advance(clock, done)
    failure = done.result
    done.addErrback(lambda _: None)
    assert failure.check(OwnerUnavailable) and "reconnecting" in failure.getErrorMessage()
    assert node.ownership.claims == 0 and node.forwarder.sent == []
    node.ownership.awaited = None  # the grace is over: the process did not come back
    done = Deferred.fromCoroutine(edge.place(call(), "alice"))
    assert done.result is False and node.ownership.claims == 1


def test_a_user_moving_to_another_process_waits_for_it_then_is_claimed_if_it_never_came():
    clock, node, edge = placement(owner_alive=False)
    node.ownership.awaited = ("n2", False)
    done = Deferred.fromCoroutine(edge.place(call(), "alice"))
    for _ in range(28):  # 2.8 s of the 3 s failover wait
        clock.advance(0.1)
    assert not done.called and node.ownership.claims == 0  # n2 is due to claim it
    advance(clock, done)
    assert done.result is False and node.ownership.claims == 1  # n2 never did: served here


def test_a_forward_is_given_up_when_its_user_moved_away_from_a_process_that_stopped_serving():
    hanging = Deferred()  # the owner never answers (paused, cut off)
    clock, node, edge = placement([hanging])
    request = call("tools/list")
    done = Deferred.fromCoroutine(edge.place(request, "alice"))
    node.ownership.owner = Owner(node="n3", epoch="e", token=6, url="http://n3", alive=True)
    clock.advance(1.0)
    assert not hanging.called and not done.called  # moved by an operator: n2 still serves and answers
    node.ownership.live.discard("n2")  # n2's lease ran out
    clock.advance(1.0)
    assert hanging.called  # the hanging forward was cancelled ...
    advance(clock, done)
    assert done.result is True and request.written == [b"relayed"]  # ... and sent again to n3
    assert [to for to, _, _ in node.forwarder.sent] == ["n2", "n3"]


@pytest_twisted.ensureDeferred
async def test_a_tool_call_lost_with_its_owner_is_a_tool_error_that_says_it_may_have_run():
    _, node, edge = placement([OwnerLost("gone", nonce="x")])
    request = call("tools/call")
    assert await edge.place(request, "alice") is True
    answer = json.loads(b"".join(request.written))
    assert answer["id"] == 7 and answer["result"]["isError"] is True
    assert "may or may not have happened" in answer["result"]["content"][0]["text"]
    assert len(node.forwarder.sent) == 1  # never sent twice


def test_a_request_that_changes_nothing_is_sent_again_after_its_owner_was_lost():
    clock, node, edge = placement([OwnerLost("gone", nonce="x")])
    request = call("tools/list")
    done = Deferred.fromCoroutine(edge.place(request, "alice"))
    advance(clock, done)
    assert done.result is True and request.written == [b"relayed"]
    assert len(node.forwarder.sent) == 2


def test_a_request_that_changes_nothing_lost_after_a_long_run_still_gets_the_whole_failover_wait():
    running: Deferred = Deferred()
    clock, node, edge = placement([running, OwnerUnreachable("the next owner is not up yet")])
    request = call("tools/list")
    done = Deferred.fromCoroutine(edge.place(request, "alice"))
    clock.advance(10.0)  # past the failover wait, the owner still running it
    running.errback(OwnerLost("gone", nonce="x"))
    advance(clock, done)
    assert done.result is True and request.written == [b"relayed"]
    assert len(node.forwarder.sent) == 3


@pytest_twisted.ensureDeferred
async def test_other_lost_requests_get_the_owner_lost_json_rpc_error():
    _, _, edge = placement([OwnerLost("gone", nonce="x")])
    request = call("logging/setLevel")
    assert await edge.place(request, "alice") is True
    assert json.loads(b"".join(request.written))["error"]["code"] == OWNER_LOST


@pytest_twisted.ensureDeferred
async def test_the_internal_listener_serves_owned_users_and_misdirects_the_rest():
    ownership = ScriptedOwnership(me="n1", owner=Owner(node="n2", epoch="e", token=5, url="", alive=True))
    check = OwnerCheck(Node(ownership, ScriptedForwarder(), node_id="n1"))
    with pytest.raises(Misdirected) as refused:
        await check.place(call(), "alice")
    assert refused.value.http_status == 421 and refused.value.to_json()["error"]["owner"] == "n2"
    ownership.owner = attrs.evolve(ownership.owner, alive=False)
    request = call()
    assert await check.place(request, "alice") is False  # nobody live owned it: claimed here
    assert ownership.claims == 1 and request.responseHeaders.getRawHeaders(b"X-MCProxy-Node") == [b"n1"]
