"""Performance tools: record a trace of a page, summarize it, explain one insight.

The trace uses the categories DevTools' performance panel records. Chrome hands it back as
a stream (``transferMode: ReturnAsStream``) read with ``IO.read`` chunk by chunk: each chunk
is decoded at once, only the events the insights use are kept, and with ``filePath`` the
raw JSON goes to the caller's artifact file as it arrives, so a trace is never held whole.
One trace per page at a time (Chrome allows one per browser; starting a second one is
refused with advice). The insights of the last trace stay with the page for
performance_analyze_insight.
"""

import base64
import codecs
import zlib

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from mcproxy.browser.emulation import emulation_of
from mcproxy.errors import BrowserUnavailable, CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.navigation import wait_for_load
from mcproxy.tools.page_state import tool_state
from mcproxy.tools.trace.events import TraceEvents, TraceFormatError, TraceParser
from mcproxy.tools.trace.insights import analyze, node_ids
from mcproxy.tools.trace.records import TraceAnalysis
from mcproxy.tools.trace.summary import explain, summary

# What DevTools' performance panel records (TimelineController.ts), as chrome-devtools-mcp does.
CATEGORIES = (
    "blink.console",
    "blink.user_timing",
    "devtools.timeline",
    "disabled-by-default-devtools.screenshot",
    "disabled-by-default-devtools.timeline",
    "disabled-by-default-devtools.timeline.invalidationTracking",
    "disabled-by-default-devtools.timeline.frame",
    "disabled-by-default-devtools.timeline.stack",
    "disabled-by-default-v8.cpu_profiler",
    "disabled-by-default-v8.cpu_profiler.hires",
    "latencyInfo",
    "loading",
    "disabled-by-default-lighthouse",
    "v8.execute",
    "v8",
)
# autoStop ends the recording this long after the load event, as upstream does.
AUTO_STOP_DELAY = 5.0
READ_CHUNK = 1 << 20
# Chrome flushes the trace buffers before tracingComplete; big traces take a while.
MIN_STOP_TIMEOUT = 30.0
# How long a refused Tracing.start is retried, and how often.
BUSY_WAIT = 3.0
BUSY_RETRY = 0.2
MAX_NAMED_NODES = 30
DESCRIBE_TIMEOUT = 2.0


@attrs.define
class TraceState:
    """Per page: the running recording (its filePath, if given at start) and the last analysis."""

    running: bool = False
    # The CDP session that started the trace: Chrome drops a trace with its session (a reconnect).
    session_id: str | None = None
    file_path: str | None = None
    conditions: tuple[str, ...] = ()
    analysis: TraceAnalysis | None = None
    # An abandoned trace Chrome is still ending: its tracingComplete must not end the next one.
    discarding: Deferred | None = None


def _state(page) -> TraceState:
    state = tool_state(page)
    if state.trace is None:
        state.trace = TraceState()
    return state.trace


def _lost(page, state: TraceState) -> bool:
    """Forget a running trace that went away with an earlier DevTools session; True if it did."""
    if state.running and state.session_id != page.session_id:
        state.running, state.file_path = False, None
        return True
    return False


class _TraceFile:
    """The raw trace as the caller's artifact, gzipped when the name ends in ``.gz``.

    A file over ``artifacts.max_bytes`` is dropped (the insights are still computed) and the
    reason kept for the answer.
    """

    def __init__(self, call: ToolCall, file_path: str):
        store = call.file_store(file_path)
        gzipped = file_path.lower().endswith(".gz")
        self._writer = store.writer(
            call.context.principal.user_id, file_path, "application/gzip" if gzipped else "application/json"
        )
        self._compressor = zlib.compressobj(wbits=31) if gzipped else None
        self.problem: str | None = None

    def write(self, data: bytes) -> None:
        """Append raw trace bytes."""
        self._put(self._compressor.compress(data) if self._compressor else data)

    def _put(self, data: bytes) -> None:
        if self.problem is not None or not data:
            return
        try:
            self._writer.write(data)
        except ToolError as e:
            self.problem = e.message

    async def finish(self):
        """The saved `Artifact`, or None when it could not be saved (see ``problem``)."""
        if self._compressor is not None:
            self._put(self._compressor.flush())
        if self.problem is not None:
            return None
        return await self._writer.finish()

    def abort(self) -> None:
        self._writer.abort()


_FILE_PATH = s.string(
    "Also save the raw trace, when it stops, as this file: a relative name in your own artifact directory, "
    "returned as a resource you can read. A name ending in .gz is gzip-compressed, e.g. trace.json or "
    "trace.json.gz."
)


tools = ToolSet("performance")


@tools.page_tool(
    "performance_start_trace",
    title="Start performance trace",
    description=(
        "Record a performance trace of the page, to find what slows it down and to measure Core Web "
        "Vitals (LCP, INP, CLS) and page load speed."
    ),
    params={
        "reload": s.boolean(
            "Reload the page once the trace has started. Load the URL you want with navigate_page "
            "before starting the trace when reload or autoStop is true.",
            default=True,
        ),
        "autoStop": s.boolean("Stop the trace by itself a few seconds after the page has loaded.", default=True),
        "ignoreCache": s.boolean("Bypass the HTTP cache on the reload, to measure a cold load (reload only)."),
        "filePath": _FILE_PATH,
    },
)
async def start_trace(call: ToolCall) -> Response:
    """Start tracing; with reload, reload the page; with autoStop, stop and summarize after the load."""
    page = call.page
    state = _state(page)
    _lost(page, state)
    if state.running:
        raise ToolError(
            "A performance trace is already running for this page. Use performance_stop_trace to stop it "
            "before starting another one."
        )
    file_path = call.args.get("filePath")
    if file_path:
        call.file_store(file_path)  # refused before any work, so nothing is recorded for nothing
    if state.discarding is not None:
        await state.discarding
    await _start_tracing(call)
    state.running, state.session_id, state.file_path = True, page.session_id, file_path
    state.conditions = _conditions(page)
    try:
        if call.args.get("reload", True):
            seconds = call.timeout()  # already stretched by the page's throttling
            params = {"ignoreCache": bool(call.args.get("ignoreCache"))}
            await wait_for_load(page, seconds, page.send("Page.reload", params, timeout=seconds))
        if not call.args.get("autoStop", True):
            return Response().add("The performance trace is being recorded. Use performance_stop_trace to stop it.")
        await deferLater(call.clock, AUTO_STOP_DELAY, lambda: None)
    except BaseException:
        _abandon(page, state)
        raise
    return await _stop(call, state, file_path)


async def _start_tracing(call: ToolCall) -> None:
    """Tracing.start, retried for a moment while Chrome is still ending a trace of a closed tab."""
    params = {
        "traceConfig": {"includedCategories": list(CATEGORIES), "excludedCategories": ["*"]},
        "transferMode": "ReturnAsStream",
        "streamFormat": "json",
    }
    deadline = call.clock.seconds() + BUSY_WAIT
    while True:
        try:
            await call.page.send("Tracing.start", params)
            return
        except CDPError as e:
            if call.clock.seconds() >= deadline:
                raise ToolError(
                    f"Chrome refused to start a trace: {e.message.rstrip('.')}. Chrome records one trace at a time "
                    "per browser; if another page (or a DevTools window) is tracing, stop that trace first."
                ) from None
        await deferLater(call.clock, BUSY_RETRY, lambda: None)


@tools.page_tool(
    "performance_stop_trace",
    title="Stop performance trace",
    description="Stop the performance trace running on the page and summarize what it found.",
    params={
        "filePath": _FILE_PATH,
    },
)
async def stop_trace(call: ToolCall) -> Response:
    """Stop the page's trace and summarize it."""
    state = _state(call.page)
    if _lost(call.page, state):
        raise ToolError(
            "The performance trace was lost: the connection to the browser dropped while it was recording. "
            "Start a new one with performance_start_trace."
        )
    if not state.running:
        raise ToolError(
            "No performance trace is running for this page. Start one with performance_start_trace "
            "(with autoStop false to stop it yourself)."
        )
    return await _stop(call, state, call.args.get("filePath") or state.file_path)


@tools.page_tool(
    "performance_analyze_insight",
    title="Analyze performance insight",
    description=(
        "Explain one Performance Insight of an insight set listed in the summary of the page's last "
        "trace recording, in detail."
    ),
    params={
        "insightSetId": s.string(
            'The insight set id, exactly as listed under "Available insight sets" in the trace summary.'
        ),
        "insightName": s.string('The insight to explain, for example "DocumentLatency" or "LCPBreakdown".'),
    },
    required=("insightSetId", "insightName"),
    exclusive=False,
    read_only=True,
)
async def analyze_insight(call: ToolCall) -> Response:
    """The detail of one insight of the page's last trace."""
    analysis = _state(call.page).analysis
    if analysis is None:
        raise ToolError(
            "No performance trace has been recorded for this page yet. Record one with performance_start_trace, "
            "then ask about the insights its summary lists."
        )
    return Response().add(explain(analysis, call.args["insightSetId"], call.args["insightName"]).text())


def _conditions(page) -> tuple[str, ...]:
    """The throttling set with emulate, for the summary."""
    emulation = emulation_of(page)
    return (f"CPU throttling: {emulation.cpu_rate:g}x", f"Network throttling: {emulation.network or 'none'}")


def _abandon(page, state: TraceState) -> None:
    """End a trace nobody will read (the start failed or was cancelled); discard Chrome's stream."""
    state.running, state.file_path = False, None
    complete = page.wait_for_event("Tracing.tracingComplete", timeout=MIN_STOP_TIMEOUT)
    complete.addCallback(lambda info: page.send("IO.close", {"handle": info["stream"]}))
    complete.addErrback(lambda _: None)

    def ended(_) -> None:
        state.discarding = None

    complete.addCallback(ended)
    state.discarding = complete
    page.send("Tracing.end").addErrback(lambda _: complete.cancel())


async def _stop(call: ToolCall, state: TraceState, file_path: str | None) -> Response:
    page = call.page
    # Made before the trace ends, so a refused file name leaves the trace running.
    sink = _TraceFile(call, file_path) if file_path else None
    try:
        info = await _end_tracing(page, state, call.timeout())
        events = await _read_stream(page, info["stream"], sink)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    analysis = analyze(events, await _describe_nodes(page, node_ids(events)), state.conditions)
    state.analysis = analysis
    response = Response()
    if sink is not None:
        artifact = await sink.finish()
        if artifact is not None:
            response.add_artifact(artifact, "The raw trace data")
        else:
            response.add(f"The raw trace data was not saved: {sink.problem}")
    response.add("The performance trace has been stopped.")
    if info.get("dataLossOccurred"):
        response.add("Chrome reported that some trace data was lost (its trace buffer filled up).")
    return response.add(summary(analysis))


async def _end_tracing(page, state: TraceState, seconds: float) -> dict:
    """Tell Chrome to stop recording; its ``tracingComplete`` event (with the stream handle)."""
    complete = page.wait_for_event("Tracing.tracingComplete", timeout=max(seconds, MIN_STOP_TIMEOUT))
    state.running, state.file_path = False, None
    try:
        await page.send("Tracing.end")
    except BaseException as e:
        complete.cancel()
        complete.addErrback(lambda _: None)
        if isinstance(e, CDPError):
            raise ToolError(
                f"The trace could not be stopped ({e.message.rstrip('.')}); it was probably lost when the browser "
                "connection dropped. Start a new one with performance_start_trace."
            ) from None
        raise
    info = await complete
    if not info.get("stream"):
        raise ToolError("Chrome ended the trace without handing it over as a stream; this Chrome is too old.")
    return info


async def _read_stream(page, handle: str, sink: _TraceFile | None) -> TraceEvents:
    """Read Chrome's trace stream chunk by chunk, keeping the events the insights use."""
    parser, events = TraceParser(), TraceEvents()
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while True:
            chunk = await page.send("IO.read", {"handle": handle, "size": READ_CHUNK})
            if chunk.get("base64Encoded"):
                raw = base64.b64decode(chunk.get("data", ""))
                text = decoder.decode(raw)
            else:
                text = chunk.get("data", "")
                raw = text.encode("utf-8")
            if sink is not None:
                sink.write(raw)
            events.feed(parser.feed(text))
            if chunk.get("eof"):
                break
        events.feed(parser.feed(decoder.decode(b"", final=True)))
        parser.close()
    except (TraceFormatError, UnicodeDecodeError) as e:
        raise ToolError(f"Chrome's trace data could not be read ({e}). Record the trace again.") from None
    finally:
        page.send("IO.close", {"handle": handle}).addErrback(lambda _: None)
    return events


async def _describe_nodes(page, ids: set[int]) -> dict[int, str]:
    """Short descriptions (``DIV id='banner'``) of the trace's DOM nodes still in the page."""
    names = {}
    for node_id in sorted(ids)[:MAX_NAMED_NODES]:
        try:
            reply = await page.send("DOM.describeNode", {"backendNodeId": node_id}, timeout=DESCRIBE_TIMEOUT)
        except CDPError:
            continue  # not in the current document any more
        except BrowserUnavailable:
            break  # the page does not answer (a dialog, a hang): the ids will do
        node = reply["node"]
        attributes = node.get("attributes") or []
        pairs = dict(zip(attributes[::2], attributes[1::2], strict=False))
        label = node.get("nodeName", "?")
        for key in ("id", "class"):
            if pairs.get(key):
                label += f" {key}='{pairs[key]}'"
        names[node_id] = label
    return names
