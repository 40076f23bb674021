"""Live reload: what may change while running, and a real daemon reloaded by API and SIGHUP."""

import json

import pytest
import pytest_twisted
import treq
from test_drain import open_page
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from mcproxy.auth.ratelimit import RequestLimits
from mcproxy.browser.policy import PolicyBook
from mcproxy.config import BrowsingConfig, Config, ConfigError, RateLimitConfig
from mcproxy.errors import RateLimited
from mcproxy.reload import ConfigSource, plan
from mcproxy.testing.process import Daemon
from mcproxy.testing.tool_calls import sleep

# -- What a reload changes, without a daemon ---------------------------------------------------


def test_plan_applies_live_keys_and_keeps_the_others():
    running = Config()
    new = Config().replace(
        ratelimit={"user_rate": 5.0},
        cors={"allowed_origins": ["https://ide.example"]},
        server={"log_level": "warn", "data_dir": "/elsewhere"},
        store={"url": "memory:"},
    )
    effective, applied, restart_needed = plan(running, new)
    assert applied == ["server.log_level", "ratelimit.user_rate", "cors.allowed_origins"]
    assert restart_needed == ["server.data_dir", "store.url"]
    assert effective.ratelimit.user_rate == 5.0 and effective.server.log_level == "warn"
    assert effective.server.data_dir == running.server.data_dir and effective.store.url == running.store.url
    assert plan(running, Config()) == (running, [], [])


def test_config_source_reads_file_environment_and_flags_again(tmp_path):
    path = tmp_path / "mcproxy.toml"
    path.write_text("[ratelimit]\nuser_rate = 3.0\nuser_burst = 4\n")
    source = ConfigSource(str(path), {"MCPROXY_RATELIMIT_USER_BURST": "9"}, {"store": {"url": "memory:"}})
    assert (source.load().ratelimit.user_rate, source.load().ratelimit.user_burst) == (3.0, 9)
    path.write_text("[ratelimit]\nuser_rate = 7.0\n")
    config = source.load()
    assert (config.ratelimit.user_rate, config.ratelimit.user_burst, config.store.url) == (7.0, 9, "memory:")
    path.write_text('[server]\nlog_level = "loud"\n')
    with pytest.raises(ConfigError, match=r"^server\.log_level: expected one of debug, info, warn, error"):
        source.load()


def test_rate_limits_reconfigure_keeps_what_was_spent():
    clock = Clock()
    limits = RequestLimits(clock, RateLimitConfig(user_rate=1.0, user_burst=2, limits=("tool:click=1/1",)))
    limits.check_user("alice", "mcp")
    limits.check_user("alice", "mcp")
    limits.check_tool("alice", "click")
    with pytest.raises(RateLimited):
        limits.check_user("alice", "mcp")
    limits.reconfigure(Config(ratelimit=RateLimitConfig(user_rate=1.0, user_burst=3, limits=("tool:click=1/2",))))
    limits.check_user("alice", "mcp")  # the bigger burst is there at once...
    with pytest.raises(RateLimited):  # ...but what alice spent stays spent
        limits.check_user("alice", "mcp")
    limits.check_tool("alice", "click")  # the tool bucket grew by one
    with pytest.raises(RateLimited):
        limits.check_tool("alice", "click")
    clock.advance(3)
    for _ in range(3):
        limits.check_user("alice", "mcp")
    limits.reconfigure(Config(ratelimit=RateLimitConfig(user_rate=1.0, user_burst=3)))
    for _ in range(5):
        limits.check_tool("alice", "click")  # no limit of its own any more
    with pytest.raises(ValueError, match="is not KIND:NAME=RATE/BURST"):
        limits.reconfigure(Config(ratelimit=RateLimitConfig(limits=("tool:click=fast",))))
    with pytest.raises(RateLimited):  # the refused configuration changed nothing
        limits.check_user("alice", "mcp")


def test_browsing_policy_reconfigure_applies_to_the_next_check():
    book = PolicyBook(BrowsingConfig(deny=("blocked.example",)))
    assert book.policy_for("alice").refusal("https://blocked.example/") is not None
    book.reconfigure(
        Config(browsing=BrowsingConfig(deny=("other.example",), user_rules=("alice deny blocked.example",)))
    )
    assert book.policy_for("bob").refusal("https://blocked.example/") is None
    assert (
        book.policy_for("alice").refusal("https://blocked.example/") == 'the host "blocked.example" is on the deny list'
    )


# -- A real daemon -----------------------------------------------------------------------------


class SseReader:
    """Reads a legacy ``GET /sse`` stream as it arrives."""

    def __init__(self, response):
        self.text = ""
        self.ended = treq.collect(response, self._chunk)
        self.ended.addErrback(lambda _: None)  # cut when the daemon is killed at the end

    def _chunk(self, data: bytes) -> None:
        self.text += data.decode("utf-8")

    async def wait_for(self, reactor, needle: str, seconds: float = 10) -> None:
        for _ in range(int(seconds / 0.05)):
            if needle in self.text:
                return
            await sleep(reactor, 0.05)
        raise AssertionError(f"{needle!r} never arrived on the stream: {self.text!r}")


def _message(rid: int, method: str, params: dict | None = None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}).encode()


INITIALIZE = {
    "protocolVersion": "2024-11-05",
    "capabilities": {},
    "clientInfo": {"name": "reload-test", "version": "1"},
}


@pytest_twisted.ensureDeferred
async def test_reload_by_api_changes_rate_limits_without_dropping_an_sse_session(reactor, tmp_path):
    daemon = Daemon(reactor, tmp_path, ratelimit={"user_rate": 0.001, "user_burst": 3})
    try:
        proxy = await daemon.start()
        token = await proxy.token_for("alice")
        auth = {"Authorization": f"Bearer {token}"}
        stream = await treq.get(daemon.base_url + "/sse", headers=auth, unbuffered=True, persistent=False)
        assert stream.code == 200
        sse = SseReader(stream)
        await sse.wait_for(reactor, "event: endpoint")
        endpoint = sse.text.split("data: ", 1)[1].split("\n", 1)[0]
        post = {**auth, "Content-Type": "application/json"}

        async def send(rid, method, params=None) -> int:
            response = await treq.post(
                daemon.base_url + endpoint, _message(rid, method, params), headers=post, persistent=False
            )
            await response.content()
            return response.code

        assert await send(1, "initialize", INITIALIZE) == 202
        await sse.wait_for(reactor, '"id":1')
        assert await send(2, "ping") == 202  # the stream, initialize and this ping: alice's burst of 3
        assert await send(3, "ping") == 429
        daemon.write_config(ratelimit={"user_rate": 100.0, "user_burst": 100}, browser={"health_interval": 31.0})
        code, body, _ = await proxy.api("POST", "/api/admin/reload")
        assert (code, body) == (200, {"reloaded": True, "restartNeeded": ["browser.health_interval"]})
        assert await send(4, "ping") == 202
        await sse.wait_for(reactor, '"id":4,"result":{}')
        assert '"id":2,"result":{}' in sse.text and '"id":3' not in sse.text
        assert not sse.ended.called  # the same session, never dropped
        code, body, _ = await proxy.api("POST", "/api/admin/reload", token=token)
        assert code == 403 and body["error"]["code"] == "forbidden"
    finally:
        daemon.stop()
    messages = daemon.messages()
    assert any("browser.health_interval changed: it needs a restart" in m for m in messages), messages
    assert any(
        "Configuration reloaded from" in m and "ratelimit.user_rate, ratelimit.user_burst" in m for m in messages
    )


@pytest_twisted.ensureDeferred
async def test_sighup_with_a_broken_config_keeps_the_running_one(reactor, tmp_path):
    daemon = Daemon(reactor, tmp_path, ratelimit={"user_rate": 0.001, "user_burst": 2})
    try:
        proxy = await daemon.start()
        token = await proxy.token_for("alice")
        # A bigger burst, but also an invalid key: nothing of it may apply.
        daemon.write_config(ratelimit={"user_rate": 0.001, "user_burst": 100}, tools={"tab_scope": "everything"})
        refused = daemon.line_with("reload refused")
        daemon.signal("HUP")
        line = await refused
        assert "tools.tab_scope" in line and "everything" in line
        answers = [await proxy.call_tool(token, "list_pages", rid=n) for n in range(3)]
        assert [("error" in a) for a in answers[:2]] == [False, False]
        assert answers[2]["error"]["code"] == "rate_limited"  # still the burst of 2
        code, body, _ = await proxy.api("POST", "/api/admin/reload")
        assert code == 400 and body["error"]["code"] == "invalid_config"
        assert body["error"]["message"].startswith("tools.tab_scope: ")
        daemon.write_raw("[server\nlisten = ")
        refused = daemon.line_with("not valid TOML")
        daemon.signal("HUP")
        assert "reload refused" in await refused
        health = await treq.get(daemon.base_url + "/health", persistent=False)
        assert health.code == 200
        await health.content()
    finally:
        daemon.stop()
    assert any("Reopened the audit log" in m for m in daemon.messages())


@pytest_twisted.ensureDeferred
async def test_sighup_while_tool_calls_run_lets_them_finish(reactor, tmp_path, chromium, fixture_site):
    daemon = Daemon(reactor, tmp_path)
    try:
        proxy = await daemon.start()
        token = await proxy.token_for("alice")
        await proxy.register("alice", chromium.browser_url, token)
        pages = [
            await open_page(proxy, token, fixture_site.url(f"drain_late_text.html?ms=2000&n={n}")) for n in range(2)
        ]
        calls = [
            Deferred.fromCoroutine(
                proxy.call_tool(
                    token, "wait_for", {"pageId": page, "text": ["Late text arrived"], "timeout": 15000}, rid=n
                )
            )
            for n, page in enumerate(pages)
        ]
        await sleep(reactor, 0.5)
        daemon.write_config(ratelimit={"user_rate": 30.0}, tools={"navigation_timeout": 12.0})
        reloaded = daemon.line_with("Configuration reloaded")
        daemon.signal("HUP")
        assert "ratelimit.user_rate, tools.navigation_timeout" in await reloaded
        assert not any(call.called for call in calls)
        answers = await gatherResults(calls)
        for page, answer in zip(pages, answers, strict=True):
            assert not answer["result"].get("isError"), answer
            assert "Late text arrived" in answer["result"]["content"][0]["text"]
            await proxy.call_tool(token, "close_page", {"pageId": page}, rid="close")
    finally:
        daemon.stop()


@pytest_twisted.ensureDeferred
async def test_reload_changes_the_log_level(reactor, tmp_path):
    daemon = Daemon(reactor, tmp_path)
    try:
        proxy = await daemon.start()
        daemon.write_config(server={"log_level": "error"})
        assert (await proxy.api("POST", "/api/admin/reload"))[0] == 200
        await proxy.token_for("quiet")
        daemon.write_config(server={"log_level": "info"})
        assert (await proxy.api("POST", "/api/admin/reload"))[0] == 200
        created = daemon.line_with("Created API token")
        await proxy.token_for("loud")
        assert "for user loud" in await created
    finally:
        daemon.stop()
    messages = daemon.messages()
    assert not any("for user quiet" in m for m in messages)
    assert any("server.log_level" in m and "Configuration reloaded" in m for m in messages)


@pytest_twisted.ensureDeferred
async def test_reload_changes_metrics_networks_and_browser_limits(reactor, tmp_path, chromium):
    from mcproxy.reload import ConfigSource
    from mcproxy.testing.daemon import start_proxy

    proxy = await start_proxy(reactor, tmp_path)
    try:
        scrape = await treq.get(proxy.base_url + "/metrics", persistent=False)
        await scrape.content()
        assert scrape.code == 401
        base = {
            "server": {"listen": ["tcp:0:interface=127.0.0.1"], "data_dir": str(tmp_path)},
            "store": {"url": "memory:"},
            "audit": {"path": str(tmp_path / "audit.jsonl")},
        }
        proxy.service.source = ConfigSource(
            environ={},
            overrides={
                **base,
                "metrics": {"allowed_networks": ["127.0.0.0/8"]},
                "limits": {"max_users": 1, "max_pages_per_user": 3},
            },
        )
        assert proxy.service.reload() == []
        scrape = await treq.get(proxy.base_url + "/metrics", persistent=False)
        assert scrape.code == 200 and "mcproxy_tool_calls_in_flight" in await scrape.text()
        alice = await proxy.token_for("alice")
        bob = await proxy.token_for("bob")
        await proxy.register("alice", chromium.browser_url, alice)
        code, body, _ = await proxy.api(
            "POST", "/api/register", {"userId": "bob", "browserURL": chromium.browser_url}, bob
        )
        assert code == 503 and "limits.max_users" in body["error"]["message"]
    finally:
        await proxy.stop()
