"""Two cluster nodes in one process, on a Redis of their own: the per-user rate limit is
shared (and a forwarded request is counted once), and a token revoked through one node ends
its streams on the other at once, without waiting for the revocation poll."""

import os
import signal
import socket
import subprocess

import pytest_twisted
from twisted.internet.defer import Deferred

from mcproxy.auth.tokens import parse_token
from mcproxy.reload import ConfigSource
from mcproxy.service import MCProxyService
from mcproxy.session.revocation import RevocationWatch
from mcproxy.testing.daemon import RunningProxy, open_legacy_stream
from mcproxy.testing.tool_calls import until

SECRET = "s" * 40
WAIT = 10.0
"""Seconds a step may take before the test gives up (a bound, not a measure)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(node_id: str, redis_url: str, data_dir, user_burst: int = 5) -> str:
    """The TOML configuration of one node (a file, so that a live reload can read it again)."""
    return f"""
[server]
listen = ["tcp:0:interface=127.0.0.1"]
data_dir = "{data_dir}"
[store]
url = "{redis_url}"
[audit]
path = "{data_dir}/audit.jsonl"
[ratelimit]
user_rate = 0.01
user_burst = {user_burst}
[cluster]
enabled = true
node_id = "{node_id}"
internal_listen = "tcp:{free_port()}:interface=127.0.0.1"
secret = "{SECRET}"
"""


@pytest_twisted.async_yield_fixture()
async def nodes(reactor, tmp_path):
    """n1 and n2 on a redis-server of their own (cluster keys have no per-test prefix)."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    started: list[RunningProxy] = []
    try:
        await until(reactor, lambda: _answers(port), WAIT, what="redis-server up")
        for node_id in ("n1", "n2"):
            data_dir = tmp_path / node_id
            data_dir.mkdir()
            path = data_dir / "mcproxy.toml"
            path.write_text(node_config(node_id, url, data_dir))
            source = ConfigSource(str(path))
            service = MCProxyService.from_config(reactor, source.load(), source)
            await service.start()
            # The first node made the admin token; the others find one in the shared store.
            admin_token = (tmp_path / "n1" / "admin-token").read_text().strip()
            base = f"http://127.0.0.1:{service.ports[0].getHost().port}"
            started.append(RunningProxy(service=service, base_url=base, admin_token=admin_token))
        yield started
    finally:
        for proxy in reversed(started):
            await proxy.stop()
        os.kill(server.pid, signal.SIGTERM)
        server.wait(10)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest_twisted.ensureDeferred
async def test_a_users_rate_limit_holds_across_nodes(reactor, nodes):
    n1, n2 = nodes
    token = await n1.token_for("bob")
    answers = [await (n1, n2)[i % 2].call_tool(token, "list_pages", rid=i) for i in range(12)]
    accepted = [a for a in answers if a.get("jsonrpc") == "2.0" and "result" in a]
    refused = [a for a in answers if a not in accepted]
    # With 0.01 tokens a second, the burst of 5 is all there is: each request, forwarded or
    # not, took one token once (the owner does not count a forwarded request again).
    assert len(accepted) == 5, answers
    assert all(a["error"]["code"] == "rate_limited" for a in refused), refused
    code, body, headers = await n2.api("GET", "/api/users/bob/status", token=token)
    assert code == 429 and body["error"]["code"] == "rate_limited"
    assert int(headers.getRawHeaders("retry-after")[0]) >= 1
    owner, edge = n1, n2  # the first request reached n1, which claimed bob
    assert owner.service.cluster.owns("bob")
    metric = owner.service.metrics.registry.get_sample_value
    assert metric("mcproxy_owned_users") == 1 and metric("mcproxy_fenced") == 0
    assert metric("mcproxy_lease_renew_failures_total") == 0
    metric = edge.service.metrics.registry.get_sample_value
    assert metric("mcproxy_owned_users") == 0
    # The accepted requests it took (the 2nd and 4th); refused ones are answered at the edge.
    assert metric("mcproxy_forwarded_requests_total", {"outcome": "ok"}) == 2
    for proxy in nodes:
        assert proxy.service.metrics.registry.get_sample_value("mcproxy_ratelimit_fallback_total") == 0


@pytest_twisted.ensureDeferred
async def test_a_token_revoked_through_one_node_ends_its_streams_everywhere(reactor, nodes):
    n1, n2 = nodes
    for proxy in nodes:  # no poll: only the revocation event can end the streams
        for part in proxy.service:
            if isinstance(part, RevocationWatch):
                part.stopService()
    token = await n1.token_for("carol")
    _, direct = await open_legacy_stream(reactor, n1.base_url, token, WAIT)  # carol's owner is n1 now
    _, piped = await open_legacy_stream(reactor, n2.base_url, token, WAIT)  # through n2, to the owner
    assert n1.service.cluster.owns("carol")
    assert n1.service.sessions.count_for_user("carol") == 2
    code, _, _ = await n2.api("DELETE", f"/api/tokens/{parse_token(token)}")
    assert code == 204
    ended = Deferred.fromCoroutine(_both(direct, piped))
    await ended.addTimeout(WAIT, reactor)
    assert n1.service.sessions.count_for_user("carol") == 0
    for proxy in nodes:
        code, body, _ = await proxy.api("GET", "/api/users/carol/status", token=token)
        assert code == 401 and body["error"]["code"] in ("unauthorized", "token_revoked", "invalid_token"), body
    registry = n1.service.metrics.registry
    assert registry.get_sample_value("mcproxy_cluster_events_total", {"type": "token_revoked"}) == 1
    assert registry.get_sample_value("mcproxy_cluster_node_info", {"node": "n1"}) == 1


async def _both(*streams: Deferred) -> None:
    for stream in streams:
        await stream


@pytest_twisted.ensureDeferred
async def test_a_reload_through_one_node_reloads_the_others(reactor, nodes):
    for proxy in nodes:  # the operator changed every node's file
        path = proxy.service.source.path
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("user_burst = 5", "user_burst = 9"))
    n1, n2 = nodes
    code, body, _ = await n1.api("POST", "/api/admin/reload")
    assert code == 200 and body["reloaded"], body
    assert n1.service.config.ratelimit.user_burst == 9
    await until(reactor, lambda: n2.service.config.ratelimit.user_burst == 9, WAIT, what="n2 reloaded")
    assert n2.service.cluster.limits._user == (0.01, 9)  # the shared limits took the new burst
    registry = n2.service.metrics.registry
    assert registry.get_sample_value("mcproxy_cluster_events_total", {"type": "reload"}) == 1
    assert n1.service.metrics.registry.get_sample_value("mcproxy_cluster_events_total", {"type": "reload"}) == 0
