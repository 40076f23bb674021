"""limits.*: sessions per user and per process, pages per user, users per process."""

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from mcproxy.browser.pool import BrowserPool
from mcproxy.config import BrowserConfig, ConfigError, load
from mcproxy.errors import LimitReached, ServerFull
from mcproxy.session.registry import SessionRegistry
from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok


def test_sessions_per_user_and_in_total():
    sessions = SessionRegistry(Clock(), 60, max_per_user=2, max_total=3)
    first = sessions.create("alice", "sse")
    sessions.create("alice", "streamable")
    with pytest.raises(LimitReached, match=r"limits\.max_sessions_per_user") as caught:
        sessions.create("alice", "sse")
    assert caught.value.http_status == 429
    sessions.create("bob", "sse")
    with pytest.raises(ServerFull, match=r"limits\.max_sessions\b") as caught:
        sessions.create("carol", "sse")
    assert caught.value.http_status == 503
    sessions.close(first.id)
    sessions.create("carol", "sse")  # room again
    unlimited = SessionRegistry(Clock(), 60)
    for _ in range(50):
        unlimited.create("alice", "sse")


def test_users_per_process():
    pool = BrowserPool(Clock(), BrowserConfig(), http_client=object(), max_users=1)
    pool._browsers["alice"] = object()  # alice's browser is held
    pool.check_room("alice")
    with pytest.raises(ServerFull, match=r"limits\.max_users"):
        pool.check_room("bob")
    with pytest.raises(ServerFull):
        pool.browser_for("bob", "http://127.0.0.1:9222")


def test_negative_limits_are_refused():
    with pytest.raises(ConfigError, match=r"^limits\.max_pages_per_user: "):
        load(None, environ={"MCPROXY_LIMITS_MAX_PAGES_PER_USER": "-1"})


@pytest_twisted.ensureDeferred
async def test_pages_per_user(reactor, user_browser, fixture_site):
    user_browser.max_pages = 2
    tools = make_registry(reactor, user_browser)
    context = make_context()
    for _ in range(2):
        await ok(tools, context, "new_page", url=fixture_site.page("second.html"))
    message = await failed(tools, context, "new_page", url=fixture_site.page("second.html"))
    assert "limits.max_pages_per_user" in message and "close_page" in message


@pytest_twisted.ensureDeferred
async def test_a_full_process_says_so_over_http(reactor, tmp_path, chromium):
    import treq

    proxy = await start_proxy(reactor, tmp_path, limits={"max_sessions_per_user": 1, "max_users": 1})
    try:
        alice = await proxy.token_for("alice")
        bob = await proxy.token_for("bob")
        await proxy.register("alice", chromium.browser_url, alice)
        code, body, _ = await proxy.api(
            "POST", "/api/register", {"userId": "bob", "browserURL": chromium.browser_url}, bob
        )
        assert code == 503 and body["error"]["code"] == "server_full" and "limits.max_users" in body["error"]["message"]
        code, _, _ = await proxy.api("GET", "/api/users/bob/status", token=bob)
        assert code == 404  # nothing was stored for bob
        first = await treq.get(
            proxy.base_url + "/sse", headers={"Authorization": f"Bearer {alice}"}, unbuffered=True, persistent=False
        )
        assert first.code == 200  # the stream stays open until the proxy stops
        second = await treq.get(proxy.base_url + "/sse", headers={"Authorization": f"Bearer {alice}"}, persistent=False)
        body = await second.json()
        assert second.code == 429 and body["error"]["code"] == "limit_reached"
    finally:
        await proxy.stop()
