"""Target: a call through a browser's tunnel costs about what it costs through a direct URL.

Two users of one daemon, each with a Chromium of its own (a browser belongs to one user): one
registered by its DevTools URL, the other behind ``mcproxy-connect --browser-url``, which relays
CDP between the proxy's ``/tunnel`` and its Chromium. Each iteration times, back to back, the
same ``evaluate_script(() => 1+1)`` (``waitForStableDom: false``: one ``Runtime.evaluate``)
for both users, so noise on this shared machine hits both alike; the difference of the medians
is what the tunnel (the client's relay and the second WebSocket hop) adds.
"""

import asyncio
import os
import sys

import mcproxy
from bench.lean_mcp import LeanStreamable, open_tab, timed_evaluate
from bench.procs import Chromium, FixtureSite, ProxyDaemon, _get_json, _stop_process
from bench.report import Summary, Verdict, say
from bench.wire import WireError

#: Goal: the median a call through a tunnel adds over the same call through a direct URL.
ADDED_MS = 1.0
#: Seconds ``mcproxy-connect`` may take to connect and the proxy to reach the browser behind it.
CONNECT_SECONDS = 30.0


async def _connect(daemon: ProxyDaemon, token: str, browser_url: str) -> asyncio.subprocess.Process:
    """``mcproxy-connect --browser-url`` (as ``python -m mcproxy.tunnel``), once the user's
    browser behind it is connected."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(mcproxy.__file__)))
    env = dict(os.environ, MCPROXY_TOKEN=token, PYTHONPATH=checkout)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcproxy.tunnel", "--proxy", daemon.base_url, "--browser-url", browser_url,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {daemon.admin_token}"}
    for _ in range(int(CONNECT_SECONDS / 0.1)):
        status, body = await _get_json(daemon.base_url, "/api/users/bench-tunnel/status", headers)
        if status == 200 and body["browserStatus"] == "connected":
            return client
        if client.returncode is not None:
            raise WireError(f"mcproxy-connect exited with code {client.returncode}")
        await asyncio.sleep(0.1)
    await _stop_process(client)
    raise WireError(f"the browser behind mcproxy-connect did not connect within {CONNECT_SECONDS:g} s")


async def run(options) -> list[Verdict]:
    say(f"== tunnel: evaluate_script through mcproxy-connect vs a direct browser URL ({options.iterations} calls) ==")
    site, direct_chromium, tunnel_chromium = FixtureSite(), Chromium(), Chromium()
    daemon = ProxyDaemon.for_benchmark(options, "tunnel")
    client = None
    sessions: dict[str, LeanStreamable] = {}
    try:
        await asyncio.gather(site.start(), direct_chromium.start(), tunnel_chromium.start(), daemon.start())
        direct_token = await daemon.user_token("bench-direct", direct_chromium.browser_url)
        tunnel_token = await daemon.user_token("bench-tunnel")  # may register: its tunnel registers it
        client = await _connect(daemon, tunnel_token, tunnel_chromium.browser_url)
        sessions = {
            "direct URL": await LeanStreamable.open(daemon.base_url, direct_token),
            "tunnel": await LeanStreamable.open(daemon.base_url, tunnel_token),
        }
        tabs = {}
        for i, (name, session) in enumerate(sessions.items()):
            tabs[name] = await open_tab(session, site.url(f"tunnel-{i}"))
        for _ in range(options.warmup):
            for name, session in sessions.items():
                await timed_evaluate(session, tabs[name])
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(options.iterations):
            for name, session in sessions.items():
                samples[name].append(await timed_evaluate(session, tabs[name]))
    except (OSError, WireError) as e:
        return [Verdict("tunnel/added", False, f"could not measure: {e}")]
    finally:
        for session in sessions.values():
            session.close()
        if client is not None:
            await _stop_process(client)
        await daemon.stop()
        for chromium in (direct_chromium, tunnel_chromium):
            await chromium.stop()
        await site.stop()
    direct, tunnelled = Summary.of(samples["direct URL"]), Summary.of(samples["tunnel"])
    say(f"  direct browser URL   {direct}")
    say(f"  through the tunnel   {tunnelled}")
    added = tunnelled.median - direct.median
    return [
        Verdict(
            "tunnel/added",
            added <= ADDED_MS,
            f"the tunnel adds median {added:.3f} ms over a direct browser URL (target <= {ADDED_MS})",
        )
    ]
