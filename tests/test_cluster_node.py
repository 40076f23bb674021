"""Node membership against a real Redis: registration, renewal, self-fencing, the
control pool's bounded calls. Each test works under a key prefix of its own."""

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from mcproxy.cluster.control import CoordinationUnavailable
from mcproxy.cluster.node import FENCED, LOST, REGISTERED, NodeMembership
from mcproxy.config import ConfigError
from mcproxy.testing.coordination import (
    Link,
    open_unreachable_control,
)
from mcproxy.testing.tool_calls import until


@pytest_twisted.async_yield_fixture()
async def unreachable(reactor):
    dead = await open_unreachable_control(reactor, timeout=0.3)
    yield dead
    await dead.close()


@pytest_twisted.async_yield_fixture()
async def members(reactor):
    """Makes memberships and stops those still running at the end."""
    made = []

    def make(control, clock=None, node_id="n1", ttl=1.5, renew_interval=0.3):
        member = NodeMembership(
            control,
            clock or reactor,
            node_id=node_id,
            url=f"http://{node_id}.test:3201",
            ttl=ttl,
            renew_interval=renew_interval,
        )
        made.append(member)
        return member

    yield make
    for member in made:
        if member.running:
            await member.stopService()


async def start(member):
    member.startService()
    await member.started


def record_events(member):
    events = []
    member.add_listener(events.append)
    return events


async def lease(control, node_id):
    """The node's lease as Redis has it: (epoch or None, PTTL)."""
    key = control.key("node", node_id)
    return await control.redis.hget(key, "epoch"), await control.eval("return redis.call('PTTL', KEYS[1])", [key], [])


@pytest_twisted.ensureDeferred
async def test_a_live_id_is_refused_until_its_holder_unregisters(reactor, control, members):
    first = members(control)
    await start(first)
    assert first.registered and first.valid() and first.fresh  # the first node of an empty Redis

    link = Link(control)
    second = members(link)
    second.startService()
    await until(reactor, lambda: link.answers >= 1, what="the second node's first REGISTER answered")
    assert not second.registered and not second.started.called
    assert (await lease(control, "n1"))[0] == first.epoch

    await first.stopService()
    await until(reactor, lambda: second.started.called, what="second node registered")
    await second.started
    assert second.registered and second.epoch != first.epoch and not second.fresh
    assert (await lease(control, "n1"))[0] == second.epoch


@pytest_twisted.ensureDeferred
async def test_a_duplicate_node_id_refuses_to_start_naming_the_key(control, members):
    await start(members(control, ttl=1.0, renew_interval=0.2))
    duplicate = members(control, ttl=1.0, renew_interval=0.2)
    with pytest.raises(ConfigError) as refused:
        await duplicate.start()
    assert str(refused.value).startswith("cluster.node_id:")
    assert "another process runs as that node" in str(refused.value)
    assert not duplicate.registered


@pytest_twisted.ensureDeferred
async def test_renewal_fencing_and_reregistration(reactor, control, unreachable, members):
    link = Link(control)
    member = members(link, ttl=1.5, renew_interval=0.3)
    await start(member)
    epoch = member.epoch
    events = record_events(member)
    leases_at_fence = []

    def on_fenced(event):
        if event == FENCED:
            # The deadline passes while Redis still holds the lease: a new owner can only
            # start after this node stopped acting.
            leases_at_fence.append((member.valid(), Deferred.fromCoroutine(lease(control, "n1"))))

    member.add_listener(on_fenced)

    await deferLater(reactor, 3 * member.ttl)  # renewals keep the lease past several ttl
    assert member.valid() and member.epoch == epoch and events == []
    assert (await lease(control, "n1"))[0] == epoch

    link.target = unreachable  # the node is cut off from Redis: renewals time out
    await until(reactor, lambda: events, what="fenced")
    assert events == [FENCED]
    valid_then, lease_then = leases_at_fence[0]
    held_epoch, pttl = await lease_then
    assert not valid_then and held_epoch == epoch and pttl > 0
    assert member.renew_failures >= 1

    await until(
        reactor,
        lambda: Deferred.fromCoroutine(lease(control, "n1")).addCallback(lambda e: e[1] == -2),
        what="lease expired",
    )
    link.target = control
    await until(reactor, lambda: REGISTERED in events, what="registered again")
    assert events == [FENCED, LOST, REGISTERED]
    assert member.valid() and member.epoch != epoch
    assert (await lease(control, "n1"))[0] == member.epoch


@pytest_twisted.ensureDeferred
async def test_the_deadline_passes_even_when_redis_never_answers(reactor, control, unreachable, members):
    clock = Clock()
    link = Link(control)
    member = members(link, clock=clock, ttl=2.0, renew_interval=0.4)
    await start(member)
    events = record_events(member)
    assert member.deadline == 2.0 - 0.5  # send time 0 + ttl - margin

    link.target = unreachable
    clock.advance(0.4)  # a RENEW goes out and hangs
    assert link.calls == 2 and link.answers == 1
    clock.advance(1.0)
    assert member.valid() and events == []
    clock.advance(0.1)
    assert not member.valid() and events == [FENCED]

    await until(reactor, lambda: link.answers == 2, what="the hanging RENEW failed")
    assert member.renew_failures == 1
    link.target = control


@pytest_twisted.ensureDeferred
async def test_calls_to_an_unreachable_redis_fail_within_the_timeout(reactor, unreachable):
    for call in (lambda: unreachable.eval("return 1", [], []), lambda: Deferred.fromCoroutine(unreachable.time())):
        d = call()
        watchdog = reactor.callLater(10 * unreachable.timeout, d.cancel)  # a hang fails as CancelledError
        with pytest.raises(CoordinationUnavailable, match=r"within 0\.3 s"):
            await d
        assert watchdog.active()
        watchdog.cancel()


@pytest_twisted.ensureDeferred
async def test_draining_is_published_in_the_lease(control, members):
    member = members(control)
    await start(member)
    key = control.key("node", "n1")
    assert await control.redis.hget(key, "draining") == "0"
    await member.set_draining()
    assert await control.redis.hget(key, "draining") == "1"
    await member.stopService()
    assert (await lease(control, "n1")) == (None, -2)
    assert not await control.redis.sismember(control.key("nodes"), "n1")
