"""performance_start_trace / performance_stop_trace / performance_analyze_insight on real Chromium.

The page under test (fixtures/perf_load.html) is served by a site of its own that answers
slowly for a render-blocking stylesheet and the LCP image, so the insights have something
to find.
"""

import gzip
import json
import os
import re
import struct
import zlib

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError

from mcproxy.artifacts.store import ArtifactStore
from mcproxy.config import ArtifactsConfig, ToolsConfig
from mcproxy.testing.tool_calls import failed, make_context, ok, sleep, text_of
from mcproxy.tools import performance
from mcproxy.tools.registry import ToolRegistry

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Seconds the perf site waits before answering these.
DELAYS = {"perf_slow.css": 0.3, "perf_hero.png": 0.4}
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css", ".png": "image/png"}


def png(width: int, height: int) -> bytes:
    """A plain blue PNG of this size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes((40, 120, 200)) * width) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def perf_site_resource(reactor):
    """The perf_* fixtures (and a generated hero image), some answered late; never cached.

    ``perf_redirect`` redirects to perf_idle.html.
    """
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    class PerfSite(Resource):
        isLeaf = True

        def render_GET(self, request):
            name = request.postpath[0].decode() if request.postpath else ""
            path = os.path.join(FIXTURES, name)
            if name == "perf_redirect":
                request.redirect(b"perf_idle.html")
                return b""
            if name == "perf_hero.png":
                body = png(640, 480)
            elif name.startswith("perf_") and "/" not in name and os.path.isfile(path):
                with open(path, "rb") as f:
                    body = f.read()
            else:
                request.setResponseCode(404)
                return b"not found"
            request.setHeader(b"Content-Type", _TYPES[os.path.splitext(name)[1]].encode())
            request.setHeader(b"Cache-Control", b"no-store")
            if name not in DELAYS:
                return body

            def answer() -> None:
                if not request.finished and not request._disconnected:
                    request.write(body)
                    request.finish()

            reactor.callLater(DELAYS[name], answer)
            return NOT_DONE_YET

    return PerfSite()


@pytest.fixture(scope="module")
def perf_site(reactor):
    """Base URL of the slow perf site."""
    from twisted.web.server import Site

    port = reactor.listenTCP(0, Site(perf_site_resource(reactor)), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}/"
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def store(tmp_path, reactor):
    return ArtifactStore(str(tmp_path), ArtifactsConfig(), reactor)


def perf_tools(reactor, browser, store):
    """A registry with the default tools and the performance tools, on ``browser`` for alice."""

    async def get_browser(user_id):
        assert user_id == "alice"
        return browser

    return ToolRegistry(get_browser, ToolsConfig(), reactor, artifacts=store)


@pytest.fixture
def tools(reactor, user_browser, store):
    return perf_tools(reactor, user_browser, store)


@pytest.fixture
def quick_auto_stop(monkeypatch):
    """autoStop after 1.5 s instead of upstream's 5 s: the fixture page is done by then."""
    monkeypatch.setattr(performance, "AUTO_STOP_DELAY", 1.5)


async def open_page(tools, context, url):
    await ok(tools, context, "new_page", url=url)
    return context.session.selected_page_id


def artifact_bytes(result, store) -> bytes:
    """The bytes of the one artifact the result links to."""
    (link,) = [block for block in result["content"] if block["type"] == "resource_link"]
    _, data = store.read("alice", link["uri"])
    return data


def insight(page_id, name: str, set_id: str = "NAVIGATION_0") -> dict:
    """performance_analyze_insight arguments."""
    return {"pageId": page_id, "insightSetId": set_id, "insightName": name}


async def click_button(user_browser, page_id):
    """A real mouse click on the page's Work button (its slow handler is the interaction)."""
    page = user_browser.page(page_id)
    where = "JSON.stringify(document.getElementById('work').getBoundingClientRect())"
    box = await page.send("Runtime.evaluate", {"expression": where, "returnByValue": True})
    rect = json.loads(box["result"]["value"])
    x, y = rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2
    for kind in ("mousePressed", "mouseReleased"):
        await page.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})


@pytest_twisted.ensureDeferred
async def test_reload_and_auto_stop_find_the_page_problems(tools, store, perf_site, quick_auto_stop):
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_load.html")
    result = await ok(tools, context, "performance_start_trace", pageId=page_id, filePath="traces/load.json")
    summary = text_of(result)
    assert "The raw trace data saved as mcproxy://artifacts/" in summary
    assert "The performance trace has been stopped.\n## Summary of Performance trace findings:" in summary
    conditions = r"\nTrace bounds: \{min: \d+µs, max: \d+µs\}\nCPU throttling: 1x\nNetwork throttling: none\n"
    assert re.search(conditions, summary), summary
    assert "## insight set id: NAVIGATION_0" in summary and "NO_NAVIGATION" not in summary
    lcp = re.search(r"- LCP: (\d+) ms, event: \(ts: \d+\), nodeId: \d+ \(IMG id='hero'\)", summary)
    assert lcp, summary
    # The hero image arrives 0.4 s after it is asked for; it is painted soon after.
    assert 400 <= int(lcp.group(1)) < 3000
    assert re.search(r"- CLS: 0\.1\d", summary), summary
    # The page's script keeps the main thread busy for about 150 ms (longer on a busy machine).
    long_tasks = re.search(r"- Long tasks: (\d+) over 50 ms, longest (\d+) ms", summary)
    assert long_tasks and int(long_tasks.group(1)) >= 1 and int(long_tasks.group(2)) >= 120, summary
    for name in ("LCPBreakdown", "DocumentLatency", "RenderBlocking", "CLSCulprits", "LongTasks"):
        assert f"  - insight name: {name}\n" in summary
    assert "INPBreakdown (no interactions were recorded)" in summary
    assert "Not computed: LCPDiscovery" in summary

    raw = json.loads(artifact_bytes(result, store))
    assert any(event.get("name") == "navigationStart" for event in raw["traceEvents"])

    async def detail(name):
        return text_of(await ok(tools, context, "performance_analyze_insight", **insight(page_id, name)))

    breakdown = await detail("LCPBreakdown")
    assert breakdown.startswith("## Insight Title: LCP breakdown\n\n## Insight Summary:\n")
    assert f"The LCP resource: {perf_site}perf_hero.png" in breakdown
    duration = re.search(r"- Resource load duration: (\d+) ms", breakdown)
    assert duration and 380 <= int(duration.group(1)) < 2000, breakdown
    blocking = await detail("RenderBlocking")
    took = re.search(re.escape(f"- {perf_site}perf_slow.css (Stylesheet, text/css)") + r".*took (\d+) ms", blocking)
    assert took and int(took.group(1)) >= 290, blocking
    shifts = await detail("CLSCulprits")
    # The trace names the moved elements; the live page describes them.
    assert "IMG id='hero' moved from" in shifts, shifts
    tasks = await detail("LongTasks")
    assert "mostly EvaluateScript" in tasks and f"{perf_site}perf_load.html" in tasks, tasks
    latency = await detail("DocumentLatency")
    assert "- PASSED: the request was not redirected." in latency

    message = await failed(tools, context, "performance_analyze_insight", **insight(page_id, "Nope"))
    assert message.startswith('Unknown insight "Nope". Available insights in NAVIGATION_0: LCPBreakdown, ')
    message = await failed(tools, context, "performance_analyze_insight", **insight(page_id, "INPBreakdown"))
    assert message.startswith("INPBreakdown has no data in NAVIGATION_0: no interactions were recorded.")
    message = await failed(
        tools, context, "performance_analyze_insight", **insight(page_id, "LCPBreakdown", "NAVIGATION_7")
    )
    assert message == 'No insight set "NAVIGATION_7" in the last trace. Its insight sets are: NAVIGATION_0.'


@pytest_twisted.ensureDeferred
async def test_manual_stop_twice_started_and_interaction(tools, store, user_browser, perf_site, reactor):
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_load.html")
    result = await ok(tools, context, "performance_start_trace", pageId=page_id, autoStop=False, ignoreCache=True)
    assert text_of(result) == "The performance trace is being recorded. Use performance_stop_trace to stop it."
    message = await failed(tools, context, "performance_start_trace", pageId=page_id, reload=False)
    assert message.startswith("A performance trace is already running for this page. Use performance_stop_trace")

    await sleep(reactor, 0.5)
    await click_button(user_browser, page_id)
    await sleep(reactor, 0.5)
    # A refused file name leaves the trace running.
    message = await failed(tools, context, "performance_stop_trace", pageId=page_id, filePath="/etc/trace.json")
    assert "is an absolute path" in message
    result = await ok(tools, context, "performance_stop_trace", pageId=page_id, filePath="load.json.gz")
    summary = text_of(result)
    inp = re.search(r"- INP: (\d+) ms, event: \(ts: \d+\), (\w+) on BUTTON id='work'", summary)
    assert inp and int(inp.group(1)) >= 150, summary
    assert "  - insight name: INPBreakdown\n" in summary
    raw = json.loads(gzip.decompress(artifact_bytes(result, store)))
    assert len(raw["traceEvents"]) > 100

    breakdown = text_of(await ok(tools, context, "performance_analyze_insight", **insight(page_id, "INPBreakdown")))
    processing = re.search(r"- Processing duration: (\d+) ms", breakdown)
    assert processing and int(processing.group(1)) >= 145, breakdown

    message = await failed(tools, context, "performance_stop_trace", pageId=page_id)
    assert message.startswith("No performance trace is running for this page. Start one with performance_start_trace")
    # The page can be traced again once the last trace ended.
    await ok(tools, context, "performance_start_trace", pageId=page_id, reload=False, autoStop=False)
    await ok(tools, context, "performance_stop_trace", pageId=page_id)


@pytest_twisted.ensureDeferred
async def test_stop_and_analyze_without_a_trace(tools, perf_site):
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_idle.html")
    message = await failed(tools, context, "performance_stop_trace", pageId=page_id)
    assert message.startswith("No performance trace is running for this page.")
    message = await failed(tools, context, "performance_analyze_insight", **insight(page_id, "LCPBreakdown"))
    assert message.startswith("No performance trace has been recorded for this page yet.")
    message = await failed(tools, context, "performance_start_trace", pageId=page_id, filePath="../escape.json")
    assert '"filePath"' in message and "goes up" in message
    # The refused call started nothing.
    await failed(tools, context, "performance_stop_trace", pageId=page_id)


@pytest_twisted.ensureDeferred
async def test_trace_without_navigation(tools, user_browser, perf_site, reactor):
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_load.html")
    await ok(tools, context, "performance_start_trace", pageId=page_id, reload=False, autoStop=False)
    await sleep(reactor, 0.3)
    await click_button(user_browser, page_id)
    await sleep(reactor, 0.5)
    summary = text_of(await ok(tools, context, "performance_stop_trace", pageId=page_id))
    assert "## insight set id: NO_NAVIGATION" in summary and "NAVIGATION_0" not in summary
    assert "  - insight name: INPBreakdown\n" in summary
    assert "  - insight name: LongTasks\n" in summary  # the click handler's 150 ms
    assert "- LCP:" not in summary


@pytest_twisted.ensureDeferred
async def test_cancelled_start_ends_its_trace(tools, perf_site, reactor):
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_idle.html")
    call = tools.call_tool("performance_start_trace", {"pageId": page_id}, context)
    await sleep(reactor, 0.5)  # reloaded, now waiting to stop by itself
    call.cancel()
    with pytest.raises(CancelledError):
        await call
    # Nothing runs any more, and Chrome took a new trace at once: the old one was ended.
    await failed(tools, context, "performance_stop_trace", pageId=page_id)
    await ok(tools, context, "performance_start_trace", pageId=page_id, reload=False, autoStop=False)
    summary = text_of(await ok(tools, context, "performance_stop_trace", pageId=page_id))
    assert "## insight set id: NO_NAVIGATION" in summary


@pytest_twisted.ensureDeferred
async def test_one_trace_per_browser(tools, perf_site, monkeypatch):
    monkeypatch.setattr(performance, "BUSY_WAIT", 0.4)  # how long the refused start retries
    context = make_context()
    first = await open_page(tools, context, perf_site + "perf_idle.html")
    second = await open_page(tools, context, perf_site + "perf_idle.html")
    await ok(tools, context, "performance_start_trace", pageId=first, reload=False, autoStop=False)
    try:
        message = await failed(tools, context, "performance_start_trace", pageId=second, reload=False)
        assert message.startswith("Chrome refused to start a trace: ")
        assert "if another page (or a DevTools window) is tracing, stop that trace first." in message
    finally:
        await ok(tools, context, "performance_stop_trace", pageId=first)
    # The refused start left nothing behind on the second page.
    await failed(tools, context, "performance_stop_trace", pageId=second)


@pytest_twisted.ensureDeferred
async def test_trace_file_over_the_limit_is_dropped_not_the_insights(reactor, user_browser, tmp_path, perf_site):
    small = ArtifactStore(str(tmp_path), ArtifactsConfig(max_bytes=10_000), reactor)
    tools = perf_tools(reactor, user_browser, small)
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_idle.html")
    # Given at start, used at stop.
    await ok(tools, context, "performance_start_trace", pageId=page_id, autoStop=False, filePath="big.json")
    result = await ok(tools, context, "performance_stop_trace", pageId=page_id)
    text = text_of(result)
    assert text.startswith('The raw trace data was not saved: "big.json" would be larger than the 10000 bytes')
    assert "## insight set id: NAVIGATION_0" in text
    assert small.artifacts("alice") == [] and not any(block["type"] == "resource_link" for block in result["content"])


@pytest_twisted.ensureDeferred
async def test_navigation_during_a_trace_through_a_redirect(tools, perf_site):
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_load.html")
    await ok(tools, context, "performance_start_trace", pageId=page_id, reload=False, autoStop=False)
    await ok(tools, context, "navigate_page", pageId=page_id, url=perf_site + "perf_redirect")
    summary = text_of(await ok(tools, context, "performance_stop_trace", pageId=page_id))
    assert f"## insight set id: NAVIGATION_0\n\nURL: {perf_site}perf_idle.html\n" in summary, summary
    latency = text_of(await ok(tools, context, "performance_analyze_insight", **insight(page_id, "DocumentLatency")))
    assert "- FAILED: the request was redirected 1 time(s)" in latency, latency
    # Chrome logs only the origin of the URL that redirected.
    assert f"{perf_site} -> {perf_site}perf_idle.html" in latency or f"{perf_site}perf_redirect -> " in latency


@pytest_twisted.ensureDeferred
async def test_closing_a_traced_page_frees_tracing(tools, perf_site):
    context = make_context()
    traced = await open_page(tools, context, perf_site + "perf_idle.html")
    other = await open_page(tools, context, perf_site + "perf_idle.html")
    await ok(tools, context, "performance_start_trace", pageId=traced, reload=False, autoStop=False)
    await ok(tools, context, "close_page", pageId=traced)
    message = await failed(tools, context, "performance_stop_trace", pageId=traced)
    assert message == f"No page with id {traced}. Call list_pages to see the pages you can use."
    await ok(tools, context, "performance_start_trace", pageId=other, reload=False, autoStop=False)
    assert "## insight set id: NO_NAVIGATION" in text_of(
        await ok(tools, context, "performance_stop_trace", pageId=other)
    )


@pytest_twisted.ensureDeferred
async def test_trace_lost_with_the_browser_connection(tools, user_browser, perf_site, reactor):
    context = make_context()
    page_id = await open_page(tools, context, perf_site + "perf_idle.html")
    await ok(tools, context, "performance_start_trace", pageId=page_id, reload=False, autoStop=False)
    page = user_browser.page(page_id)
    old_session = page.session_id
    user_browser.cdp.abort()
    for _ in range(200):
        await sleep(reactor, 0.05)
        if user_browser.status == "connected" and page.session_id not in (None, old_session):
            break
    else:
        raise AssertionError("the browser did not reconnect within 10 s")
    message = await failed(tools, context, "performance_stop_trace", pageId=page_id)
    assert message.startswith("The performance trace was lost: the connection to the browser dropped")
    # Chrome ended that trace with its session: a new one starts and stops normally.
    await ok(tools, context, "performance_start_trace", pageId=page_id, reload=False, autoStop=False)
    await ok(tools, context, "performance_stop_trace", pageId=page_id)
