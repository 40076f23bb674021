"""Performance insights computed from the kept trace events, in the shape DevTools gives them.

A trace is split into insight sets at main-frame navigations (``NAVIGATION_<n>``; the part
before the first one is ``NO_NAVIGATION`` when there is no navigation or when something
happened in it). Each set has lab metrics (LCP with its breakdown, FCP, INP, CLS, long
tasks) and the insights this module computes: LCPBreakdown, CLSCulprits, INPBreakdown,
DocumentLatency, RenderBlocking and LongTasks. Other DevTools insights are not computed,
and the texts say so. Times are trace timestamps in microseconds; the texts show
milliseconds relative to the start of the insight set.
"""

from collections import defaultdict

import attrs

from mcproxy.errors import ToolError
from mcproxy.tools.trace.events import ATTRIBUTION, LONG_TASK_US, TraceEvents

SERVER_RESPONSE_LIMIT_MS = 600
SERVER_RESPONSE_GOAL_MS = 100
COMPRESSIBLE_MIN_BYTES = 1400
SHIFT_GAP_US = 1_000_000
SHIFT_WINDOW_US = 5_000_000
TOP_LONG_TASKS = 10
TOP_SHIFTS = 5
_BLOCKING = frozenset({"blocking", "in_body_parser_blocking"})
_COMPRESSED = frozenset({"gzip", "br", "deflate", "zstd", "compress"})

COMPUTED = ("LCPBreakdown", "CLSCulprits", "INPBreakdown", "DocumentLatency", "RenderBlocking", "LongTasks")
# DevTools insights this module does not compute; asking for one says so.
NOT_COMPUTED = (
    "LCPDiscovery",
    "NetworkDependencyTree",
    "ThirdParties",
    "ForcedReflow",
    "DOMSize",
    "ImageDelivery",
    "FontDisplay",
    "Cache",
    "Viewport",
    "ModernHTTP",
    "DuplicatedJavaScript",
    "LegacyJavaScript",
    "SlowCSSSelector",
)


@attrs.frozen
class Insight:
    """One insight of one set: the list entry and the detail `performance_analyze_insight` shows."""

    name: str
    title: str
    description: str
    checks: str
    details: str
    bounds: tuple[float, float]
    savings: str = "none"
    question: str = ""
    links: tuple[str, ...] = ()

    def listing(self) -> str:
        """The entry under "Available insights" in the trace summary."""
        lines = [
            f"  - insight name: {self.name}",
            f"    description: {self.description}",
            f"    relevant trace bounds: {_bounds(self.bounds)}",
        ]
        if self.savings != "none":
            lines.append(f"    estimated metric savings: {self.savings}")
        if self.question:
            lines.append(f"    example question: {self.question}")
        return "\n".join(lines)

    def text(self) -> str:
        """The full answer of `performance_analyze_insight`."""
        links = "\n".join(f"- {link}" for link in self.links)
        return (
            f"## Insight Title: {self.title}\n\n## Insight Summary:\n{self.checks}\n\n"
            f"## Detailed analysis:\n{self.details}\n\n## Estimated savings: {self.savings}\n\n"
            f"## External resources:\n{links}"
        )


@attrs.frozen
class InsightSet:
    """The metrics and insights of one part of the trace."""

    id: str
    url: str
    bounds: tuple[float, float]
    metrics: tuple[str, ...]
    insights: dict[str, Insight]
    missing: dict[str, str]

    def text(self) -> str:
        """This set's part of the trace summary."""
        metrics = "\n".join(f"  {line}" for line in self.metrics) or "  (none measured)"
        listed = "\n".join(insight.listing() for insight in self.insights.values()) or "  (none)"
        missing = "; ".join(f"{name} ({why})" for name, why in self.missing.items())
        text = (
            f"## insight set id: {self.id}\n\nURL: {self.url}\nBounds: {_bounds(self.bounds)}\n"
            f"Metrics (lab / observed):\n{metrics}\n"
            "Metrics (field / real users): n/a – this server does not fetch CrUX field data\n"
            f"Available insights:\n{listed}"
        )
        return text + (f"\nNot available in this set: {missing}" if missing else "")


@attrs.frozen
class TraceAnalysis:
    """Everything computed from one trace recording."""

    url: str
    bounds: tuple[float, float]
    sets: tuple[InsightSet, ...]
    notes: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()

    def summary(self) -> str:
        """The trace summary: bounds, then each insight set with its metrics and insights."""
        ids = ", ".join(s.id for s in self.sets)
        parts = [
            "\n".join(
                (
                    f"## Summary of Performance trace findings:\nURL: {self.url}",
                    f"Trace bounds: {_bounds(self.bounds)}",
                    *self.conditions,
                )
            ),
            *self.notes,
            "# Available insight sets\n\nThe trace is split into insight sets, one per navigation (and one for "
            "the time before the first navigation when something happened then). Each insight applies to its "
            "own set only, so pass the insight set id together with the insight name. When nobody names a set "
            f"or navigation, the first set is meant. Insight sets: {ids}.",
            *(s.text() for s in self.sets),
            f"Insights computed by this server: {', '.join(COMPUTED)}. Not computed: {', '.join(NOT_COMPUTED)}.\n"
            "Call performance_analyze_insight with an insight set id and an insight name for the details.",
        ]
        return "\n\n".join(parts)

    def insight(self, set_id: str, name: str) -> Insight:
        """One insight; ToolError naming what exists when the set or the insight does not."""
        found = next((s for s in self.sets if s.id == set_id), None)
        if found is None:
            ids = ", ".join(s.id for s in self.sets)
            raise ToolError(f'No insight set "{set_id}" in the last trace. Its insight sets are: {ids}.')
        if name in found.insights:
            return found.insights[name]
        available = ", ".join(found.insights) or "none"
        if name in found.missing:
            raise ToolError(
                f'{name} has no data in {set_id}: {found.missing[name]}. Available insights there: {available}.'
            )
        if name in NOT_COMPUTED:
            raise ToolError(
                f'{name} is a DevTools insight this server does not compute. Available insights in {set_id}: '
                f"{available}."
            )
        raise ToolError(f'Unknown insight "{name}". Available insights in {set_id}: {available}.')


@attrs.define
class Request:
    """One network request assembled from its send, response and finish events."""

    request_id: str
    sends: list[dict] = attrs.field(factory=list)
    response: dict | None = None
    finish: dict | None = None

    @property
    def data(self) -> dict:
        return self.sends[-1]["args"]["data"]

    @property
    def url(self) -> str:
        return self.data.get("url", "")

    @property
    def frame(self) -> str | None:
        return self.data.get("frame")

    @property
    def first_ts(self) -> float:
        return self.sends[0]["ts"]

    def _timing(self) -> dict:
        return (self.response or {}).get("args", {}).get("data", {}).get("timing") or {}

    @property
    def start(self) -> float:
        """When the (final) request was sent on the network clock, else when it was issued."""
        timing = self._timing()
        if timing.get("requestTime"):
            return timing["requestTime"] * 1e6
        return self.sends[-1]["ts"]

    @property
    def response_start(self) -> float | None:
        """When the first byte of the response arrived (None without a response)."""
        timing = self._timing()
        if not timing.get("requestTime"):
            return self.response["ts"] if self.response else None
        return timing["requestTime"] * 1e6 + _headers_ms(timing) * 1000

    @property
    def end(self) -> float:
        """When the download finished (the last event seen when it never did)."""
        if self.finish:
            finish_time = self.finish["args"]["data"].get("finishTime")
            return finish_time * 1e6 if finish_time else self.finish["ts"]
        return self.response["ts"] if self.response else self.sends[-1]["ts"]

    @property
    def server_ms(self) -> float | None:
        """Time the server took to start answering, as DevTools measures it."""
        timing = self._timing()
        if not timing:
            return None
        return max(0.0, _headers_ms(timing) - max(timing.get("sendEnd", 0), 0))

    def response_field(self, key: str, default=None):
        return (self.response or {}).get("args", {}).get("data", {}).get(key, default)

    def finish_field(self, key: str, default=None):
        return (self.finish or {}).get("args", {}).get("data", {}).get(key, default)


def _headers_ms(timing: dict) -> float:
    """When the response headers started arriving, in ms after ``requestTime``."""
    headers = timing.get("receiveHeadersStart")
    if headers is None or headers < 0:
        headers = timing.get("receiveHeadersEnd", 0)
    return headers


@attrs.define
class _Scope:
    """Which frames and processes belong to the traced page."""

    main_frame: str | None
    frames: set[str]
    pids: set[int]

    def has_frame(self, frame: str | None) -> bool:
        return not self.frames or frame in self.frames

    def has_pid(self, pid) -> bool:
        return not self.pids or pid in self.pids


def node_ids(trace: TraceEvents) -> set[int]:
    """DOM node ids the insights name (LCP elements, shifted elements, interaction targets)."""
    ids = {e["args"]["data"].get("nodeId") for e in trace.of("largestContentfulPaint::Candidate")}
    for shift in trace.of("LayoutShift"):
        ids.update(node.get("node_id") for node in shift["args"]["data"].get("impacted_nodes") or ())
    ids.update(e["args"]["data"].get("nodeId") for e in trace.of("EventTiming"))
    return {i for i in ids if isinstance(i, int) and i > 0}


def analyze(
    trace: TraceEvents, node_names: dict[int, str] | None = None, conditions: tuple[str, ...] = ()
) -> TraceAnalysis:
    """Split the trace into insight sets and compute their metrics and insights.

    ``node_names`` describes DOM nodes by id (from the live page) where the trace has no name;
    ``conditions`` are summary lines on how the page was throttled while recording.
    """
    names = node_names or {}
    scope = _scope(trace)
    navigations = _navigations(trace, scope)
    started = trace.of("TracingStartedInBrowser")
    low = started[0]["ts"] if started else trace.min_ts or 0
    high = trace.max_ts or low
    requests = _requests(trace)
    sets = []
    if not navigations or navigations[0]["ts"] > low:
        first_end = navigations[0]["ts"] if navigations else high
        url = _page_url(scope, trace)
        pre = _insight_set(trace, scope, requests, names, "NO_NAVIGATION", None, None, (low, first_end), url)
        if not navigations or pre.insights:
            sets.append(pre)
    for index, navigation in enumerate(navigations):
        end = navigations[index + 1]["ts"] if index + 1 < len(navigations) else high
        # Chrome may log only the origin of a URL that redirects; the document request ends at the real one.
        document = _document_request(requests, navigation, scope)
        url = document.url if document else navigation["args"]["data"]["documentLoaderURL"]
        set_id, bounds = f"NAVIGATION_{index}", (navigation["ts"], end)
        sets.append(_insight_set(trace, scope, requests, names, set_id, navigation, document, bounds, url))
    notes = []
    if trace.truncated:
        notes.append(
            f"Note: the trace was too large to keep every relevant event; insights cover its first "
            f"{trace.kept} relevant events."
        )
    url = sets[-1].url if navigations else _page_url(scope, trace)
    return TraceAnalysis(url=url, bounds=(low, high), sets=tuple(sets), notes=tuple(notes), conditions=conditions)


def _scope(trace: TraceEvents) -> _Scope:
    main, frames, pids = None, set(), set()
    for event in trace.of("TracingStartedInBrowser"):
        for frame in event["args"]["data"].get("frames") or ():
            frames.add(frame.get("frame"))
            if frame.get("processId"):
                pids.add(frame["processId"])
            if main is None and (frame.get("isOutermostMainFrame") or not frame.get("parent")):
                main = frame.get("frame")
    for event in trace.of("FrameCommittedInBrowser"):
        data = event["args"]["data"]
        if frames and data.get("frame") not in frames and data.get("parent") not in frames:
            continue
        frames.add(data.get("frame"))
        if data.get("processId"):
            pids.add(data["processId"])
    return _Scope(main, frames, pids)


def _page_url(scope: _Scope, trace: TraceEvents) -> str:
    commits = trace.of("FrameCommittedInBrowser") + trace.of("TracingStartedInBrowser")
    for event in sorted(commits, key=lambda e: e["ts"], reverse=True):
        data = event["args"]["data"]
        for frame in data.get("frames") or [data]:
            if frame.get("frame") == scope.main_frame and frame.get("url"):
                return frame["url"]
    return "unknown"


def _navigations(trace: TraceEvents, scope: _Scope) -> list[dict]:
    navigations, seen = [], set()
    for event in trace.of("navigationStart"):
        data = event["args"].get("data") or {}
        main = data.get("isOutermostMainFrame", data.get("isLoadingMainFrame"))
        if not main or not data.get("documentLoaderURL"):
            continue
        if scope.main_frame is None:
            scope.main_frame = event["args"].get("frame")
        if event["args"].get("frame") != scope.main_frame or data.get("navigationId") in seen:
            continue
        seen.add(data.get("navigationId"))
        navigations.append(event)
    return navigations


def _requests(trace: TraceEvents) -> dict[str, Request]:
    requests: dict[str, Request] = {}
    for event in trace.of("ResourceSendRequest"):
        request_id = event["args"]["data"].get("requestId")
        requests.setdefault(request_id, Request(request_id)).sends.append(event)
    for event in trace.of("ResourceReceiveResponse"):
        request = requests.get(event["args"]["data"].get("requestId"))
        if request is not None:
            request.response = event
    for event in trace.of("ResourceFinish"):
        request = requests.get(event["args"]["data"].get("requestId"))
        if request is not None:
            request.finish = event
    return requests


def _insight_set(trace, scope, requests, names, set_id, navigation, document, bounds, url) -> InsightSet:
    start, end = bounds
    # The last set includes the trace's last moment; the others end where the next begins.
    final = end == (trace.max_ts or end)

    def inside(event: dict) -> bool:
        return start <= event["ts"] < end or (final and event["ts"] == end)

    metrics: list[str] = []
    found: list[tuple[str, Insight | None, str]] = []
    fcp = _fcp(trace, navigation, scope, inside)
    if navigation is not None:
        lcp = _lcp(trace, navigation, requests, scope, document, names, metrics)
        if fcp is not None:
            metrics.append(f"- FCP: {_ms(fcp['ts'] - start)}, event: (ts: {fcp['ts']})")
        found += [
            ("LCPBreakdown", lcp, "no largest contentful paint was recorded for this navigation"),
            (
                "DocumentLatency",
                _document_latency(document, navigation) if document else None,
                "the main document request is not in the trace",
            ),
            (
                "RenderBlocking",
                _render_blocking(requests, scope, document, fcp, start, inside),
                "no render-blocking requests",
            ),
        ]
    found += [
        ("INPBreakdown", _inp(trace, scope, names, inside, start, metrics), "no interactions were recorded"),
        ("CLSCulprits", _cls(trace, scope, names, inside, start, metrics), "no layout shifts"),
        ("LongTasks", _long_tasks(trace, scope, inside, start, metrics), "no main-thread task over 50 ms"),
    ]
    insights = {name: insight for name, insight, _ in found if insight is not None}
    missing = {name: why for name, insight, why in found if insight is None}
    return InsightSet(set_id, url, bounds, tuple(metrics), insights, missing)


def _document_request(requests: dict[str, Request], navigation: dict, scope: _Scope) -> Request | None:
    data = navigation["args"]["data"]
    request = requests.get(data.get("navigationId"))
    if request is not None:
        return request
    candidates = [
        r
        for r in requests.values()
        if r.data.get("resourceType") == "Document"
        and r.frame == scope.main_frame
        and r.url == data.get("documentLoaderURL")
        and r.first_ts >= navigation["ts"] - 1_000_000
    ]
    return min(candidates, key=lambda r: r.first_ts, default=None)


def _fcp(trace, navigation, scope, inside) -> dict | None:
    for event in trace.of("firstContentfulPaint"):
        if event["args"].get("frame") != scope.main_frame and scope.main_frame is not None:
            continue
        if navigation is not None:
            if event["args"].get("data", {}).get("navigationId") == navigation["args"]["data"].get("navigationId"):
                return event
        elif inside(event):
            return event
    return None


def _lcp(trace, navigation, requests, scope, document, names, metrics) -> Insight | None:
    navigation_id = navigation["args"]["data"].get("navigationId")
    nav_ts = navigation["ts"]

    def mine(event: dict) -> bool:
        data = event["args"].get("data") or {}
        return data.get("navigationId") == navigation_id and data.get("isOutermostMainFrame", True)

    candidates = [e for e in trace.of("largestContentfulPaint::Candidate") if mine(e)]
    if not candidates:
        return None
    lcp = max(candidates, key=lambda e: (e["ts"], e["args"]["data"].get("candidateIndex", 0)))
    if any(e["ts"] >= lcp["ts"] for e in trace.of("largestContentfulPaint::Invalidate") if mine(e)):
        return None
    data = lcp["args"]["data"]
    node_id = data.get("nodeId")
    node = data.get("nodeName") or names.get(node_id) or "unknown element"
    image = next(
        (
            e["args"]["data"]
            for e in trace.of("LargestImagePaint::Candidate")
            if e["ts"] == lcp["ts"] and e["args"].get("frame") == lcp["args"].get("frame")
        ),
        None,
    )
    image_url = (image or {}).get("imageUrl")
    value = lcp["ts"] - nav_ts
    metrics.append(f"- LCP: {_ms(value)}, event: (ts: {lcp['ts']}), nodeId: {node_id} ({node})")
    phases = _lcp_phases(nav_ts, lcp, data, document, image_url, requests, scope)
    if phases:
        metrics.append("- LCP breakdown:")
        metrics.extend(f"  - {label}: {_ms(b - a)}, bounds: {_bounds((a, b))}" for label, a, b in phases)
    kind = "an image" if data.get("type") == "image" else "text"
    details = [
        f"The Largest Contentful Paint (LCP) of this navigation happened at {_ms(value)}, painting {kind}: "
        f"{node} (nodeId {node_id}).",
    ]
    if image_url:
        details.append(f"The LCP resource: {image_url}")
    if phases:
        details.append("\nLCP breakdown (time spent in each phase):")
        details.extend(
            f"- {label}: {_ms(b - a)} ({_share(b - a, value)} of LCP), from {_ms(a - nav_ts)} to {_ms(b - nav_ts)}"
            for label, a, b in phases
        )
        longest = max(phases, key=lambda p: p[2] - p[1])
        details.append(f"\nThe longest phase is {longest[0]}: {_PHASE_ADVICE[longest[0]]}")
    else:
        details.append("The phases could not be measured: the main document request is not in the trace.")
    return Insight(
        name="LCPBreakdown",
        title="LCP breakdown",
        description="The time to the largest contentful paint, split into the phases that make it up; "
        "shorten the longest one.",
        checks="This insight splits the Largest Contentful Paint into its phases: time to first byte of the "
        "document, then (for an image) the delay before the image starts loading and its load duration, and "
        "finally the render delay until it is painted. Good LCP is 2.5 s or less.",
        details="\n".join(details),
        bounds=(nav_ts, lcp["ts"]),
        question="Help me optimize my LCP score",
        links=(
            "https://developer.chrome.com/docs/performance/insights/lcp-breakdown",
            "https://web.dev/articles/optimize-lcp",
        ),
    )


_PHASE_ADVICE = {
    "Time to first byte": "the server is slow to answer the document (see DocumentLatency).",
    "Resource load delay": "the LCP resource is discovered or requested late; make it discoverable in the HTML "
    "and consider fetchpriority=high or a preload.",
    "Resource load duration": "the LCP resource takes long to download; make it smaller or serve it closer to "
    "the user.",
    "Element render delay": "the element is painted long after its content is available; look for "
    "render-blocking resources and long main-thread tasks before it.",
}


def _lcp_phases(nav_ts, lcp, data, document, image_url, requests, scope) -> list[tuple[str, float, float]]:
    if document is None or document.response_start is None:
        return []
    ttfb = min(max(document.response_start, nav_ts), lcp["ts"])
    phases = [("Time to first byte", nav_ts, ttfb)]
    load = None
    if image_url:
        loads = [
            r
            for r in requests.values()
            if r.url == image_url and scope.has_frame(r.frame) and r.first_ts <= lcp["ts"]
        ]
        if loads:
            request = max(loads, key=lambda r: r.first_ts)
            load = (request.start, request.end)
        elif data.get("imageLoadStart") is not None and data.get("imageLoadEnd") is not None:
            load = (nav_ts + data["imageLoadStart"] * 1000, nav_ts + data["imageLoadEnd"] * 1000)
    if load is None:
        return [*phases, ("Element render delay", ttfb, lcp["ts"])]
    load_start = min(max(load[0], ttfb), lcp["ts"])
    load_end = min(max(load[1], load_start), lcp["ts"])
    return [
        *phases,
        ("Resource load delay", ttfb, load_start),
        ("Resource load duration", load_start, load_end),
        ("Element render delay", load_end, lcp["ts"]),
    ]


def _document_latency(document: Request, navigation: dict) -> Insight:
    urls = [send["args"]["data"].get("url") for send in document.sends]
    redirects = [url for index, url in enumerate(urls[:-1]) if url != urls[index + 1]]
    # The final request starts once the redirects are done (the sends are all logged at commit).
    redirect_us = max(0.0, document.start - navigation["ts"]) if redirects else 0.0
    server = document.server_ms
    encoding = (document.response_field("contentEncoding") or "").lower()
    mime = document.response_field("mimeType", "") or ""
    size = document.finish_field("decodedBodyLength") or 0
    compressible = mime.startswith("text/") or "json" in mime or "javascript" in mime or "xml" in mime
    uncompressed = compressible and not any(e.strip() in _COMPRESSED for e in encoding.split(",")) and (
        size > COMPRESSIBLE_MIN_BYTES
    )
    lines = [f"The main document: {document.url} (status {document.response_field('statusCode', 'unknown')})."]
    if redirects:
        chain = " -> ".join(urls)
        lines.append(
            f"- FAILED: the request was redirected {len(redirects)} time(s), costing {_ms(redirect_us)}: {chain}"
        )
    else:
        lines.append("- PASSED: the request was not redirected.")
    if server is None:
        lines.append("- Server response time: unknown (no response timing in the trace).")
    elif server > SERVER_RESPONSE_LIMIT_MS:
        lines.append(
            f"- FAILED: the server took {server:.0f} ms to respond (the limit is {SERVER_RESPONSE_LIMIT_MS} ms)."
        )
    else:
        lines.append(f"- PASSED: the server responded in {server:.0f} ms.")
    if uncompressed:
        lines.append(f"- FAILED: the {size}-byte {mime} response was sent without compression (Content-Encoding).")
    elif encoding:
        lines.append(f"- PASSED: the response was compressed ({encoding}).")
    else:
        lines.append(f"- PASSED: compression not needed ({size} bytes of {mime or 'unknown type'}).")
    saved_us = redirect_us + max(0.0, (server or 0) - SERVER_RESPONSE_GOAL_MS) * 1000
    return Insight(
        name="DocumentLatency",
        title="Document request latency",
        description="The first request (the HTML document) should be answered quickly: no redirects, a fast "
        "server response and compression.",
        checks="This insight checks that the first request is answered promptly:\n"
        "1. Was the document request redirected?\n"
        f"2. Did the server respond within {SERVER_RESPONSE_LIMIT_MS} ms? (Aim for about "
        f"{SERVER_RESPONSE_GOAL_MS} ms.)\n"
        "3. Was the response compressed to keep its transfer size down?",
        details="\n".join(lines),
        bounds=(navigation["ts"], document.end),
        savings=f"FCP {_ms(saved_us)}, LCP {_ms(saved_us)}" if saved_us >= 1000 else "none",
        question="How do I decrease the initial loading time of my page?",
        links=(
            "https://developer.chrome.com/docs/performance/insights/document-latency",
            "https://web.dev/articles/optimize-ttfb",
        ),
    )


def _render_blocking(requests, scope, document, fcp, start, inside) -> Insight | None:
    limit = fcp["ts"] if fcp is not None else None
    blocking = [
        r
        for r in requests.values()
        if r is not document
        and r.data.get("renderBlocking") in _BLOCKING
        and scope.has_frame(r.frame)
        and inside(r.sends[0])
        and (limit is None or r.first_ts < limit)
    ]
    if not blocking:
        return None
    blocking.sort(key=lambda r: r.end - r.first_ts, reverse=True)
    ready = document.end if document is not None else start
    latest = max(r.end for r in blocking)
    saved_us = max(0.0, min(latest, limit if limit is not None else latest) - ready)
    lines = [f"{len(blocking)} request(s) blocked the first render (times from the start of the navigation):"]
    for request in blocking:
        lines.append(
            f"- {request.url} ({request.data.get('resourceType', 'resource')}, "
            f"{request.response_field('mimeType', 'unknown type')}): requested at {_ms(request.first_ts - start)}, "
            f"finished at {_ms(request.end - start)}, took {_ms(request.end - request.first_ts)}"
        )
    if fcp is not None:
        lines.append(f"First contentful paint: {_ms(fcp['ts'] - start)}.")
    lines.append(
        "Inline the critical CSS, defer or async scripts, and load the rest without blocking rendering."
    )
    return Insight(
        name="RenderBlocking",
        title="Render-blocking requests",
        description="Requests are blocking the page's first render, which delays FCP and LCP.",
        checks="This insight lists the requests (stylesheets, synchronous scripts) the browser had to wait for "
        "before it could paint anything.",
        details="\n".join(lines),
        bounds=(min(r.first_ts for r in blocking), latest),
        savings=f"FCP up to {_ms(saved_us)}, LCP up to {_ms(saved_us)}" if saved_us >= 1000 else "none",
        question="Show me the most impactful render-blocking requests that I should focus on",
        links=(
            "https://developer.chrome.com/docs/performance/insights/render-blocking",
            "https://web.dev/articles/critical-rendering-path/render-blocking-css",
        ),
    )


def _inp(trace, scope, names, inside, start, metrics) -> Insight | None:
    interactions: dict = defaultdict(list)
    seen = set()
    for event in trace.of("EventTiming"):
        data = event["args"]["data"]
        key = (event.get("id"), event["ts"], data.get("type"))
        ours = scope.has_frame(data.get("frame")) or scope.has_pid(event.get("pid"))
        if key in seen or not inside(event) or not ours:
            continue
        seen.add(key)
        interactions[data["interactionId"]].append(event)
    if not interactions:
        return None
    longest = {
        interaction_id: max(events, key=lambda e: e["args"]["data"].get("duration", 0))
        for interaction_id, events in interactions.items()
    }
    worst = max(longest.values(), key=lambda e: e["args"]["data"].get("duration", 0))
    data = worst["args"]["data"]
    duration = data.get("duration", 0)
    # Some events of an interaction (pointerdown) carry no target; another one names it.
    targets = [e["args"]["data"].get("nodeId") for e in [worst, *interactions[data["interactionId"]]]]
    node_id = next((target for target in targets if target), 0)
    node = names.get(node_id) or f"nodeId {node_id}"
    metrics.append(f"- INP: {duration:.0f} ms, event: (ts: {worst['ts']}), {data.get('type')} on {node}")
    # The events of the interaction inside the longest one's frame (pointerup, then click) share
    # its processing: it runs from the first handler's start to the last one's end.
    began = data.get("timeStamp", 0)
    within = [
        e["args"]["data"]
        for e in interactions[data["interactionId"]]
        if began - 1 <= e["args"]["data"].get("timeStamp", 0) <= began + duration
    ]
    processing_start = min(d.get("processingStart", began) for d in within)
    processing_end = max(d.get("processingEnd", began) for d in within)
    delay = max(0.0, processing_start - began)
    processing = max(0.0, min(processing_end, began + duration) - processing_start)
    presentation = max(0.0, duration - delay - processing)
    lines = [
        f"{len(interactions)} interaction(s) were recorded. The longest, which sets INP, was a "
        f"{data.get('type')} on {node} at {_ms(worst['ts'] - start)} taking {duration:.0f} ms "
        f"({_rating(duration, 200, 500)}):",
        f"- Input delay: {delay:.0f} ms (waiting for the main thread to be free)",
        f"- Processing duration: {processing:.0f} ms (event handlers running)",
        f"- Presentation delay: {presentation:.0f} ms (until the next frame was painted)",
    ]
    parts = (("Input delay", delay), ("Processing duration", processing), ("Presentation delay", presentation))
    biggest = max(parts, key=lambda part: part[1])
    lines.append(f"The biggest part is the {biggest[0].lower()}: {_INP_ADVICE[biggest[0]]}")
    return Insight(
        name="INPBreakdown",
        title="INP breakdown",
        description="The slowest interaction, split into input delay, processing and presentation delay.",
        checks="This insight breaks the longest interaction (Interaction to Next Paint) into the input delay, "
        "the time event handlers run, and the delay until the next frame is presented. Good INP is 200 ms "
        "or less.",
        details="\n".join(lines),
        bounds=(worst["ts"], worst["ts"] + duration * 1000),
        question="Suggest fixes to reduce my INP",
        links=(
            "https://developer.chrome.com/docs/performance/insights/inp-breakdown",
            "https://web.dev/articles/optimize-inp",
        ),
    )


_INP_ADVICE = {
    "Input delay": "other work kept the main thread busy when the user acted; break up long tasks.",
    "Processing duration": "the event handlers do too much; move work out of them or yield to the browser.",
    "Presentation delay": "rendering the update is expensive; reduce the DOM and style/layout work it causes.",
}


def _cls(trace, scope, names, inside, start, metrics) -> Insight | None:
    shifts = [
        e
        for e in trace.of("LayoutShift")
        if inside(e) and scope.has_pid(e.get("pid")) and not e["args"]["data"].get("had_recent_input")
    ]
    windows: list[list[dict]] = []
    for shift in shifts:
        current = windows[-1] if windows else None
        if current and shift["ts"] - current[-1]["ts"] <= SHIFT_GAP_US and (
            shift["ts"] - current[0]["ts"] <= SHIFT_WINDOW_US
        ):
            current.append(shift)
        else:
            windows.append([shift])
    worst = max(windows, key=lambda w: sum(_score(s) for s in w), default=[])
    value = sum(_score(s) for s in worst)
    metrics.append(f"- CLS: {value:.2f}" + (f", worst cluster starts at ts {worst[0]['ts']}" if worst else ""))
    if not shifts:
        return None
    lines = [
        f"CLS is {value:.2f} ({_rating(value, 0.1, 0.25)}). {len(shifts)} layout shift(s) without recent input "
        f"in {len(windows)} cluster(s); the worst cluster ({len(worst)} shift(s)) sets the score.",
        "Largest shifts in the worst cluster:",
    ]
    for shift in sorted(worst, key=_score, reverse=True)[:TOP_SHIFTS]:
        moved = [
            f"{names.get(n.get('node_id')) or 'nodeId ' + str(n.get('node_id'))} moved from "
            f"{_rect(n.get('old_rect'))} to {_rect(n.get('new_rect'))}"
            for n in shift["args"]["data"].get("impacted_nodes") or ()
        ]
        what = "; ".join(moved) or "no element named"
        lines.append(f"- at {_ms(shift['ts'] - start)}, score {_score(shift):.4f}: {what}")
    lines.append(
        "Content inserted above existing content, images and embeds without dimensions, and late web fonts are "
        "the usual causes: reserve space for late content."
    )
    return Insight(
        name="CLSCulprits",
        title="Layout shift culprits",
        description="Elements moved without user input; the worst cluster of shifts sets CLS.",
        checks="This insight groups layout shifts without recent input into clusters (shifts less than 1 s apart, "
        "at most 5 s per cluster) and names the elements each shift moved. Good CLS is 0.1 or less.",
        details="\n".join(lines),
        bounds=(worst[0]["ts"], worst[-1]["ts"]),
        question="How can I prevent layout shifts on this page?",
        links=(
            "https://developer.chrome.com/docs/performance/insights/cls-culprit",
            "https://web.dev/articles/optimize-cls",
        ),
    )


def _long_tasks(trace, scope, inside, start, metrics) -> Insight | None:
    tasks = [
        e
        for e in trace.of("RunTask")
        if inside(e) and scope.has_pid(e.get("pid")) and trace.thread_name(e) in ("CrRendererMain", "")
    ]
    if not tasks:
        return None
    blocking_us = sum(e["dur"] - LONG_TASK_US for e in tasks)
    longest = max(tasks, key=lambda e: e["dur"])
    metrics.append(
        f"- Long tasks: {len(tasks)} over 50 ms, longest {_ms(longest['dur'])}, total blocking time "
        f"{_ms(blocking_us)}"
    )
    lines = [
        f"{len(tasks)} main-thread task(s) took longer than 50 ms; together they blocked the main thread for "
        f"{_ms(blocking_us)} beyond 50 ms each. Longest first:"
    ]
    for task in sorted(tasks, key=lambda e: e["dur"], reverse=True)[:TOP_LONG_TASKS]:
        cause = _task_cause(trace, task)
        lines.append(f"- at {_ms(task['ts'] - start)}: {_ms(task['dur'])}" + (f", mostly {cause}" if cause else ""))
    lines.append("Break long tasks up (yield to the browser between chunks of work) or move work off the main thread.")
    return Insight(
        name="LongTasks",
        title="Long main-thread tasks",
        description="Main-thread tasks over 50 ms delay rendering and input handling.",
        checks="This insight lists the main-thread tasks that took more than 50 ms and what they were busy with. "
        "While such a task runs the page cannot respond to input or paint.",
        details="\n".join(lines),
        bounds=(longest["ts"], longest["ts"] + longest["dur"]),
        savings=f"TBT {_ms(blocking_us)}",
        question="What is keeping the main thread busy?",
        links=(
            "https://web.dev/articles/optimize-long-tasks",
            "https://web.dev/articles/long-tasks-devtools",
        ),
    )


def _task_cause(trace: TraceEvents, task: dict) -> str:
    """The longest named piece of work inside ``task``, described."""
    task_end = task["ts"] + task["dur"]
    inner = [
        e
        for name in ATTRIBUTION
        for e in trace.by_name.get(name, ())
        if e.get("pid") == task.get("pid")
        and e.get("tid") == task.get("tid")
        and task["ts"] <= e["ts"]
        and e["ts"] + e.get("dur", 0) <= task_end
    ]
    if not inner:
        return ""
    work = max(inner, key=lambda e: e.get("dur", 0))
    data = work.get("args", {}).get("data") or work.get("args", {}).get("beginData") or {}
    where = data.get("url") or work.get("args", {}).get("fileName") or ""
    if where and data.get("lineNumber") is not None:
        where += f":{data['lineNumber']}"
    label = work["name"]
    if data.get("functionName"):
        label += f" {data['functionName']}"
    if data.get("type"):
        label += f" ({data['type']})"
    return f"{label} {_ms(work.get('dur', 0))}" + (f" in {where}" if where else "")


def _score(shift: dict) -> float:
    data = shift["args"]["data"]
    score = data.get("weighted_score_delta")
    return float(score if score is not None else data.get("score", 0))


def _rating(value: float, good: float, poor: float) -> str:
    return "good" if value <= good else "needs improvement" if value <= poor else "poor"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "n/a"


def _rect(rect) -> str:
    if not rect or len(rect) != 4:
        return "?"
    x, y, width, height = rect
    return f"({x},{y} {width}x{height})"


def _ms(us: float) -> str:
    return f"{us / 1000:.0f} ms"


def _bounds(bounds: tuple[float, float]) -> str:
    return f"{{min: {bounds[0]:.0f}µs, max: {bounds[1]:.0f}µs}}"
