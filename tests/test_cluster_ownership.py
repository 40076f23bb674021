"""User ownership across nodes against a real Redis: claims, fencing tokens, the owner
cache, placement after a node's death, reconciliation. Nodes run in this process, each
on a clock that a test can pause to stop it like ``kill -STOP``/``kill -9``."""

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from mcproxy.cluster.node import NodeMembership
from mcproxy.cluster.ownership import Owner, Ownership, rendezvous
from mcproxy.errors import ServerFull
from mcproxy.testing.coordination import (
    Link,
    PausableClock,
    discard_test_control,
    open_test_control,
)
from mcproxy.testing.stores import delete_prefixed_keys
from mcproxy.testing.tool_calls import until

TTL, RENEW = 1.5, 0.3


class Node:
    """One cluster node: membership and ownership on a pausable clock, recording its
    ``on_claimed``/``on_lost`` calls."""

    def __init__(self, reactor, control, node_id, users=(), *, grace=0.0, max_users=0):
        self.clock = PausableClock(reactor)
        self.link = Link(control)
        self.users = list(users)
        self.claimed: list[str] = []
        self.lost: list[str] = []
        self.membership = NodeMembership(
            self.link, self.clock, node_id=node_id, url=f"http://{node_id}.test:3201", ttl=TTL, renew_interval=RENEW
        )
        self.ownership = Ownership(
            self.link,
            self.clock,
            self.membership,
            registered_users=self.registered_users,
            on_claimed=self.claimed.append,
            on_lost=self.lost.append,
            max_users=max_users,
            claim_grace=grace,
        )

    @property
    def id(self):
        return self.membership.node_id

    async def registered_users(self):
        return self.users

    async def register(self):
        self.membership.startService()
        await self.membership.started

    async def place(self):
        """Start the placement loop (after `register`)."""
        self.ownership.startService()
        await self.ownership.started

    async def stop(self):
        self.clock.resume()
        for service in (self.ownership, self.membership):
            if service.running:
                await service.stopService()
        self.clock.stop()


@pytest_twisted.async_yield_fixture()
async def cluster(reactor):
    """Makes nodes on one test control; stops them and deletes the keys at the end."""
    control = await open_test_control(reactor)
    nodes = []

    def make(node_id, users=(), **kw):
        node = Node(reactor, control, node_id, users, **kw)
        nodes.append(node)
        return node

    make.control = control
    yield make
    for node in nodes:
        await node.stop()
    await discard_test_control(control)


async def registered(*nodes):
    for node in nodes:
        await node.register()
    return nodes


def lease_gone(control, node_id):
    return lambda: control.redis.exists(control.key("node", node_id)).addCallback(lambda n: not int(n))


@pytest_twisted.ensureDeferred
async def test_one_winner_when_two_nodes_claim_at_once(cluster):
    n1, n2 = await registered(cluster("n1"), cluster("n2"))
    claims = [Deferred.fromCoroutine(n.ownership.claim("alice")) for n in (n1, n2)]
    one, two = await gatherResults(claims)
    assert one == two and one.alive
    winner, loser = (n1, n2) if one.node == "n1" else (n2, n1)
    assert winner.ownership.owns("alice") and winner.claimed == ["alice"]
    assert not loser.ownership.owns("alice") and loser.claimed == [] and loser.ownership.token_of("alice") is None
    assert winner.ownership.token_of("alice") == one.token
    assert await n1.ownership.owners(["alice", "bob"]) == {"alice": winner.id, "bob": None}


@pytest_twisted.ensureDeferred
async def test_fencing_tokens_only_increase(reactor, cluster):
    control = cluster.control
    n1, n2 = await registered(cluster("n1"), cluster("n2"))

    first = await n1.ownership.claim("alice")
    assert await n1.ownership.release("alice", hint="n2")
    assert not n1.ownership.owns("alice") and n1.lost == []  # a release is not a loss
    assert await control.redis.hget(control.key("owner", "alice"), "hint") == "n2"
    second = await n2.ownership.claim("alice")
    assert second.node == "n2" and second.token > first.token

    n2.clock.pause()  # n2 stops: its lease runs out
    assert (await n1.ownership.claim("alice")).node == "n2"  # alive still: not taken
    await until(reactor, lease_gone(control, "n2"), what="n2's lease expired")
    third = await n1.ownership.claim("alice")
    assert third.node == "n1" and third.token > second.token

    epoch = n1.membership.epoch
    await delete_prefixed_keys(control)  # Redis came back empty
    await until(reactor, lambda: n1.membership.valid() and n1.membership.epoch != epoch, what="n1 registered again")
    assert n1.membership.fresh and n1.lost == ["alice"]
    fourth = await n1.ownership.claim("alice")
    assert fourth.node == "n1" and fourth.token > third.token
    assert n1.claimed == ["alice", "alice", "alice"]


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_users_move_to_the_rendezvous_winner(reactor, cluster):
    users = [f"user{i}" for i in range(9)]
    nodes = await registered(*(cluster(f"n{i}", users, grace=0.5) for i in (1, 2, 3)))
    by_id = {node.id: node for node in nodes}
    for node in nodes:
        await node.place()
    ids = sorted(by_id)

    async def all_placed():
        return None not in (await nodes[0].ownership.owners(users)).values()

    await until(reactor, all_placed, what="every user placed")
    placed = await nodes[0].ownership.owners(users)
    assert placed == {u: rendezvous(u, ids)[0] for u in users}
    for node in nodes:
        assert sorted(node.claimed) == sorted(u for u in users if placed[u] == node.id)

    victim = max(nodes, key=lambda n: len(n.claimed))
    moved = sorted(victim.claimed)
    survivors = [i for i in ids if i != victim.id]
    victim.clock.pause()  # as good as kill -9: no renewal, no placement, no fence timer

    watcher = by_id[survivors[0]].ownership

    async def all_moved():
        owners = await watcher.owners(moved)
        return all(owners[u] in survivors for u in moved)

    await until(reactor, all_moved, timeout=TTL + 2 * RENEW + 2.0, what="the dead node's users re-homed")
    after = await watcher.owners(users)
    for user in moved:
        winner = rendezvous(user, survivors)[0]
        assert after[user] == winner and user in by_id[winner].claimed and by_id[winner].ownership.owns(user)
    assert all(after[u] == placed[u] for u in users if u not in moved)  # nobody else moved

    victim.clock.resume()  # the paused owner wakes up past its deadline
    assert sorted(victim.lost) == moved
    assert not any(victim.ownership.owns(u) for u in moved)
    await until(reactor, lambda: victim.membership.valid(), what="the old owner registered again")
    assert victim.ownership.held() == []


@pytest_twisted.ensureDeferred
async def test_reconciliation_drops_a_user_another_node_owns(reactor, cluster):
    control = cluster.control
    n1, n2 = await registered(cluster("n1", ["alice"]), cluster("n2", ["alice"], grace=60))
    mine = await n1.ownership.claim("alice")
    await n1.place()
    await n2.place()
    # A claim n1 never heard of (say, its write was lost in a Redis failover): the
    # record names n2 with a larger token.
    key = control.key("owner", "alice")
    await control.redis.hset(key, "node", "n2")
    await control.redis.hmset(key, {"epoch": n2.membership.epoch, "token": str(mine.token + 1)})
    await until(reactor, lambda: n1.lost == ["alice"], what="n1 dropped alice")
    assert not n1.ownership.owns("alice") and n1.ownership.token_of("alice") is None
    # n2 takes up what its record says, even during its claim grace.
    await until(reactor, lambda: n2.ownership.owns("alice"), what="n2 took alice up")
    assert n2.claimed == ["alice"] and n2.ownership.token_of("alice") == mine.token + 1
    assert (await n1.ownership.owner_of("alice", fresh=True)).node == "n2"


@pytest_twisted.ensureDeferred
async def test_a_node_that_lost_its_lease_takes_its_own_users_back(reactor, cluster):
    control = cluster.control
    (n1,) = await registered(cluster("n1", ["alice"], grace=60))
    await n1.place()
    first = await n1.ownership.claim("alice")
    epoch = n1.membership.epoch
    await control.redis.delete(control.key("node", "n1"))  # the lease is gone (as after a long stall)
    await until(reactor, lambda: n1.claimed == ["alice", "alice"], what="alice claimed back")
    assert n1.lost == ["alice"] and n1.membership.epoch != epoch
    assert n1.ownership.owns("alice") and n1.ownership.token_of("alice") > first.token


@pytest_twisted.ensureDeferred
async def test_after_redis_came_back_empty_each_node_takes_back_its_own_users(reactor, cluster):
    control = cluster.control
    # A user whose rendezvous winner is n2, held by n1.
    user = next(f"user{i}" for i in range(100) if rendezvous(f"user{i}", ["n1", "n2"])[0] == "n2")
    n1, n2 = await registered(cluster("n1", [user], grace=1.0), cluster("n2", [user], grace=1.0))
    await n1.ownership.claim(user)
    await n1.place()
    await n2.place()
    await delete_prefixed_keys(control)
    await until(reactor, lambda: n1.lost == [user], what="n1 lost its lease")
    await until(reactor, lambda: n1.ownership.owns(user), what="n1 took its user back")
    assert n2.claimed == [] and n1.claimed == [user, user]


@pytest_twisted.ensureDeferred
async def test_a_user_released_to_a_node_is_claimed_by_it_even_in_its_grace(reactor, cluster):
    n1, n2 = await registered(cluster("n1", ["alice"]), cluster("n2", ["alice"], grace=60))
    await n1.ownership.claim("alice")
    await n1.place()
    await n2.place()
    await n1.ownership.release("alice", hint="n2")  # an operator moves alice to n2
    await until(reactor, lambda: n2.ownership.owns("alice"), what="n2 claimed alice")
    assert n1.claimed == ["alice"] and n2.claimed == ["alice"]


@pytest_twisted.ensureDeferred
async def test_the_node_a_user_awaits_is_the_one_a_release_named_or_its_lapsed_owner(reactor, cluster):
    control = cluster.control
    n1, n2, n3 = await registered(cluster("n1"), cluster("n2"), cluster("n3"))
    for node in (n1, n2, n3):
        await node.place()  # placement learns which nodes are live
    await n1.ownership.claim("alice")
    assert await n3.ownership.awaited_by("alice") is None  # owned: nobody awaited
    await n1.ownership.release("alice", hint="n2")
    moving_in = lambda: n3.ownership.awaited_by("alice")  # noqa: E731 (once n3's placement saw n2 live)
    assert await until(reactor, moving_in, what="n2 awaited") == ("n2", False)
    assert await n2.ownership.awaited_by("alice") is None  # n2 itself awaits nobody
    await n2.ownership.claim("alice")
    n2.clock.pause()  # n2 stalls: its lease runs out while the record still names it
    await until(reactor, lease_gone(control, "n2"), what="n2's lease expired")
    assert await n3.ownership.awaited_by("alice") is None  # n3's grace is over: nobody awaited
    (n4,) = await registered(cluster("n4", grace=60))
    await n4.place()  # a node that just (re)registered, as after a Redis outage
    assert await n4.ownership.awaited_by("alice") == ("n2", True)  # coming back


@pytest_twisted.ensureDeferred
async def test_owner_of_is_cached_until_forgotten_or_fresh(cluster):
    n1, n2 = await registered(cluster("n1"), cluster("n2"))
    await n1.ownership.claim("alice")
    link = Link(cluster.control)
    reader = Ownership(
        link, n2.clock, n2.membership, registered_users=n2.registered_users, on_claimed=print, on_lost=print
    )
    expected = Owner("n1", n1.membership.epoch, n1.ownership.token_of("alice"), "http://n1.test:3201", alive=True)
    assert await reader.owner_of("alice") == expected and link.calls == 1
    assert await reader.owner_of("alice") == expected and link.calls == 1  # a hit reads no Redis
    assert await reader.owner_of("alice", fresh=True) == expected and link.calls == 2
    reader.forget("alice")
    assert await reader.owner_of("alice") == expected and link.calls == 3
    assert await reader.owner_of("bob") is None and link.calls == 4


@pytest_twisted.ensureDeferred
async def test_max_users_refuses_new_users_but_names_other_owners(cluster):
    n1, n2 = await registered(cluster("n1", max_users=1), cluster("n2"))
    assert (await n1.ownership.claim("alice")).node == "n1"
    with pytest.raises(ServerFull):
        await n1.ownership.claim("bob")
    await n2.ownership.claim("carol")
    assert (await n1.ownership.claim("carol")).node == "n2"
    assert (await n1.ownership.claim("alice")).node == "n1"  # one it holds is no new user
    assert n1.ownership.held() == ["alice"]


@pytest_twisted.ensureDeferred
async def test_nodes_view(reactor, cluster):
    n1, n2 = await registered(cluster("n1"), cluster("n2"))
    await n2.membership.set_draining()
    nodes = await n1.ownership.nodes()
    assert [(n["id"], n["alive"], n["draining"], n["epoch"]) for n in nodes] == [
        ("n1", True, False, n1.membership.epoch),
        ("n2", True, True, n2.membership.epoch),
    ]
    assert all(0 < n["leaseMsLeft"] <= TTL * 1000 and n["stats"] == {} for n in nodes)
    assert nodes[0]["url"] == "http://n1.test:3201"
    n2.clock.pause()
    await until(reactor, lease_gone(cluster.control, "n2"), what="n2's lease expired")
    dead = (await n1.ownership.nodes())[1]
    assert dead["id"] == "n2" and not dead["alive"] and dead["leaseMsLeft"] == 0


@pytest_twisted.ensureDeferred
async def test_a_node_dead_for_long_leaves_the_view_and_one_that_came_back_stays(reactor, cluster):
    n1, n2, n3 = await registered(cluster("n1"), cluster("n2"), cluster("n3"))
    n1.ownership.forget_after = 1  # seconds (an hour by default)
    for node in (n2, n3):
        node.clock.pause()
    for node_id in ("n2", "n3"):
        await until(reactor, lease_gone(cluster.control, node_id), what=f"{node_id}'s lease expired")
    assert [n["id"] for n in await n1.ownership.nodes()] == ["n1", "n2", "n3"]  # dead since now
    n3.clock.resume()  # n3 comes back (registers again) before it is forgotten
    await until(reactor, lambda: n3.membership.valid(), what="n3 registered again")

    async def n2_forgotten():
        return [n["id"] for n in await n1.ownership.nodes()] == ["n1", "n3"]

    await until(reactor, n2_forgotten, what="n2 forgotten")
    n3.clock.pause()  # dead again: its clock of death starts over, it is listed for a while
    await until(reactor, lease_gone(cluster.control, "n3"), what="n3's lease expired again")
    assert [n["id"] for n in await n1.ownership.nodes()] == ["n1", "n3"]
