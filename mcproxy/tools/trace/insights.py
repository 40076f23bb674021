"""Performance insights measured from the kept trace events: records of what was found.

A trace is split into insight sets at main-frame navigations (``NAVIGATION_<n>``; the part
before the first one is ``NO_NAVIGATION`` when there is no navigation or when something
happened in it). Each set has lab metrics (LCP with its breakdown, FCP, INP, CLS, long
tasks) and the insights this module measures: LCPBreakdown, CLSCulprits, INPBreakdown,
DocumentLatency, RenderBlocking and LongTasks, as the records of
`mcproxy.tools.trace.records`; `mcproxy.tools.trace.wording` words them the way DevTools
does.
"""

from collections import defaultdict
from typing import Any

from mcproxy.tools.trace import page
from mcproxy.tools.trace.events import ATTRIBUTION, LONG_TASK_US, TraceEvents
from mcproxy.tools.trace.page import Request
from mcproxy.tools.trace.records import (
    LOAD_DELAY,
    LOAD_DURATION,
    RENDER_DELAY,
    TIME_TO_FIRST_BYTE,
    BlockingRequest,
    DocumentLatency,
    InsightSet,
    Interaction,
    LayoutShifts,
    LcpBreakdown,
    LcpPhase,
    LongTasks,
    MovedNode,
    RenderBlocking,
    Shift,
    Task,
    TraceAnalysis,
    Work,
)

SERVER_RESPONSE_LIMIT_MS = 600
SERVER_RESPONSE_GOAL_MS = 100
COMPRESSIBLE_MIN_BYTES = 1400
SHIFT_GAP_US = 1_000_000
SHIFT_WINDOW_US = 5_000_000
TOP_LONG_TASKS = 10
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
    """Split the trace into insight sets and measure their metrics and insights.

    ``node_names`` describes DOM nodes by id (from the live page) where the trace has no name;
    ``conditions`` are summary lines on how the page was throttled while recording.
    """
    names = node_names or {}
    scope = page.page_scope(trace)
    navigations = page.navigations(trace, scope)
    started = trace.of("TracingStartedInBrowser")
    low = started[0]["ts"] if started else trace.min_ts or 0
    high = trace.max_ts or low
    requests = page.network_requests(trace)
    sets = []
    if not navigations or navigations[0]["ts"] > low:
        first_end = navigations[0]["ts"] if navigations else high
        url = page.page_url(scope, trace)
        pre = _insight_set(trace, scope, requests, names, "NO_NAVIGATION", None, None, (low, first_end), url)
        if not navigations or pre.insights:
            sets.append(pre)
    for index, navigation in enumerate(navigations):
        end = navigations[index + 1]["ts"] if index + 1 < len(navigations) else high
        # Chrome may log only the origin of a URL that redirects; the document request ends at the real one.
        document = page.document_request(requests, navigation, scope)
        url = document.url if document else navigation["args"]["data"]["documentLoaderURL"]
        set_id, bounds = f"NAVIGATION_{index}", (navigation["ts"], end)
        sets.append(_insight_set(trace, scope, requests, names, set_id, navigation, document, bounds, url))
    url = sets[-1].url if navigations else page.page_url(scope, trace)
    kept = trace.kept if trace.truncated else None
    return TraceAnalysis(url=url, bounds=(low, high), sets=tuple(sets), kept=kept, conditions=conditions)


def _insight_set(trace, scope, requests, names, set_id, navigation, document, bounds, url) -> InsightSet:
    start, end = bounds
    # The last set includes the trace's last moment; the others end where the next begins.
    final = end == (trace.max_ts or end)

    def inside(event: dict) -> bool:
        return start <= event["ts"] < end or (final and event["ts"] == end)

    measured: dict[str, Any] = {}
    fcp = None
    if navigation is not None:
        fcp = _fcp(trace, navigation, scope)
        measured["LCPBreakdown"] = _lcp(trace, navigation, requests, scope, document, names)
        measured["DocumentLatency"] = _document_latency(document, navigation) if document else None
        measured["RenderBlocking"] = _render_blocking(requests, scope, document, fcp, start, inside)
    shifts = _layout_shifts(trace, scope, names, inside)
    measured["INPBreakdown"] = _inp(trace, scope, names, inside)
    measured["CLSCulprits"] = shifts if shifts.shifts else None
    measured["LongTasks"] = _long_tasks(trace, scope, inside)
    fcp_ts = fcp["ts"] if fcp is not None else None
    return InsightSet(set_id, url, bounds, fcp_ts, shifts, measured)


def _fcp(trace, navigation, scope) -> dict | None:
    for event in trace.of("firstContentfulPaint"):
        if event["args"].get("frame") != scope.main_frame and scope.main_frame is not None:
            continue
        if event["args"].get("data", {}).get("navigationId") == navigation["args"]["data"].get("navigationId"):
            return event
    return None


def _lcp(trace, navigation, requests, scope, document, names) -> LcpBreakdown | None:
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
    image = next(
        (
            e["args"]["data"]
            for e in trace.of("LargestImagePaint::Candidate")
            if e["ts"] == lcp["ts"] and e["args"].get("frame") == lcp["args"].get("frame")
        ),
        None,
    )
    image_url = (image or {}).get("imageUrl")
    return LcpBreakdown(
        navigation_ts=nav_ts,
        ts=lcp["ts"],
        node_id=node_id,
        node_name=data.get("nodeName") or names.get(node_id),
        image=data.get("type") == "image",
        image_url=image_url,
        phases=tuple(_lcp_phases(nav_ts, lcp, data, document, image_url, requests, scope)),
    )


def _lcp_phases(nav_ts, lcp, data, document, image_url, requests, scope) -> list[LcpPhase]:
    if document is None or document.response_start is None:
        return []
    ttfb = min(max(document.response_start, nav_ts), lcp["ts"])
    phases = [LcpPhase(TIME_TO_FIRST_BYTE, nav_ts, ttfb)]
    load = None
    if image_url:
        loads = [
            r for r in requests.values() if r.url == image_url and scope.has_frame(r.frame) and r.first_ts <= lcp["ts"]
        ]
        if loads:
            request = max(loads, key=lambda r: r.first_ts)
            load = (request.start, request.end)
        elif data.get("imageLoadStart") is not None and data.get("imageLoadEnd") is not None:
            load = (nav_ts + data["imageLoadStart"] * 1000, nav_ts + data["imageLoadEnd"] * 1000)
    if load is None:
        return [*phases, LcpPhase(RENDER_DELAY, ttfb, lcp["ts"])]
    load_start = min(max(load[0], ttfb), lcp["ts"])
    load_end = min(max(load[1], load_start), lcp["ts"])
    return [
        *phases,
        LcpPhase(LOAD_DELAY, ttfb, load_start),
        LcpPhase(LOAD_DURATION, load_start, load_end),
        LcpPhase(RENDER_DELAY, load_end, lcp["ts"]),
    ]


def _document_latency(document: Request, navigation: dict) -> DocumentLatency:
    urls = tuple(send["args"]["data"].get("url") for send in document.sends)
    redirects = [url for index, url in enumerate(urls[:-1]) if url != urls[index + 1]]
    # The final request starts once the redirects are done (the sends are all logged at commit).
    redirect_us = max(0.0, document.start - navigation["ts"]) if redirects else 0.0
    server = document.server_ms
    encoding = (document.response_field("contentEncoding") or "").lower()
    mime = document.response_field("mimeType", "") or ""
    size = document.finish_field("decodedBodyLength") or 0
    compressible = mime.startswith("text/") or "json" in mime or "javascript" in mime or "xml" in mime
    uncompressed = (
        compressible
        and not any(e.strip() in _COMPRESSED for e in encoding.split(","))
        and (size > COMPRESSIBLE_MIN_BYTES)
    )
    return DocumentLatency(
        url=document.url,
        status=document.response_field("statusCode"),
        urls=urls,
        redirects=len(redirects),
        redirect_us=redirect_us,
        server_ms=server,
        encoding=encoding,
        mime=mime,
        size=size,
        uncompressed=uncompressed,
        saved_us=redirect_us + max(0.0, (server or 0) - SERVER_RESPONSE_GOAL_MS) * 1000,
        bounds=(navigation["ts"], document.end),
    )


def _render_blocking(requests, scope, document, fcp, start, inside) -> RenderBlocking | None:
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
    return RenderBlocking(
        requests=tuple(
            BlockingRequest(
                url=r.url,
                resource_type=r.data.get("resourceType"),
                mime=r.response_field("mimeType"),
                requested=r.first_ts,
                finished=r.end,
            )
            for r in blocking
        ),
        fcp_ts=limit,
        saved_us=max(0.0, min(latest, limit if limit is not None else latest) - ready),
        bounds=(min(r.first_ts for r in blocking), latest),
    )


def _inp(trace, scope, names, inside) -> Interaction | None:
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
    return Interaction(
        count=len(interactions),
        type=data.get("type"),
        node_id=node_id,
        node_name=names.get(node_id),
        ts=worst["ts"],
        duration=duration,
        delay=delay,
        processing=processing,
        presentation=max(0.0, duration - delay - processing),
    )


def _layout_shifts(trace, scope, names, inside) -> LayoutShifts:
    shifts = [
        e
        for e in trace.of("LayoutShift")
        if inside(e) and scope.has_pid(e.get("pid")) and not e["args"]["data"].get("had_recent_input")
    ]
    windows: list[list[dict]] = []
    for shift in shifts:
        current = windows[-1] if windows else None
        if (
            current
            and shift["ts"] - current[-1]["ts"] <= SHIFT_GAP_US
            and (shift["ts"] - current[0]["ts"] <= SHIFT_WINDOW_US)
        ):
            current.append(shift)
        else:
            windows.append([shift])
    worst = max(windows, key=lambda w: sum(_score(s) for s in w), default=[])
    return LayoutShifts(
        score=sum(_score(s) for s in worst),
        shifts=len(shifts),
        clusters=len(windows),
        worst=tuple(
            Shift(
                ts=shift["ts"],
                score=_score(shift),
                moved=tuple(
                    MovedNode(n.get("node_id"), names.get(n.get("node_id")), n.get("old_rect"), n.get("new_rect"))
                    for n in shift["args"]["data"].get("impacted_nodes") or ()
                ),
            )
            for shift in worst
        ),
    )


def _long_tasks(trace, scope, inside) -> LongTasks | None:
    tasks = [
        e
        for e in trace.of("RunTask")
        if inside(e) and scope.has_pid(e.get("pid")) and trace.thread_name(e) in ("CrRendererMain", "")
    ]
    if not tasks:
        return None
    return LongTasks(
        count=len(tasks),
        blocking_us=sum(e["dur"] - LONG_TASK_US for e in tasks),
        longest=tuple(
            Task(task["ts"], task["dur"], _task_cause(trace, task))
            for task in sorted(tasks, key=lambda e: e["dur"], reverse=True)[:TOP_LONG_TASKS]
        ),
    )


def _task_cause(trace: TraceEvents, task: dict) -> Work | None:
    """The longest named piece of work inside ``task``."""
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
        return None
    work = max(inner, key=lambda e: e.get("dur", 0))
    data = work.get("args", {}).get("data") or work.get("args", {}).get("beginData") or {}
    return Work(
        name=work["name"],
        function=data.get("functionName"),
        type=data.get("type"),
        source=data.get("url") or work.get("args", {}).get("fileName") or "",
        line=data.get("lineNumber"),
        dur=work.get("dur", 0),
    )


def _score(shift: dict) -> float:
    data = shift["args"]["data"]
    score = data.get("weighted_score_delta")
    return float(score if score is not None else data.get("score", 0))
