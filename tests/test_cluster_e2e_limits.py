"""Cluster mode end to end, shared rate limits and events (design §8, C5 and C6): three real
``twistd mcproxy`` nodes on a Redis of their own, requests rotated over the nodes as a
round-robin balancer would send them. Every process is started and stopped by its PID."""

import re

import pytest_twisted
import treq

from mcproxy.auth.tokens import parse_token
from mcproxy.testing.cluster import Cluster
from mcproxy.testing.daemon import open_legacy_stream

RATE, BURST = 5.0, 5
WAIT = 15.0
"""Seconds a step may take before the test gives up (a bound, not a measure)."""
POLL = 5.0
"""The revocation poll's interval (`mcproxy.session.revocation.CHECK_INTERVAL`)."""


@pytest_twisted.async_yield_fixture(scope="module")
async def cluster(reactor, tmp_path_factory):
    """Three nodes, each with ``user_rate=5, user_burst=5``."""
    running = Cluster.create(
        reactor, tmp_path_factory.mktemp("cluster"), ratelimit={"user_rate": RATE, "user_burst": BURST}
    )
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_c5_a_users_rate_limit_is_shared_by_the_nodes(reactor, cluster):
    token = await cluster.token_for("c5-user")  # made with the admin's bucket: c5-user's is full
    start = reactor.seconds()
    answers = [await cluster.proxy(number % 3).call_tool(token, "list_pages", rid=number) for number in range(20)]
    elapsed = reactor.seconds() - start
    accepted = [a for a in answers if "result" in a]
    refused = [a for a in answers if "result" not in a]
    # Exactly the burst, plus what refilled while the calls ran (5 a second). Limited by
    # each node alone, or counted again by the owner, the count would be off.
    assert BURST <= len(accepted) <= BURST + int(elapsed * RATE), (len(accepted), elapsed)
    assert refused and all(a["error"]["code"] == "rate_limited" for a in refused), refused[:3]
    for number in range(BURST + 2):  # the bucket is empty again after at most this many
        code, body, headers = await cluster.api("GET", "/api/users/c5-user/status", token=token, node=number % 3)
        if code == 429:
            break
    assert code == 429 and body["error"]["code"] == "rate_limited", (code, body)
    assert int(headers.getRawHeaders("retry-after")[0]) >= 1


async def events_seen(cluster: Cluster, node: int, kind: str) -> float:
    """``mcproxy_cluster_events_total{type=kind}`` of node ``node``, from its /metrics."""
    response = await treq.get(
        cluster.base_urls[node] + "/metrics",
        headers={"Authorization": f"Bearer {cluster.admin_token}"},
        persistent=False,
    )
    text = (await response.content()).decode()
    match = re.search(rf'^mcproxy_cluster_events_total\{{type="{kind}"\}} (\S+)$', text, re.M)
    assert match, text[:2000]
    return float(match.group(1))


@pytest_twisted.ensureDeferred
async def test_c6_a_token_revoked_through_n3_ends_its_stream_on_n1_and_is_refused_everywhere(reactor, cluster):
    token = await cluster.token_for("c6-user")
    _, ended = await open_legacy_stream(reactor, cluster.base_urls[0], token, WAIT)
    before = await events_seen(cluster, 0, "token_revoked")
    code, _, _ = await cluster.api("DELETE", f"/api/tokens/{parse_token(token)}", node=2)
    assert code == 204
    # Well before the revocation poll could have ended it.
    await ended.addTimeout(POLL / 2, reactor)
    assert await events_seen(cluster, 0, "token_revoked") == before + 1
    for node in range(3):
        code, body, _ = await cluster.api("GET", "/api/users/c6-user/status", token=token, node=node)
        assert code == 401, body
