"""Target 1: latency a tools/call adds over raw CDP.

Each transport gets its own tab on the fixture page. Every iteration times, back to back,
``Runtime.evaluate("1+1")`` over a raw page WebSocket and ``evaluate_script(() => 1+1)``
through the proxy on that same tab, so noise on this shared machine hits both alike.

The timed calls pass ``waitForStableDom: false`` (the tool's own advice for a script that
only reads): the proxied call then does the same single ``Runtime.evaluate`` as the
baseline, and the difference is the proxy's. The default, which waits for a quiet DOM
window exactly like chrome-devtools-mcp, is timed separately and reported for information.
"""

import asyncio
import os
import re
import signal
import sys
import time

from bench.floor import FloorServer
from bench.lean_mcp import LeanLegacySse, LeanStreamable
from bench.procs import Chromium, FixtureSite, ProxyDaemon
from bench.report import Summary, Verdict, say
from bench.stages import breakdown
from bench.wire import CdpSocket, WireError

#: Goal: the median a call adds over raw CDP.
ADDED_MS = 1.0
#: Goal: the daemon's own CPU per call (all threads; the figure that depends least on the
#: machine's mood) against the floor's, `bench.floor` answering the same calls with the
#: same libraries and nothing else, measured in the same run.
FLOOR_RATIO = 2.0
#: Calls with the default (settling) evaluate_script, shown for information only.
SETTLING_CALLS = 10


async def _open_tab(session, chromium: Chromium, url: str) -> tuple[int, CdpSocket]:
    """Open ``url`` through the proxy; return its pageId and a raw CDP socket on the same tab."""
    listing = await session.tool("new_page", {"url": url})
    found = re.search(r"^(\d+): .*" + re.escape(url), listing, re.M)
    if not found:
        raise WireError(f"new_page did not list {url}: {listing[:500]}")
    return int(found.group(1)), await CdpSocket.open(await chromium.page_socket_url(url))


async def _proxied(session, page_id: int, settle: bool) -> float:
    """One ``evaluate_script(() => 1+1)`` through the proxy, in ms; it must yield 2."""
    arguments = {"pageId": page_id, "function": "() => 1+1"}
    if not settle:
        arguments["waitForStableDom"] = False
    start = time.perf_counter()
    text = await session.tool("evaluate_script", arguments)
    elapsed = (time.perf_counter() - start) * 1000
    if not re.search(r"\b2\b", text):
        raise WireError(f"evaluate_script did not return 2: {text[:200]!r}")
    return elapsed


async def _time_pair(session, page_id: int, cdp: CdpSocket) -> tuple[float, float]:
    """One raw CDP evaluation and one proxied evaluation, in ms."""
    start = time.perf_counter()
    raw = await cdp.call("Runtime.evaluate", {"expression": "1+1", "returnByValue": True})
    raw_ms = (time.perf_counter() - start) * 1000
    if raw["result"].get("value") != 2:
        raise WireError(f"Runtime.evaluate did not return 2: {raw!r}")
    return raw_ms, await _proxied(session, page_id, settle=False)


async def _floor_cpu(options, chromium: Chromium, url: str) -> float:
    """Time the same calls through `bench.floor` (the libraries alone); its CPU per call in ms."""
    floor = FloorServer(await chromium.page_socket_url(url))
    session = cdp = None
    try:
        await floor.start()
        session = await LeanStreamable.open(floor.base_url, "none")
        cdp = await CdpSocket.open(await chromium.page_socket_url(url))
        for _ in range(options.warmup):
            await _time_pair(session, 0, cdp)
        before = floor.cpu_seconds()
        pairs = [await _time_pair(session, 0, cdp) for _ in range(options.iterations)]
        floor_ms = (floor.cpu_seconds() - before) * 1000 / options.iterations
    finally:
        for closable in (session, cdp):
            if closable is not None:
                closable.close()
        await floor.stop()
    base, through = Summary.of([raw for raw, _ in pairs]), Summary.of([timed for _, timed in pairs])
    say(f"  floor: twisted.web + autobahn + json alone (bench/floor.py), CPU per call {floor_ms:.2f} ms")
    say(f"    raw CDP Runtime.evaluate      {base}")
    say(f"    floor evaluate_script         {through}   (added: median {through.median - base.median:.3f} ms)")
    return floor_ms


async def _say_stages(pid: int, stats: str, calls: int) -> None:
    """Stop the daemon's profiler and print its CPU per call by stage."""
    os.kill(pid, signal.SIGUSR2)
    for _ in range(100):
        if os.path.exists(stats):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)  # let the dump finish
    totals = breakdown(stats)
    whole = sum(totals.values()) or 1.0
    say(f"  daemon reactor-thread CPU per call by stage (cProfile self time, {whole * 1000 / calls:.3f} ms in all):")
    for name, seconds in totals.items():
        say(f"    {name:<24} {seconds * 1e6 / calls:8.1f} us  {100 * seconds / whole:5.1f} %")


async def run(options) -> list[Verdict]:
    """Measure both transports against raw CDP and judge the added median latency."""
    say(f"== latency: evaluate_script through mcproxy vs raw CDP Runtime.evaluate ({options.iterations} calls) ==")
    site, chromium, daemon = FixtureSite(), Chromium(), ProxyDaemon.for_benchmark(options, "latency")
    sessions, sockets = [], []
    try:
        await site.start()
        await chromium.start()
        stages = os.path.join(daemon.root, "stages.pstats") if options.stages else None
        if stages:
            daemon.launcher = [sys.executable, "-m", "bench.stages", stages]
        await daemon.start()
        token = await daemon.user_token("bench-latency", chromium.browser_url)
        transports = {}
        for name, opener in (("streamable-http", LeanStreamable.open), ("legacy-sse", LeanLegacySse.open)):
            session = await opener(daemon.base_url, token)
            sessions.append(session)
            page_id, cdp = await _open_tab(session, chromium, site.url(name))
            sockets.append(cdp)
            transports[name] = (session, page_id, cdp)
        for _ in range(options.warmup):
            for session, page_id, cdp in transports.values():
                await _time_pair(session, page_id, cdp)
        samples = {name: ([], []) for name in transports}
        if stages:
            os.kill(daemon.pid, signal.SIGUSR1)
        cpu_ms = {}
        for name, (session, page_id, cdp) in transports.items():
            cpu_before = daemon.cpu_seconds()
            for _ in range(options.iterations):
                raw_ms, proxied_ms = await _time_pair(session, page_id, cdp)
                samples[name][0].append(raw_ms)
                samples[name][1].append(proxied_ms)
            cpu_ms[name] = (daemon.cpu_seconds() - cpu_before) * 1000 / options.iterations
        say(
            "  daemon CPU per proxied call (/proc/PID/stat): "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms.items())
        )
        verdicts = []
        if stages:
            await _say_stages(daemon.pid, stages, options.iterations * len(transports))
        else:
            floor_ms = await _floor_cpu(options, chromium, site.url("streamable-http"))
            ratio = cpu_ms["streamable-http"] / floor_ms
            verdicts.append(
                Verdict(
                    "latency/cpu",
                    ratio <= FLOOR_RATIO,
                    f"daemon CPU per Streamable HTTP call {cpu_ms['streamable-http']:.2f} ms = {ratio:.2f}x the "
                    f"floor's {floor_ms:.2f} ms (target <= {FLOOR_RATIO}x)",
                )
            )
        for name, (raw, proxied) in samples.items():
            base, through = Summary.of(raw), Summary.of(proxied)
            added = through.median - base.median
            say(f"  {name}:")
            say(f"    raw CDP Runtime.evaluate      {base}")
            say(f"    mcproxy evaluate_script       {through}   (waitForStableDom=false)")
            say(
                f"    added: median {added:.3f} ms, p95 {through.p95 - base.p95:.3f} ms; "
                f"ratio mcproxy/CDP {through.median / base.median:.2f}x (median), "
                f"{through.p95 / base.p95:.2f}x (p95)"
            )
            session, page_id, _ = transports[name]
            settling = Summary.of([await _proxied(session, page_id, settle=True) for _ in range(SETTLING_CALLS)])
            say(f"    for information, with the default waitForStableDom=true: {settling}")
            if name == "streamable-http":
                say(f"    answers came as: {', '.join(sorted(session.answer_types))}")
            verdicts.append(
                Verdict(
                    f"latency/{name}",
                    added <= ADDED_MS,
                    f"median added latency {added:.3f} ms over raw CDP (target <= {ADDED_MS} ms)",
                )
            )
        return verdicts
    finally:
        for closable in sessions + sockets:
            closable.close()
        await daemon.stop()
        await chromium.stop()
        await site.stop()
