"""Rate limits and client addresses: unit level, then against a running daemon."""

import pytest
import pytest_twisted
import treq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from mcproxy.auth.ratelimit import RequestLimits
from mcproxy.config import ConfigError, RateLimitConfig, load, parse_limit
from mcproxy.errors import Forbidden, RateLimited
from mcproxy.testing.daemon import start_proxy
from mcproxy.web.network import ClientPolicy


def test_limit_syntax():
    assert parse_limit("tool:take_screenshot=0.5/5") == ("tool", "take_screenshot", 0.5, 5)
    assert parse_limit(" endpoint:admin=2/4 ") == ("endpoint", "admin", 2.0, 4)
    for bad, why in (
        ("take_screenshot=1/2", "KIND:NAME=RATE/BURST"),
        ("user:alice=1/2", "kind must be one of"),
        ("endpoint:sse=1/2", "endpoint classes are mcp, admin"),
        ("tool:click=0/2", "rate must be positive"),
        ("tool:click=1.2.3/2", "not a number"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_limit(bad)
    with pytest.raises(ConfigError, match=r"^ratelimit\.limits: "):
        load(None, environ={"MCPROXY_RATELIMIT_LIMITS": "tool:click=1/2,nonsense"})


def test_buckets_by_address_user_class_and_tool():
    clock = Clock()
    limited = []
    config = RateLimitConfig(
        user_rate=10, user_burst=3, address_rate=1, address_burst=2, limits=("endpoint:admin=1/1", "tool:click=1/1")
    )
    limits = RequestLimits(clock, config, on_limited=limited.append)
    limits.check_address("10.0.0.1")
    limits.check_address("10.0.0.1")
    with pytest.raises(RateLimited):
        limits.check_address("10.0.0.1")
    limits.check_address("10.0.0.2")  # another address has its own bucket
    limits.check_user("alice", "admin")
    with pytest.raises(RateLimited) as caught:
        limits.check_user("alice", "admin")
    assert caught.value.retry_after == 1
    limits.check_user("alice", "mcp")  # the user's bucket still has room
    limits.check_tool("alice", "click")
    with pytest.raises(RateLimited):
        limits.check_tool("alice", "click")
    limits.check_tool("bob", "click")
    for _ in range(5):
        limits.check_tool("alice", "take_snapshot")  # no limit of its own
    assert limited == ["address", "endpoint", "tool"]


def _request(peer: str, *forwarded: str) -> DummyRequest:
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", peer, 50000)
    for value in forwarded:
        request.requestHeaders.addRawHeader(b"x-forwarded-for", value.encode())
    return request


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    policy = ClientPolicy(trusted_proxies=["10.0.0.0/8"])
    assert policy.client_address(_request("192.0.2.7", "203.0.113.9")) == "192.0.2.7"
    assert policy.client_address(_request("10.1.1.1", "203.0.113.9")) == "203.0.113.9"
    # A client cannot hide behind a forged left part of the chain.
    assert policy.client_address(_request("10.1.1.1", "1.2.3.4, 203.0.113.9, 10.2.2.2")) == "203.0.113.9"
    assert policy.client_address(_request("10.1.1.1", "1.2.3.4", "203.0.113.9")) == "203.0.113.9"
    assert policy.client_address(_request("10.1.1.1", "garbage, 203.0.113.9")) == "203.0.113.9"
    assert policy.client_address(_request("10.1.1.1", "garbage")) == "10.1.1.1"
    assert policy.client_address(_request("10.1.1.1")) == "10.1.1.1"
    assert policy.client_address(_request("::ffff:10.1.1.1", "203.0.113.9")) == "203.0.113.9"
    assert ClientPolicy().client_address(_request("10.1.1.1", "203.0.113.9")) == "10.1.1.1"


def test_address_lists():
    policy = ClientPolicy(ip_allow=["192.0.2.0/24"], ip_deny=["192.0.2.66/32"])
    policy.admit("192.0.2.1")
    for refused in ("192.0.2.66", "198.51.100.1", "not-an-address"):
        with pytest.raises(Forbidden) as caught:
            policy.admit(refused)
        assert caught.value.code == "address_denied"
    ClientPolicy().admit("198.51.100.1")


@pytest_twisted.async_yield_fixture
async def limited_proxy(reactor, tmp_path):
    proxy = await start_proxy(
        reactor,
        tmp_path,
        ratelimit={"user_rate": 1.0, "user_burst": 5, "limits": ["tool:list_pages=0.01/1"]},
    )
    yield proxy
    await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_a_flooding_user_is_limited_and_others_are_not(limited_proxy):
    alice = await limited_proxy.token_for("alice")
    bob = await limited_proxy.token_for("bob")
    codes = []
    for _ in range(40):
        code, body, headers = await limited_proxy.api("GET", "/api/users/alice/status", token=alice)
        codes.append(code)
    assert codes.count(429) >= 30, codes
    assert body["error"]["code"] == "rate_limited"
    assert int(headers.getRawHeaders("retry-after")[0]) >= 1
    code, _, _ = await limited_proxy.api("GET", "/api/users/bob/status", token=bob)
    assert code in (200, 404)  # bob's bucket is untouched


@pytest_twisted.ensureDeferred
async def test_a_tool_over_its_limit_is_a_jsonrpc_error(limited_proxy):
    token = await limited_proxy.token_for("carol")
    answers = [await limited_proxy.call_tool(token, "list_pages", rid=rid) for rid in (1, 2)]
    # The first call is counted and runs (carol has no browser: a tool error says so).
    assert (
        answers[0]["result"]["isError"] is True
        and "No browser is registered" in answers[0]["result"]["content"][0]["text"]
    )
    error = answers[1]["error"]
    assert error["code"] == -32029 and "retry in" in error["message"] and error["data"]["retryAfter"] >= 1


def test_network_bound_credentials():
    from mcproxy.auth.principal import Principal

    bound = Principal("alice", frozenset({"tools:*", "net:10.0.0.0/8", "net:2001:db8::/32"}))
    assert bound.may_connect_from("10.1.2.3") and bound.may_connect_from("::ffff:10.1.2.3")
    assert bound.may_connect_from("2001:db8::7")
    assert not bound.may_connect_from("192.0.2.1") and not bound.may_connect_from(None)
    assert not bound.may_connect_from("unix")
    assert Principal("bob", frozenset({"tools:*"})).may_connect_from("192.0.2.1")


@pytest_twisted.ensureDeferred
async def test_a_token_bound_to_other_networks_is_refused_here(limited_proxy):
    elsewhere = await limited_proxy.token_for("dora", "tools:*", "net:10.0.0.0/8")
    here = await limited_proxy.token_for("dora", "tools:*", "net:127.0.0.0/8")
    code, body, _ = await limited_proxy.api("GET", "/api/users/dora/status", token=elsewhere)
    assert code == 403 and body["error"]["code"] == "address_denied"
    answer = await limited_proxy.call_tool(elsewhere, "list_pages")
    assert answer["error"]["code"] == "address_denied"  # refused over HTTP before any JSON-RPC
    code, _, _ = await limited_proxy.api("GET", "/api/users/dora/status", token=here)
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_a_thousand_requests_in_a_second_from_one_user(reactor, tmp_path):
    from twisted.internet.defer import gatherResults
    from twisted.web.client import Agent, HTTPConnectionPool

    proxy = await start_proxy(
        reactor, tmp_path, ratelimit={"user_rate": 20.0, "user_burst": 40, "address_rate": 1e6, "address_burst": 10**6}
    )
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 50
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    try:
        alice = await proxy.token_for("alice")
        bob = await proxy.token_for("bob")
        headers = {"Authorization": [f"Bearer {alice}"]}

        async def worker():
            """40 requests back to back on one kept-alive connection."""
            seen = []
            for _ in range(40):
                response = await client.get(proxy.base_url + "/api/users/alice/status", headers=headers)
                await response.content()
                seen.append(response.code)
            return seen

        # 25 clients at once: 1,000 requests, far more than 20 a second. What gets through is
        # the burst plus what the bucket refilled while they ran, however long that took.
        started = reactor.seconds()
        answers = await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(25)])
        elapsed = reactor.seconds() - started
        codes = [code for seen in answers for code in seen]
        assert set(codes) <= {404, 429}, sorted(set(codes))
        assert 40 <= codes.count(404) <= 40 + 20 * elapsed + 1, (codes.count(404), elapsed)
        code, _, _ = await proxy.api("GET", "/api/users/bob/status", token=bob)
        assert code == 404  # bob is served as usual
    finally:
        await pool.closeCachedConnections()
        await proxy.stop()
