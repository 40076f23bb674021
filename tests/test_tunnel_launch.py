"""``mcproxy-connect --launch``: a Chromium started over ``--remote-debugging-pipe``, with no
DevTools port at all, driven through the real daemon by the official MCP SDK client."""

import os

import pytest_twisted

from mcproxy.testing.chromium import find_chrome
from mcproxy.testing.tool_calls import until
from mcproxy.testing.tunnel import check_core_flow, core_flow, wait_status


def _children() -> dict[int, list[int]]:
    """Every process's children, by parent PID (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    children = _children()
    tree, waiting = [], [root]
    while waiting:
        pid = waiting.pop()
        tree.append(pid)
        waiting.extend(children.get(pid, ()))
    return tree


def socket_inodes(pids: list[int]) -> set[str]:
    """The inodes of the sockets the processes ``pids`` hold open."""
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def listening_inodes() -> set[str]:
    """The inodes of every listening TCP socket of this machine (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


def _is_chrome(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"--remote-debugging-pipe" in f.read()
    except OSError:
        return False


@pytest_twisted.ensureDeferred
async def test_a_launched_chromium_has_no_devtools_port_and_carries_the_core_flow(
    reactor, tunnel_daemon, connects, fixture_site, tmp_path
):
    proxy = tunnel_daemon.running_proxy
    token = await proxy.token_for("alice", "tools:*", "register")
    args = ["--launch", "--headless", "--chrome", find_chrome(), "--profile", str(tmp_path / "profile")]
    args += ["--chrome-arg=--no-sandbox", "--chrome-arg=--disable-gpu", "--chrome-arg=--disable-dev-shm-usage"]
    client = connects(proxy.base_url, token, *args)
    await client.tunnel_up()
    await wait_status(reactor, proxy, "alice", "connected")
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))

    tree = process_tree(client.pid)
    assert any(_is_chrome(pid) for pid in tree), "no Chromium under mcproxy-connect"
    assert socket_inodes(tree) & listening_inodes() == set()

    # The browser connection can be opened again on the same pipe (the proxy's reconnect).
    code, _, _ = await proxy.api("DELETE", "/api/users/alice")
    assert code == 204
    assert (await proxy.register("alice", "tunnel:", token))["success"]
    await wait_status(reactor, proxy, "alice", "connected")
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))

    # And again after the proxy restarts: a new tunnel to the same pipe, whose calls start at 1.
    back = client.line_with("connected to")
    tunnel_daemon.signal("TERM")
    await tunnel_daemon.exited()
    tunnel_daemon.spawn()
    await tunnel_daemon.listening()
    back.addTimeout(30, reactor)
    await back
    await wait_status(reactor, proxy, "alice", "connected")
    check_core_flow(await core_flow(proxy.base_url, token, fixture_site.url("index.html")))

    # Stopping mcproxy-connect stops its Chromium.
    chromes = [pid for pid in tree if _is_chrome(pid)]
    client.signal("TERM")
    await client.exited()
    await until(reactor, lambda: not any(_is_chrome(pid) for pid in chromes), what="Chromium gone")
