"""``mcproxy-connect --launch``: a Chromium started over ``--remote-debugging-pipe``, with no
DevTools port at all, driven through the real daemon by the official MCP SDK client."""

import pytest_twisted

from mcproxy.testing.chromium import CONTAINER_ARGS, find_chrome
from mcproxy.testing.procfs import is_pipe_browser, listening_inodes, process_tree, socket_inodes
from mcproxy.testing.tool_calls import until
from mcproxy.testing.tunnel import check_core_flow, core_flow, wait_status


@pytest_twisted.ensureDeferred
async def test_a_launched_chromium_has_no_devtools_port_and_carries_the_core_flow(
    reactor, tunnel_daemon, connects, fixture_site, tmp_path
):
    proxy = tunnel_daemon.running_proxy
    token = await proxy.token_for("alice", "tools:*", "register")
    args = ["--launch", "--headless", "--chrome", find_chrome(), "--profile", str(tmp_path / "profile")]
    args += [f"--chrome-arg={flag}" for flag in CONTAINER_ARGS]
    client = connects(proxy.base_url, token, *args)
    await client.tunnel_up()
    await wait_status(reactor, proxy, "alice", "connected")
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))

    tree = process_tree(client.pid)
    assert any(is_pipe_browser(pid) for pid in tree), "no Chromium under mcproxy-connect"
    assert socket_inodes(tree) & listening_inodes() == set()

    # The browser connection is opened again on the same pipe after the proxy restarts: a new
    # tunnel, whose calls start at 1.
    back = client.line_with("connected to")
    await tunnel_daemon.restart()
    back.addTimeout(30, reactor)
    await back
    await wait_status(reactor, proxy, "alice", "connected")
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))

    # Stopping mcproxy-connect stops its Chromium.
    chromes = [pid for pid in tree if is_pipe_browser(pid)]
    client.signal("TERM")
    await client.exited()
    await until(reactor, lambda: not any(is_pipe_browser(pid) for pid in chromes), what="Chromium gone")
