"""Browsers the proxy launches (``POST /api/register {"launch": true}``): a real headless
Chromium started by the real daemon over ``--remote-debugging-pipe``, driven by the official
MCP SDK client; found, killed and checked by its PID through /proc."""

import os
import signal

import pytest_twisted

from mcproxy.testing.chromium import CONTAINER_ARGS, find_chrome
from mcproxy.testing.process import Daemon
from mcproxy.testing.procfs import (
    command_line,
    is_running,
    launched_browser,
    listening_inodes,
    process_tree,
    socket_inodes,
)
from mcproxy.testing.tool_calls import until
from mcproxy.testing.tunnel import check_core_flow, core_flow, status_of, wait_status

CHROMIUM_ARGS = list(CONTAINER_ARGS)


async def launching_daemon(tmp_path, reactor, browser: dict | None = None, **launch) -> Daemon:
    """A real ``twistd mcproxy`` that launches browsers (``launch`` and ``browser`` on top of
    test settings: links reconnect within 2 s)."""
    daemon = Daemon(
        reactor,
        tmp_path,
        browser={"backoff_max": 2.0, "connect_timeout": 10.0, **(browser or {})},
        launch={"enabled": True, "chromium": find_chrome(), "args": CHROMIUM_ARGS, **launch},
    )
    daemon.running_proxy = await daemon.start()
    return daemon


def browser_of(daemon: Daemon, user_id: str) -> int | None:
    """The PID of the Chromium the daemon launched for ``user_id`` (None: none runs)."""
    return launched_browser(daemon.pid, daemon.root, user_id)


async def register_launch(proxy, user_id: str, token: str) -> tuple[int, dict]:
    code, body, _ = await proxy.api("POST", "/api/register", {"userId": user_id, "launch": True}, token)
    return code, body


async def launched_pid(reactor, daemon: Daemon, user_id: str, besides: int | None = None) -> int:
    """Wait until the user's browser runs (another one than ``besides``) and is connected; its PID."""
    await until(reactor, lambda: browser_of(daemon, user_id) not in (None, besides), 30, what=f"{user_id}'s Chromium")
    await wait_status(reactor, daemon.running_proxy, user_id, "connected")
    pid = browser_of(daemon, user_id)
    assert pid is not None
    return pid


async def alice_launched(reactor, daemon: Daemon) -> tuple[str, int]:
    """alice's token (tools, register, launch), registered for a launched browser, and the PID
    of that browser once it is connected."""
    proxy = daemon.running_proxy
    token = await proxy.token_for("alice", "tools:*", "register", "launch")
    assert (await register_launch(proxy, "alice", token))[0] == 201
    return token, await launched_pid(reactor, daemon, "alice")


@pytest_twisted.ensureDeferred
async def test_a_launched_browser_carries_the_core_flow_without_a_devtools_port_and_goes_with_its_user(
    reactor, tmp_path, fixture_site
):
    daemon = await launching_daemon(tmp_path, reactor, idle_timeout=0, memory_mb=512)
    try:
        proxy = daemon.running_proxy
        token = await proxy.token_for("alice", "tools:*", "register", "launch")
        code, body = await register_launch(proxy, "alice", token)
        assert code == 201, body
        assert (await status_of(proxy, "alice"))["browserURL"] == "launch:"
        pid = await launched_pid(reactor, daemon, "alice")
        assert "--js-flags=--max-old-space-size=512" in command_line(pid)
        check_core_flow(await core_flow(proxy.base_url, body["sessionToken"], fixture_site.url("index.html")))

        tree = process_tree(pid)
        assert len(tree) > 1, "Chromium started no processes of its own"
        assert socket_inodes(tree) & listening_inodes() == set()

        profile = os.path.join(daemon.root, "browsers", "alice")
        assert os.path.isdir(profile)
        code, _, _ = await proxy.api("DELETE", "/api/users/alice", token=token)
        assert code == 204
        assert not is_running(pid)
        assert not os.path.exists(profile)
    finally:
        await daemon.close()


@pytest_twisted.ensureDeferred
async def test_a_killed_browser_comes_back_and_a_stopping_daemon_stops_every_browser(reactor, tmp_path, fixture_site):
    daemon = await launching_daemon(tmp_path, reactor, idle_timeout=0)
    try:
        proxy = daemon.running_proxy
        token, killed = await alice_launched(reactor, daemon)
        os.kill(killed, signal.SIGKILL)
        again = await launched_pid(reactor, daemon, "alice", besides=killed)
        check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))

        # Stopped by the daemon, by its PID (not left to notice that its pipe closed).
        daemon.signal("TERM")
        await daemon.exited()
        assert not is_running(again)
        stopped = f"Stopped the launched browser of alice (pid {again}): the proxy is stopping"
        assert stopped in daemon.messages(), daemon.messages()[-10:]
    finally:
        await daemon.close()


@pytest_twisted.ensureDeferred
async def test_the_next_call_starts_a_killed_browser_at_once(reactor, tmp_path, fixture_site):
    # The link's own retry comes after a minute: only the call can bring the browser back in time.
    daemon = await launching_daemon(tmp_path, reactor, {"backoff_initial": 60.0, "backoff_max": 60.0}, idle_timeout=0)
    try:
        proxy = daemon.running_proxy
        token, killed = await alice_launched(reactor, daemon)
        os.kill(killed, signal.SIGKILL)
        await wait_status(reactor, proxy, "alice", "reconnecting")
        check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))
        assert browser_of(daemon, "alice") not in (None, killed)
    finally:
        await daemon.close()


@pytest_twisted.ensureDeferred
async def test_an_idle_browser_stops_and_the_next_call_starts_it_again(reactor, tmp_path, fixture_site):
    daemon = await launching_daemon(tmp_path, reactor, idle_timeout=2.0)
    try:
        proxy = daemon.running_proxy
        token, first = await alice_launched(reactor, daemon)
        await until(reactor, lambda: not is_running(first), 30, what="the idle Chromium stopped")
        assert browser_of(daemon, "alice") is None

        check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))
        second = browser_of(daemon, "alice")
        assert second is not None and second != first
    finally:
        await daemon.close()


@pytest_twisted.ensureDeferred
async def test_launching_is_refused_past_the_limit_and_without_the_permission(reactor, tmp_path):
    daemon = await launching_daemon(tmp_path, reactor, max_browsers=1, idle_timeout=0)
    try:
        proxy = daemon.running_proxy
        alice = await proxy.token_for("alice", "tools:*", "register", "launch")
        assert (await register_launch(proxy, "alice", alice))[0] == 201
        first = await launched_pid(reactor, daemon, "alice")

        bob = await proxy.token_for("bob", "tools:*", "register", "launch")
        code, body = await register_launch(proxy, "bob", bob)
        assert code == 429, body
        assert body["error"]["code"] == "too_many_browsers"
        assert "launch.max_browsers" in body["error"]["message"]

        # Alice's own browser replaces her launched one, which makes room for Bob's.
        assert (await proxy.register("alice", "tunnel:", alice))["success"]
        assert not is_running(first)
        assert not os.path.exists(os.path.join(daemon.root, "browsers", "alice"))
        assert (await register_launch(proxy, "bob", bob))[0] == 201

        carol = await proxy.token_for("carol", "tools:*", "register")
        code, body = await register_launch(proxy, "carol", carol)
        assert code == 403, body
        assert "'launch' permission" in body["error"]["message"]
        assert browser_of(daemon, "carol") is None
    finally:
        await daemon.close()


@pytest_twisted.ensureDeferred
async def test_launching_is_refused_when_the_proxy_does_not_launch_browsers(reactor, tmp_path):
    daemon = Daemon(reactor, tmp_path)
    proxy = await daemon.start()
    try:
        token = await proxy.token_for("alice", "tools:*", "register", "launch")
        code, body, _ = await proxy.api("POST", "/api/register", {"userId": "alice", "launch": True}, token)
        assert code == 400, body
        assert body["error"]["code"] == "launch_disabled"
        assert "launch.enabled" in body["error"]["message"]
    finally:
        await daemon.close()


@pytest_twisted.ensureDeferred
async def test_extensions_install_into_a_launched_browser_given_the_flag(reactor, tmp_path):
    extension = os.path.join(os.path.dirname(__file__), "fixtures", "extension")
    args = [*CHROMIUM_ARGS, "--enable-unsafe-extension-debugging"]
    daemon = await launching_daemon(tmp_path, reactor, idle_timeout=0, args=args)
    try:
        proxy = daemon.running_proxy
        token, _ = await alice_launched(reactor, daemon)
        installed = (await proxy.call_tool(token, "install_extension", {"path": extension}))["result"]
        assert not installed["isError"], installed
        extension_id = installed["content"][0]["text"].removeprefix("Extension installed. Id: ")
        listed = (await proxy.call_tool(token, "list_extensions", rid=2))["result"]
        assert extension_id in listed["content"][0]["text"], listed
    finally:
        await daemon.close()


def test_a_profile_directory_stays_inside_the_browsers_directory():
    from mcproxy.browser.launch import profile_name

    assert profile_name("alice@example.com") == "alice@example.com"
    assert [profile_name(user) for user in (".", "..", "...")] == ["%2E", "%2E%2E", "%2E%2E%2E"]
