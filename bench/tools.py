"""Target 3: ``fill``, ``click``, ``fill_form`` and ``hover`` through mcproxy vs chrome-devtools-mcp 1.11.0.

Both servers are driven by the official MCP SDK ``ClientSession`` in this process (stdio for
chrome-devtools-mcp, Streamable HTTP for mcproxy), each against its own headless instance of
the same Chromium binary with the same flags, so client cost and browser are alike and
neither server sees the other's tabs. Rounds alternate between the two servers so that
machine noise lands on both. Each side takes one snapshot, then per round fills the text box,
clicks the button, fills the text box again through fill_form and hovers over the button; the
page must show the last click and the last form value afterwards.
"""

import contextlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.procs import Chromium, FixtureSite, ProxyDaemon
from bench.report import Summary, Verdict, say

TARGET_RATIO = 0.5
#: The tools judged against the target, in the order each round calls them.
TIMED_TOOLS = ("fill", "click", "fill_form", "hover")
BENCH_DIR = Path(__file__).resolve().parent
CDM_ENTRY = BENCH_DIR / "node_modules" / "chrome-devtools-mcp" / "build" / "src" / "bin" / "chrome-devtools-mcp.js"
NPM_TIMEOUT = 240
CALL_TIMEOUT = 60.0
#: Keep chrome-devtools-mcp on loopback: no usage statistics, update checks or CrUX look-ups.
CDM_FLAGS = ("--no-usage-statistics", "--no-performance-crux")
CDM_ENV = {"CHROME_DEVTOOLS_MCP_NO_USAGE_STATISTICS": "1", "CHROME_DEVTOOLS_MCP_NO_UPDATE_CHECKS": "1", "CI": "1"}


class BaselineUnavailable(Exception):
    """chrome-devtools-mcp cannot be run here, so there is nothing to compare with."""


def ensure_baseline_installed() -> None:
    """``npm ci`` the pinned chrome-devtools-mcp into bench/node_modules unless it is there."""
    if CDM_ENTRY.exists():
        return
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise BaselineUnavailable("node/npm are not installed (Debian: apt-get install nodejs npm)")
    say("  installing chrome-devtools-mcp 1.11.0 with npm ci (no browser download) ...")
    env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1", PUPPETEER_SKIP_CHROME_DOWNLOAD="1")
    try:
        done = subprocess.run(
            [npm, "ci", "--prefix", str(BENCH_DIR), "--no-audit", "--no-fund"],
            env=env,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise BaselineUnavailable(f"npm ci did not finish within {NPM_TIMEOUT} s") from None
    if done.returncode != 0 or not CDM_ENTRY.exists():
        raise BaselineUnavailable(f"npm ci failed ({done.returncode}): {(done.stderr or done.stdout)[-1000:]}")


def _text(result) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


class ToolSide:
    """One server under test: an SDK session, its tab and the uids of the form's controls."""

    def __init__(self, name: str, session, page_url: str):
        self.name = name
        self.session = session
        self.page_url = page_url
        self.page_id = 0
        self.uids: dict[str, str] = {}
        self.timings: dict[str, list[float]] = {tool: [] for tool in ("take_snapshot", *TIMED_TOOLS)}

    async def call(self, tool: str, arguments: dict, record: bool = True) -> str:
        start = time.perf_counter()
        result = await self.session.call_tool(tool, arguments, read_timeout_seconds=CALL_TIMEOUT)
        elapsed = (time.perf_counter() - start) * 1000
        text = _text(result)
        if result.is_error:
            raise RuntimeError(f"{self.name}: {tool} failed: {text[:500]}")
        if record and tool in self.timings:
            self.timings[tool].append(elapsed)
        return text

    async def prepare(self) -> None:
        """Open the fixture tab, then take the one snapshot the rounds act on."""
        listing = await self.call("new_page", {"url": self.page_url})
        found = re.search(r"^(\d+): .*" + re.escape(self.page_url), listing, re.M)
        if not found:
            raise RuntimeError(f"{self.name}: new_page did not list {self.page_url}: {listing[:500]}")
        self.page_id = int(found.group(1))
        snapshot = await self.call("take_snapshot", {"pageId": self.page_id})
        for role, label in (("textbox", "Name"), ("button", "Submit")):
            uid = re.search(rf'uid=(\S+) {role} "{label}"', snapshot)
            if not uid:
                raise RuntimeError(f"{self.name}: no {role} {label!r} in the snapshot:\n{snapshot[:1000]}")
            self.uids[role] = uid.group(1)

    async def round(self, value: str, record: bool) -> None:
        textbox, button = self.uids["textbox"], self.uids["button"]
        await self.call("fill", {"pageId": self.page_id, "uid": textbox, "value": value}, record)
        await self.call("click", {"pageId": self.page_id, "uid": button}, record)
        elements = [{"uid": textbox, "value": f"{value} (form)"}]
        await self.call("fill_form", {"pageId": self.page_id, "elements": elements}, record)
        await self.call("hover", {"pageId": self.page_id, "uid": button}, record)

    async def page_text(self) -> str:
        return await self.call(
            "evaluate_script",
            {
                "pageId": self.page_id,
                "function": (
                    "() => document.getElementById('out').textContent + ' / ' + document.getElementById('name').value"
                ),
            },
        )


async def _cdm_session(stack: contextlib.AsyncExitStack, browser_url: str):
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    node = shutil.which("node")
    if not node:
        raise BaselineUnavailable("node is not installed")
    params = StdioServerParameters(
        command=node,
        args=[str(CDM_ENTRY), "--browserUrl", browser_url, *CDM_FLAGS],
        env={**os.environ, **CDM_ENV},
    )
    errlog = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115 -- the stack closes it
    read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


async def _proxy_session(stack: contextlib.AsyncExitStack, base_url: str, token: str):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = await stack.enter_async_context(create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}))
    read, write = await stack.enter_async_context(streamable_http_client(base_url + "/mcp", http_client=http))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


async def run(options) -> list[Verdict]:
    """Time the input tools on both servers and judge the ratio of their medians."""
    say(f"== tools: {' + '.join(TIMED_TOOLS)}, mcproxy vs chrome-devtools-mcp 1.11.0 ({options.rounds} rounds) ==")
    try:
        ensure_baseline_installed()
    except BaselineUnavailable as e:
        say(f"  could not measure the baseline: {e}")
        return [Verdict("tools", False, f"could not measure the chrome-devtools-mcp baseline: {e}")]
    site, cdm_browser, proxy_browser = FixtureSite(), Chromium(), Chromium()
    daemon = ProxyDaemon.for_benchmark(options, "tools")
    try:
        await site.start()
        await cdm_browser.start()
        await proxy_browser.start()
        await daemon.start()
        token = await daemon.user_token("bench-tools", proxy_browser.browser_url)
        async with contextlib.AsyncExitStack() as stack:
            try:
                cdm_session = await _cdm_session(stack, cdm_browser.browser_url)
            except (OSError, BaselineUnavailable) as e:
                say(f"  could not measure the baseline: {e}")
                return [Verdict("tools", False, f"could not start chrome-devtools-mcp: {e}")]
            sides = [
                ToolSide("chrome-devtools-mcp", cdm_session, site.url("cdm")),
                ToolSide("mcproxy", await _proxy_session(stack, daemon.base_url, token), site.url("mcproxy")),
            ]
            for side in sides:
                await side.prepare()
            for i in range(options.tool_warmup + options.rounds):
                for side in sides:
                    await side.round(f"round {i}", record=i >= options.tool_warmup)
            final = f"round {options.tool_warmup + options.rounds - 1}"
            last = f"clicked {final} / {final} (form)"
            for side in sides:
                shown = await side.page_text()
                if last not in shown:
                    raise RuntimeError(f"{side.name}: the page shows {shown[:200]!r}, expected {last!r}")
        return _judge(*sides)
    finally:
        await daemon.stop()
        await proxy_browser.stop()
        await cdm_browser.stop()
        await site.stop()


def _judge(baseline: ToolSide, proxied: ToolSide) -> list[Verdict]:
    verdicts = []
    for tool in ("take_snapshot", *TIMED_TOOLS):
        base, through = Summary.of(baseline.timings[tool]), Summary.of(proxied.timings[tool])
        ratio = through.median / base.median
        say(f"  {tool}:")
        say(f"    chrome-devtools-mcp   {base}")
        say(f"    mcproxy               {through}")
        say(f"    ratio mcproxy/chrome-devtools-mcp {ratio:.2f}x (median), {through.p95 / base.p95:.2f}x (p95)")
        if tool != "take_snapshot":
            verdicts.append(
                Verdict(
                    f"tools/{tool}",
                    ratio <= TARGET_RATIO,
                    f"median {through.median:.1f} ms vs {base.median:.1f} ms = {ratio:.2f}x "
                    f"(target <= {TARGET_RATIO}x)",
                )
            )
    return verdicts
