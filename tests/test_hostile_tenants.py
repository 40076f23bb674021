"""One tenant against another, through the admin API of a running daemon with real Chromium.

Each test is an attack an ordinary user token can try: taking over another user's browser,
widening a credential, rotating someone else's token, or abusing the HTTP API.
"""

import json

import pytest
import pytest_twisted
import treq

from mcproxy.testing.daemon import start_proxy


def _id(token: str) -> str:
    return token.split("_")[1]


async def _ws_url(chromium) -> str:
    response = await treq.get(f"{chromium.browser_url}/json/version", persistent=False)
    return json.loads(await response.content())["webSocketDebuggerUrl"]


async def _register(proxy, token, user_id, url, **extra):
    return await proxy.api("POST", "/api/register", {"userId": user_id, "browserURL": url, **extra}, token)


# -- one browser, one user ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_browser_another_user_holds_is_409_under_every_url_form(proxy, chromium):
    alice = await proxy.token_for("alice")
    bob = await proxy.token_for("bob")
    await proxy.register("alice", chromium.browser_url, alice)
    forms = [
        chromium.browser_url,
        f"http://localhost:{chromium.port}",
        f"http://127.0.0.1:{chromium.port}/",
        await _ws_url(chromium),
        (await _ws_url(chromium)).replace("127.0.0.1", "localhost"),
    ]
    for url in forms:
        code, body, _ = await _register(proxy, bob, "bob", url)
        assert code == 409, (url, body)
        assert body["error"]["code"] == "browser_taken"
        assert "alice" not in body["error"]["message"]  # who holds it is not revealed
    code, body, _ = await proxy.api("GET", "/api/users/bob/status", token=bob)
    assert code == 404
    # Nothing of Alice's changed, and she may register her own browser again.
    code, body, _ = await _register(proxy, alice, "alice", f"http://localhost:{chromium.port}")
    assert code == 201, body


@pytest_twisted.ensureDeferred
async def test_the_same_chrome_run_is_recognised_by_its_browser_id(proxy, chromium):
    """Two listening sockets of one Chrome (the same browser id) are one browser."""
    alice = await proxy.token_for("alice")
    await proxy.register("alice", chromium.browser_url, alice)
    browser = proxy.service.pool.existing("alice")
    await browser.connected(10)
    assert browser.browser_id and browser.browser_id in await _ws_url(chromium)
    assert proxy.service.pool.holder_of(browser.browser_id, besides="bob") == "alice"
    assert proxy.service.pool.holder_of(browser.browser_id, besides="alice") is None


@pytest_twisted.ensureDeferred
async def test_operators_pin_which_browsers_a_user_may_register(reactor, tmp_path, chromium):
    running = await start_proxy(
        reactor,
        tmp_path,
        browser={"user_networks": ["alice 10.9.0.0/16", f"carol http://127.0.0.1:{chromium.port}", "* 127.0.0.0/8"]},
    )
    try:
        for user_id, url, expected in (
            ("alice", chromium.browser_url, 403),  # alice's own entries leave out loopback
            ("carol", f"http://localhost:{chromium.port}", 403),  # not her exact URL
            ("carol", chromium.browser_url, 201),
        ):
            token = await running.token_for(user_id)
            code, body, _ = await _register(running, token, user_id, url)
            assert code == expected, (user_id, url, body)
            if expected == 403:
                assert body["error"]["code"] == "browser_not_allowed"
                assert "browser.user_networks" in body["error"]["message"]
    finally:
        await running.stop()


# -- session tokens are children of the credential that made them ----------------------------


@pytest_twisted.ensureDeferred
async def test_the_session_token_never_widens_its_parent(proxy, chromium):
    code, body, _ = await proxy.api(
        "POST",
        "/api/tokens",
        {"userId": "alice", "permissions": ["register", "tools:*", "!tools:evaluate_script"], "ttlSeconds": 600},
    )
    assert code == 201, body
    parent, parent_expiry = body["token"], body["expiresAt"]
    registered = await proxy.register("alice", chromium.browser_url, parent)
    child = registered["sessionToken"]
    record = await proxy.service.store.get_token(_id(child))
    assert record.parent_id == _id(parent)
    assert record.permissions == ("register", "tools:*", "!tools:evaluate_script")
    parent_record = await proxy.service.store.get_token(_id(parent))
    assert record.expires_at <= parent_record.expires_at and parent_expiry is not None
    called = await proxy.call_tool(child, "evaluate_script", {"function": "() => 1"})
    assert "error" in called or called["result"].get("isError"), called
    listed = await proxy.call_tool(child, "list_pages")
    assert "result" in listed and not listed["result"].get("isError"), listed

    # Revoking the parent revokes the child, at once, in this process.
    code, _, _ = await proxy.api("DELETE", f"/api/tokens/{_id(parent)}")
    assert code == 204
    code, body, _ = await proxy.api("GET", "/api/users/alice/status", token=child)
    assert code == 401, body
    assert (await proxy.service.store.get_token(_id(child))).revoked_at is not None


@pytest_twisted.ensureDeferred
async def test_a_register_only_token_mints_no_tool_rights(proxy, chromium):
    parent = await proxy.token_for("alice", "register")
    child = (await proxy.register("alice", chromium.browser_url, parent))["sessionToken"]
    record = await proxy.service.store.get_token(_id(child))
    assert record.permissions == ("register",)
    called = await proxy.call_tool(child, "list_pages")
    assert "error" in called or called["result"].get("isError"), called


@pytest_twisted.ensureDeferred
async def test_a_child_dies_with_its_parent_even_when_revoked_elsewhere(proxy, chromium):
    """The parent revoked straight in the store (another process, mcproxy-admin): the child
    stops working once this process's short record cache has turned over."""
    from mcproxy.testing.tool_calls import sleep

    parent = await proxy.token_for("alice")
    child = (await proxy.register("alice", chromium.browser_url, parent))["sessionToken"]
    assert (await proxy.api("GET", "/api/users/alice/status", token=child))[0] == 200
    await proxy.service.store.revoke_token(_id(parent), proxy.service.reactor.seconds())
    await sleep(proxy.service.reactor, 2.2)
    code, body, _ = await proxy.api("GET", "/api/users/alice/status", token=child)
    assert code == 401 and "made from" in body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_rotating_the_parent_keeps_its_children_and_admin_parents_give_plain_rights(proxy, chromium):
    # An admin registering for alice: the child is alice's, with tools:* and register only.
    registered = await proxy.register("alice", chromium.browser_url, proxy.admin_token)
    child = registered["sessionToken"]
    record = await proxy.service.store.get_token(_id(child))
    assert record.user_id == "alice" and record.permissions == ("tools:*", "register")
    assert "admin" not in record.permissions
    code, body, _ = await proxy.api("POST", f"/api/tokens/{_id(proxy.admin_token)}/rotate", {"graceSeconds": 0})
    assert code == 201, body
    assert (await proxy.service.store.get_token(_id(child))).parent_id == body["tokenId"]
    code, _, _ = await proxy.api("GET", "/api/users/alice/status", token=child)
    assert code == 200


# -- rotation is not reachable by impersonation ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_impersonation_cannot_rotate_anyone_elses_token(proxy):
    mallory = await proxy.token_for("mallory", "tools:*", "impersonate")
    admin_id = _id(proxy.admin_token)
    admin_user = (await proxy.service.store.get_token(admin_id)).user_id
    code, body, _ = await proxy.api(
        "POST", f"/api/tokens/{admin_id}/rotate", token=mallory, headers={"X-User-Id": admin_user}
    )
    assert code == 404, body
    alice = await proxy.token_for("alice")
    code, body, _ = await proxy.api(
        "POST", f"/api/tokens/{_id(alice)}/rotate", token=mallory, headers={"X-User-Id": "alice"}
    )
    assert code == 404, body
    assert len(await proxy.service.store.list_tokens()) == 3  # nothing was minted


@pytest_twisted.ensureDeferred
async def test_impersonated_registration_mints_no_session_token(proxy, chromium):
    operator = await proxy.token_for("ops", "register", "impersonate", "tools:*")
    code, body, _ = await proxy.api(
        "POST", "/api/register", {"browserURL": chromium.browser_url}, operator, headers={"X-User-Id": "alice"}
    )
    assert code == 201, body
    assert body["userId"] == "alice" and body["sessionToken"] is None


# -- the HTTP API -----------------------------------------------------------------------------


async def _raw(proxy, method, path, data: bytes, headers: dict):
    sent = {"Authorization": [f"Bearer {proxy.admin_token}"], **{k: [v] for k, v in headers.items()}}
    response = await treq.request(method, proxy.base_url + path, data=data, headers=sent, persistent=False)
    return response.code, json.loads(await response.content())


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
@pytest_twisted.ensureDeferred
async def test_the_api_takes_json_only(proxy, content_type):
    body = json.dumps({"userId": "alice", "permissions": ["tools:*"]}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    code, answer = await _raw(proxy, "POST", "/api/tokens", body, headers)
    assert code == 415 and answer["error"]["code"] == "unsupported_media_type", answer
    assert await proxy.service.store.list_tokens() != [] and len(await proxy.service.store.list_tokens()) == 1


@pytest_twisted.ensureDeferred
async def test_the_api_checks_origin_and_host_like_the_mcp_endpoints(proxy):
    body = json.dumps({"userId": "alice", "permissions": ["tools:*"]}).encode()
    json_type = {"Content-Type": "application/json"}
    code, answer = await _raw(proxy, "POST", "/api/tokens", body, {**json_type, "Origin": "https://evil.example"})
    assert code == 403 and answer["error"]["code"] == "origin_not_allowed"
    code, answer = await _raw(proxy, "POST", "/api/tokens", body, {**json_type, "Host": "evil.example"})
    assert code == 403 and answer["error"]["code"] == "host_not_allowed"
    # The server's own pages (same origin) and clients that send no Origin are served.
    code, answer = await _raw(proxy, "POST", "/api/tokens", body, {**json_type, "Origin": proxy.base_url})
    assert code == 201, answer
    code, answer = await _raw(proxy, "POST", "/api/tokens", body, json_type)
    assert code == 201, answer


@pytest_twisted.ensureDeferred
async def test_metadata_is_capped(proxy, chromium):
    token = await proxy.token_for("alice")
    big = {"notes": "x" * 17000}
    code, body, _ = await _register(proxy, token, "alice", chromium.browser_url, metadata=big)
    assert code == 413 and body["error"]["code"] == "metadata_too_large"
    assert "limits.max_metadata_bytes" in body["error"]["message"]
    assert await proxy.service.store.get_user("alice") is None
    code, body, _ = await _register(proxy, token, "alice", chromium.browser_url, metadata={"team": "web"})
    assert code == 201, body


@pytest_twisted.ensureDeferred
async def test_health_counts_without_loading_users(proxy, chromium, monkeypatch):
    token = await proxy.token_for("alice")
    await proxy.register("alice", chromium.browser_url, token)

    def loaded():
        raise AssertionError("/health must not load every user")

    monkeypatch.setattr(proxy.service.store, "list_users", loaded)
    response = await treq.get(proxy.base_url + "/health", persistent=False)
    body = json.loads(await response.content())
    assert response.code == 200 and body["registeredUsers"] == 1


@pytest.mark.parametrize(
    "url, code",
    [
        ("http://[fd00:ec2::254]:80", "invalid_browser_url"),  # AWS metadata, inside fc00::/7
        ("http://[::ffff:169.254.169.254]:80", "invalid_browser_url"),
        ("http://[64:ff9b::a9fe:a9fe]:80", "invalid_browser_url"),  # NAT64 form of 169.254.169.254
        ("http://100.100.100.200:80", "invalid_browser_url"),
        ("ws://127.0.0.1:9/", "invalid_browser_url"),  # not Chrome's /devtools/browser/<id> shape
        ("ws://127.0.0.1:9/devtools/page/ABC", "invalid_browser_url"),
        ("ws://127.0.0.1:9/devtools/browser/abc?x=1", "invalid_browser_url"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_forbidden_browser_urls_are_refused_before_any_connection(reactor, tmp_path, url, code):
    running = await start_proxy(
        reactor,
        tmp_path,
        browser={"allowed_networks": ["0.0.0.0/0", "::/0"]},  # metadata stays refused
    )
    try:
        token = await running.token_for("alice")
        status, body, _ = await _register(running, token, "alice", url)
        assert status == 400 and body["error"]["code"] == code, body
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_browser_that_is_not_running_is_the_users_problem_not_a_502(proxy):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = await proxy.token_for("alice")
    code, body, _ = await _register(proxy, token, "alice", f"http://127.0.0.1:{port}")
    assert code == 400 and body["error"]["code"] == "browser_unreachable", body
    assert "--remote-debugging-port" in body["error"]["message"] or "reach" in body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_the_address_rate_counts_an_ipv6_slash_64_as_one_client(reactor, tmp_path):
    running = await start_proxy(
        reactor,
        tmp_path,
        ratelimit={"address_rate": 0.001, "address_burst": 2},
        network={"trusted_proxies": ["127.0.0.0/8"]},
    )

    async def health(client: str) -> int:
        headers = {"X-Forwarded-For": [client]}
        response = await treq.get(running.base_url + "/health", headers=headers, persistent=False)
        await response.content()
        return response.code

    try:
        assert [await health(f"2001:db8:0:1::{n}") for n in (1, 2, 3)] == [200, 200, 429]
        assert await health("2001:db8:0:2::1") == 200  # another /64 is another client
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_while_starting_is_quiet(reactor, tmp_path):
    """A stop during start-up (here: the store never answers) cancels the start; it is not
    reported as a failure to start, and nothing is left unhandled."""
    import socket

    from twisted.logger import globalLogPublisher

    from mcproxy import config as configuration
    from mcproxy.service import MCProxyService

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never speaks Redis
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        overrides = {
            "server": {"listen": ["tcp:0:interface=127.0.0.1"], "data_dir": str(tmp_path)},
            "store": {"url": f"redis://127.0.0.1:{silent.getsockname()[1]}/0"},
            "audit": {"path": str(tmp_path / "audit.jsonl")},
        }
        service = MCProxyService.from_config(reactor, configuration.load(None, environ={}, overrides=overrides))
        service.startService()
        from mcproxy.testing.tool_calls import sleep

        await sleep(reactor, 0.2)
        await service.stopService()
        await sleep(reactor, 0.1)
    finally:
        globalLogPublisher.removeObserver(events.append)
        silent.close()
    failures = [e for e in events if e.get("log_failure") is not None or "could not start" in str(e.get("log_format"))]
    assert failures == [], failures
    assert service.started.called


@pytest_twisted.ensureDeferred
async def test_the_pool_never_connects_one_chrome_run_for_two_users(browser_pool, chromium):
    """Registration refuses it; the pool refuses it too, should two records ever name one
    Chrome (its LAN address and 127.0.0.1, say: here localhost and 127.0.0.1)."""
    from mcproxy.errors import BrowserUnavailable

    alice = browser_pool.browser_for("alice", chromium.browser_url)
    await alice.connected(10)
    bob = browser_pool.browser_for("bob", f"http://localhost:{chromium.port}")
    with pytest.raises(BrowserUnavailable):
        await bob.connected(3)
    assert bob.status != "connected" and "another user" in bob.last_error
    assert alice.status == "connected"


@pytest_twisted.ensureDeferred
async def test_an_api_call_past_the_request_timeout_is_504_and_its_work_stops(reactor, tmp_path, chromium):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never answers /json/version
    running = await start_proxy(reactor, tmp_path, server={"request_timeout": 1.0})
    try:
        token = await running.token_for("alice")
        code, body, _ = await _register(running, token, "alice", f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert code == 504 and body["error"]["code"] == "request_timeout", body
        assert not running.service.admin.registering.locked  # the probe was cancelled
        # The stuck registration let go of the registration lock: the next one goes through.
        code, body, _ = await _register(running, token, "alice", chromium.browser_url)
        assert code == 201, body
    finally:
        silent.close()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_health_answers_a_balancers_check_whatever_its_host(proxy):
    # HAProxy's and nginx's checks send an address, or no Host at all (HTTP/1.0).
    for host in ("10.0.0.5:3001", "evil.example"):
        code, answer = await _raw(proxy, "GET", "/health", b"", {"Host": host})
        assert code == 200 and answer["status"] == "ok", answer
    code, answer = await _raw(proxy, "GET", "/api/users", b"", {"Host": "evil.example"})
    assert code == 403 and answer["error"]["code"] == "host_not_allowed"  # the rest of the API keeps the rule
