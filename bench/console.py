"""Target: ``list_console_messages`` over 10,000 collected messages costs the daemon <= 25 ms,
and holds its reactor for <= 5 ms at once.

The collector's per-page cap is 10,000 messages (`mcproxy.browser.collect.Collector`), so
10,000 is the most a page can hold and the figure is the worst case. The messages are fed
to the real `Collector` as ``Runtime.consoleAPICalled`` events shaped like Chrome's (three
arguments: a string, a number, an object preview; one stack frame) on a stand-in page, so
no browser is needed; the tool then runs through `ToolRegistry.call_tool` exactly as the
MCP layer calls it (on the reactor), and its result is shaped and encoded as
`mcproxy.mcp.protocol.McpSession` does for the wire (in a thread, when it is as heavy as
this one). The tool lets the reactor run between parts of the listing: the stand-in
reactor turns at once, and each turn is timed. Timings are the CPU time of the thread doing
the work (what the daemon spends), so that other processes of a busy machine do not count. The timed call lists all
10,000 (no paging). The baseline is the same run's time to build the 10,000 listing lines
with one ``str.join``. `bench.network` measures ``list_network_requests`` the same way.
"""

import statistics
import time
from collections.abc import Callable

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from bench.report import Summary, Verdict, say
from mcproxy.browser.page import PageState

MESSAGES = 10_000
ROUNDS = 20
TARGET_MS = 25.0
#: The longest the reactor may be held at once by a list call (the tool renders a thousand
#: entries a turn; the encoding of a heavy answer runs in a thread).
TURN_TARGET_MS = 5.0
VERSION = "2025-11-25"


class StandInPage:
    """What the collector and the list tools touch of a page."""

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
        return defer.succeed({})

    def fire(self, method, params):
        for callback in self._handlers.get(method, ()):
            callback(method, params)


class _Reactor(Clock):
    """A `Clock` that runs one reactor iteration at a time."""

    def turn(self) -> None:
        """Run the calls due now, as the reactor does in one iteration: not the ones they
        schedule meanwhile (`Clock.advance` would run those too)."""
        now = self.seconds()
        due = [call for call in self.calls if call.getTime() <= now]
        self.calls = [call for call in self.calls if call.getTime() > now]
        for call in due:
            call.called = 1
            call.func(*call.args, **call.kw)


class _Browser:
    browser_url = "http://127.0.0.1:9222"

    def __init__(self, page):
        self._page = page

    async def connected(self, timeout=None):
        return None

    def pages(self):
        return [self._page]


@attrs.frozen
class Timing:
    """One call as the daemon makes it, in milliseconds: its longest turn on the reactor
    (the last one encodes the answer too, unless that is done in a thread), the tool's
    turns together, shaping and encoding the answer; the answer's size."""

    longest: float
    tool: float
    encoding: float
    size: int


def collecting(tools) -> tuple[StandInPage, Callable[[str, dict, str], Timing]]:
    """A stand-in page the real `Collector` collects for, and ``call(tool, args, expected)``,
    which times one call of ``tools`` on it as the daemon makes it and checks that its text
    holds ``expected``."""
    from mcproxy.browser.collect import Collector
    from mcproxy.config import ToolsConfig
    from mcproxy.testing.tool_calls import make_context
    from mcproxy.tools.registry import ToolRegistry

    page = StandInPage()
    Collector()(page, "attached")

    async def get_browser(user_id):
        return page.browser

    clock = _Reactor()
    registry = ToolRegistry(get_browser, ToolsConfig(tab_scope="browser"), clock, tools=tools)
    context = make_context()

    def call(tool: str, args: dict, expected: str) -> Timing:
        outcome: list = []
        started = time.thread_time()
        registry.call_tool(tool, {"pageId": 1, **args}, context).addBoth(outcome.append)
        turns = [time.thread_time() - started]
        while not outcome:  # the tool let the reactor run other work: its next turn
            started = time.thread_time()
            clock.turn()
            turns.append(time.thread_time() - started)
        result = outcome[0]
        if isinstance(result, Failure):
            result.raiseException()
        started = time.thread_time()
        wire, in_thread = _wire(result)
        encoding = time.thread_time() - started
        text = result["content"][0]["text"]
        if result["isError"] or expected not in text:
            raise RuntimeError(f"unexpected answer: {text[:300]}")
        tool = sum(turns)
        if not in_thread:
            turns[-1] += encoding
        return Timing(max(turns) * 1000, tool * 1000, encoding * 1000, len(wire))

    return page, call


def _wire(result) -> tuple[bytes, bool]:
    """The bytes `McpSession` sends for a tool's ``result``, and whether it makes them in a
    thread: shaped and encoded in pieces there when it is heavy, as one JSON value on the
    reactor otherwise."""
    from mcproxy.mcp.jsonrpc import Encoded, encode, result_message, to_json_in_pieces
    from mcproxy.mcp.shaping import OFF_REACTOR_WEIGHT, shape_result, weight

    if weight(result) >= OFF_REACTOR_WEIGHT:
        return encode(
            result_message(1, Encoded(to_json_in_pieces(shape_result("tools/call", VERSION, result, None))))
        ), True
    return encode(result_message(1, shape_result("tools/call", VERSION, result, None))), False


@attrs.frozen
class Timings:
    """`ROUNDS` calls: their longest reactor turns, the tool's time, the encoding's, the daemon
    time (the last two together), and the answer's size."""

    longest: Summary
    tool: Summary
    encoding: Summary
    total: Summary
    size: int

    @classmethod
    def of(cls, call: Callable[[], Timing]) -> "Timings":
        """``call`` once to warm up, then `ROUNDS` times."""
        call()
        rounds = [call() for _ in range(ROUNDS)]
        return cls(
            Summary.of([r.longest for r in rounds]),
            Summary.of([r.tool for r in rounds]),
            Summary.of([r.encoding for r in rounds]),
            Summary.of([r.tool + r.encoding for r in rounds]),
            rounds[0].size,
        )

    def show(self) -> None:
        say(f"  longest reactor turn                {self.longest}")
        say(f"  the tool (all its turns)            {self.tool}")
        say(f"  shaping and encoding                {self.encoding}   answer {self.size / 2**20:.2f} MiB")
        say(f"  daemon time                         {self.total}")


def median_ms(work: Callable[[], object]) -> float:
    """Median milliseconds of `ROUNDS` runs of ``work`` (the baselines)."""
    samples = []
    for _ in range(ROUNDS):
        started = time.thread_time()
        work()
        samples.append((time.thread_time() - started) * 1000)
    return statistics.median(samples)


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


async def run(options) -> list[Verdict]:
    """Collect 10,000 messages, time list_console_messages over them (median of 20)."""
    from mcproxy.tools import console

    say(f"== console: list_console_messages over {MESSAGES} collected messages (median of {ROUNDS}) ==")
    page, call = collecting(console.tools)
    started = time.perf_counter()
    for index in range(MESSAGES):
        page.fire("Runtime.consoleAPICalled", _event(index))
    collect_ms = (time.perf_counter() - started) * 1000
    journal = page.state.records.console
    say(f"  collected {len(journal)} messages in {collect_ms:.1f} ms; accounted size {journal.cost / 2**20:.2f} MiB")
    say(f"  bound per page: {journal.max_entries} messages, {journal.max_bytes / 2**20:.0f} MiB")
    expected = f"Showing 1-{MESSAGES} of {MESSAGES}"
    timings = Timings.of(lambda: call("list_console_messages", {}, expected))
    rows = [(m.id, m.type, m.text, len(m.args)) for m in journal.entries()]
    baseline = median_ms(lambda: "\n".join([f"msgid={i} [{kind}] {text} ({n} args)" for i, kind, text, n in rows]))
    timings.show()
    return verdicts("console list_console_messages over 10,000 messages", timings, baseline, MESSAGES, TARGET_MS)


def verdicts(name: str, timings: Timings, baseline: float, lines: int, target: float) -> list[Verdict]:
    """The daemon time against ``target``, the longest reactor turn against `TURN_TARGET_MS`."""
    ratio = timings.total.median / baseline
    say(f"  baseline: str.join of {lines} lines        median {baseline:8.3f} ms   ratio {ratio:.1f}x")
    total, longest = timings.total.median, timings.longest.median
    return [
        Verdict(
            name,
            total <= target,
            f"median {total:.1f} ms of daemon time (target <= {target:g} ms; {ratio:.1f}x a bare str.join)",
        ),
        Verdict(
            f"{name}, longest reactor turn",
            longest <= TURN_TARGET_MS,
            f"median {longest:.1f} ms (target <= {TURN_TARGET_MS:g} ms)",
        ),
    ]
