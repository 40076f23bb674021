"""Target: ``list_console_messages`` over 10,000 collected messages answers in <= 50 ms.

The collector's per-page cap is 10,000 messages (`mcproxy.browser.collect.Collector`), so
10,000 is the most a page can hold and the figure is the worst case. The messages are fed
to the real `Collector` as ``Runtime.consoleAPICalled`` events shaped like Chrome's (three
arguments: a string, a number, an object preview; one stack frame) on a stand-in page, so
no browser is needed; the tool then runs through `ToolRegistry.call_tool` exactly as the
MCP layer calls it, and its result is shaped and encoded as `mcproxy.mcp` does for the
wire (``model_dump``, ``serialize_server_result``, `mcproxy.mcp.jsonrpc.encode`). The
timed call lists all 10,000 (no paging). The baseline is the same run's time to build the
10,000 listing lines with one ``str.join``.
"""

import statistics
import time

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bench.report import Summary, Verdict, say
from mcproxy.browser.page import PageState

MESSAGES = 10_000
ROUNDS = 20
TARGET_MS = 50.0
VERSION = "2025-11-25"


class _Page:
    """What the collector and the tool touch of a page."""

    page_id = 1
    closed = False
    opener = None
    via_proxy = True

    def __init__(self):
        self.state = PageState()
        self._handlers = {}
        self.browser = _Browser(self)  # the per-browser collection budget is kept by it

    def subscribe(self, method, callback):
        self._handlers.setdefault(method, []).append(callback)
        return lambda: None

    def send(self, method, params=None):
        from twisted.internet import defer

        return defer.succeed({})

    def fire(self, method, params):
        for callback in self._handlers.get(method, ()):
            callback(method, params)


class _Browser:
    browser_url = "http://127.0.0.1:9222"

    def __init__(self, page):
        self._page = page

    async def connected(self, timeout=None):
        return None

    def pages(self):
        return [self._page]


def _event(index: int) -> dict:
    return {
        "type": "log" if index % 10 else "warning",
        "args": [
            {"type": "string", "value": "request finished"},
            {"type": "number", "value": index, "description": str(index)},
            {
                "type": "object",
                "className": "Object",
                "description": "Object",
                "preview": {
                    "type": "object",
                    "overflow": False,
                    "properties": [
                        {"name": "status", "type": "number", "value": "200"},
                        {"name": "url", "type": "string", "value": f"/api/items/{index}"},
                    ],
                },
            },
        ],
        "stackTrace": {
            "callFrames": [
                {"functionName": "load", "url": "http://127.0.0.1:8080/app.js", "lineNumber": 41, "columnNumber": 7}
            ]
        },
    }


def _call(registry, context) -> tuple[float, int]:
    """One timed tool call up to the bytes the MCP layer sends: (milliseconds, bytes on the wire)."""
    from mcp_types import methods

    from mcproxy.mcp.jsonrpc import encode

    started = time.perf_counter()
    outcome = []
    registry.call_tool("list_console_messages", {"pageId": 1}, context).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("list_console_messages did not answer synchronously")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    dump = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    wire = encode({"jsonrpc": "2.0", "id": 1, "result": methods.serialize_server_result("tools/call", VERSION, dump)})
    elapsed = (time.perf_counter() - started) * 1000
    if result.is_error or f"Showing 1-{MESSAGES} of {MESSAGES}" not in result.content[0].text:
        raise RuntimeError(f"unexpected answer: {result.content[0].text[:300]}")
    return elapsed, len(wire)


def _baseline(texts: list[str]) -> float:
    started = time.perf_counter()
    "\n".join([f"msgid={i} [log] {text} (3 args)" for i, text in enumerate(texts, 1)])
    return (time.perf_counter() - started) * 1000


async def run(options) -> list[Verdict]:
    """Collect 10,000 messages, time list_console_messages over them (median of 20)."""
    from mcproxy.browser.collect import Collector
    from mcproxy.config import ToolsConfig
    from mcproxy.testing.tool_calls import make_context
    from mcproxy.tools import console
    from mcproxy.tools.registry import ToolRegistry

    say(f"== console: list_console_messages over {MESSAGES} collected messages (median of {ROUNDS}) ==")
    page = _Page()
    collector = Collector()
    collector(page, "attached")
    started = time.perf_counter()
    for index in range(MESSAGES):
        page.fire("Runtime.consoleAPICalled", _event(index))
    collect_ms = (time.perf_counter() - started) * 1000
    journal = page.state.records.console
    say(f"  collected {len(journal)} messages in {collect_ms:.1f} ms; accounted size {journal.cost / 2**20:.2f} MiB")
    say(
        f"  bound per page: {collector.max_messages} messages; {collector.max_bytes / 2**20:.0f} MiB "
        "each for console and network"
    )

    async def get_browser(user_id):
        return page.browser

    registry = ToolRegistry(get_browser, ToolsConfig(tab_scope="browser"), Clock(), tools=console.tools)
    context = make_context()
    _call(registry, context)  # warm-up
    timings, sizes = zip(*(_call(registry, context) for _ in range(ROUNDS)), strict=True)
    texts = [message.text for message in journal.entries()]
    baseline = statistics.median(_baseline(texts) for _ in range(ROUNDS))
    tool = Summary.of(list(timings))
    say(f"  list_console_messages (all {MESSAGES}, wire bytes included)  {tool}   answer {sizes[0] / 2**20:.2f} MiB")
    ratio = tool.median / baseline
    say(f"  baseline: str.join of {MESSAGES} lines        median {baseline:8.3f} ms   ratio {ratio:.1f}x")
    return [
        Verdict(
            "console list_console_messages over 10,000 messages",
            tool.median <= TARGET_MS,
            f"median {tool.median:.1f} ms (target <= {TARGET_MS:.0f} ms; {ratio:.1f}x a bare str.join)",
        )
    ]
