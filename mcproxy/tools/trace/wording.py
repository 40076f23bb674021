"""One measured insight in words, as chrome-devtools-mcp writes it.

`word` turns a record of `mcproxy.tools.trace.records` into an `Insight`: its entry in
the trace summary and the answer of ``performance_analyze_insight``. Times are shown in
milliseconds relative to the start of the insight set.
"""

from collections.abc import Callable
from typing import Any

import attrs

from mcproxy.tools.trace.insights import SERVER_RESPONSE_GOAL_MS, SERVER_RESPONSE_LIMIT_MS
from mcproxy.tools.trace.records import (
    LOAD_DELAY,
    LOAD_DURATION,
    RENDER_DELAY,
    TIME_TO_FIRST_BYTE,
    DocumentLatency,
    Interaction,
    LayoutShifts,
    LcpBreakdown,
    LongTasks,
    RenderBlocking,
    Work,
)

TOP_SHIFTS = 5


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
            f"    relevant trace bounds: {bounds_text(self.bounds)}",
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
class _About:
    """What every instance of one insight says, whatever was measured."""

    title: str
    description: str
    checks: str
    question: str
    links: tuple[str, ...]


_ABOUT = {
    "LCPBreakdown": _About(
        title="LCP breakdown",
        description="The time to the largest contentful paint, split into the phases that make it up; "
        "shorten the longest one.",
        checks="This insight splits the Largest Contentful Paint into its phases: time to first byte of the "
        "document, then (for an image) the delay before the image starts loading and its load duration, and "
        "finally the render delay until it is painted. Good LCP is 2.5 s or less.",
        question="Help me optimize my LCP score",
        links=(
            "https://developer.chrome.com/docs/performance/insights/lcp-breakdown",
            "https://web.dev/articles/optimize-lcp",
        ),
    ),
    "DocumentLatency": _About(
        title="Document request latency",
        description="The first request (the HTML document) should be answered quickly: no redirects, a fast "
        "server response and compression.",
        checks="This insight checks that the first request is answered promptly:\n"
        "1. Was the document request redirected?\n"
        f"2. Did the server respond within {SERVER_RESPONSE_LIMIT_MS} ms? (Aim for about "
        f"{SERVER_RESPONSE_GOAL_MS} ms.)\n"
        "3. Was the response compressed to keep its transfer size down?",
        question="How do I decrease the initial loading time of my page?",
        links=(
            "https://developer.chrome.com/docs/performance/insights/document-latency",
            "https://web.dev/articles/optimize-ttfb",
        ),
    ),
    "RenderBlocking": _About(
        title="Render-blocking requests",
        description="Requests are blocking the page's first render, which delays FCP and LCP.",
        checks="This insight lists the requests (stylesheets, synchronous scripts) the browser had to wait for "
        "before it could paint anything.",
        question="Show me the most impactful render-blocking requests that I should focus on",
        links=(
            "https://developer.chrome.com/docs/performance/insights/render-blocking",
            "https://web.dev/articles/critical-rendering-path/render-blocking-css",
        ),
    ),
    "INPBreakdown": _About(
        title="INP breakdown",
        description="The slowest interaction, split into input delay, processing and presentation delay.",
        checks="This insight breaks the longest interaction (Interaction to Next Paint) into the input delay, "
        "the time event handlers run, and the delay until the next frame is presented. Good INP is 200 ms "
        "or less.",
        question="Suggest fixes to reduce my INP",
        links=(
            "https://developer.chrome.com/docs/performance/insights/inp-breakdown",
            "https://web.dev/articles/optimize-inp",
        ),
    ),
    "CLSCulprits": _About(
        title="Layout shift culprits",
        description="Elements moved without user input; the worst cluster of shifts sets CLS.",
        checks="This insight groups layout shifts without recent input into clusters (shifts less than 1 s apart, "
        "at most 5 s per cluster) and names the elements each shift moved. Good CLS is 0.1 or less.",
        question="How can I prevent layout shifts on this page?",
        links=(
            "https://developer.chrome.com/docs/performance/insights/cls-culprit",
            "https://web.dev/articles/optimize-cls",
        ),
    ),
    "LongTasks": _About(
        title="Long main-thread tasks",
        description="Main-thread tasks over 50 ms delay rendering and input handling.",
        checks="This insight lists the main-thread tasks that took more than 50 ms and what they were busy with. "
        "While such a task runs the page cannot respond to input or paint.",
        question="What is keeping the main thread busy?",
        links=(
            "https://web.dev/articles/optimize-long-tasks",
            "https://web.dev/articles/long-tasks-devtools",
        ),
    ),
}


def _insight(name: str, details: list[str], bounds: tuple[float, float], savings: str = "none") -> Insight:
    about = _ABOUT[name]
    return Insight(
        name=name,
        title=about.title,
        description=about.description,
        checks=about.checks,
        details="\n".join(details),
        bounds=bounds,
        savings=savings,
        question=about.question,
        links=about.links,
    )


# -- one insight each -------------------------------------------------------------------

#: Each LCP phase: its label, and the advice when it is the longest.
PHASES = {
    TIME_TO_FIRST_BYTE: ("Time to first byte", "the server is slow to answer the document (see DocumentLatency)."),
    LOAD_DELAY: (
        "Resource load delay",
        (
            "the LCP resource is discovered or requested late; make it discoverable in the HTML "
            "and consider fetchpriority=high or a preload."
        ),
    ),
    LOAD_DURATION: (
        "Resource load duration",
        "the LCP resource takes long to download; make it smaller or serve it closer to the user.",
    ),
    RENDER_DELAY: (
        "Element render delay",
        (
            "the element is painted long after its content is available; look for "
            "render-blocking resources and long main-thread tasks before it."
        ),
    ),
}


def _lcp_breakdown(lcp: LcpBreakdown, start: float) -> Insight:
    nav_ts, value = lcp.navigation_ts, lcp.ts - lcp.navigation_ts
    kind = "an image" if lcp.image else "text"
    details = [
        (
            f"The Largest Contentful Paint (LCP) of this navigation happened at {ms(value)}, painting {kind}: "
            f"{lcp.node_name or 'unknown element'} (nodeId {lcp.node_id})."
        ),
    ]
    if lcp.image_url:
        details.append(f"The LCP resource: {lcp.image_url}")
    if lcp.phases:
        details.append("\nLCP breakdown (time spent in each phase):")
        details.extend(
            f"- {PHASES[p.kind][0]}: {ms(p.end - p.start)} ({_share(p.end - p.start, value)} of LCP), "
            f"from {ms(p.start - nav_ts)} to {ms(p.end - nav_ts)}"
            for p in lcp.phases
        )
        label, advice = PHASES[max(lcp.phases, key=lambda p: p.end - p.start).kind]
        details.append(f"\nThe longest phase is {label}: {advice}")
    else:
        details.append("The phases could not be measured: the main document request is not in the trace.")
    return _insight("LCPBreakdown", details, (nav_ts, lcp.ts))


def _document_latency(document: DocumentLatency, start: float) -> Insight:
    status = "unknown" if document.status is None else document.status
    lines = [f"The main document: {document.url} (status {status})."]
    if document.redirects:
        chain = " -> ".join(document.urls)
        lines.append(
            f"- FAILED: the request was redirected {document.redirects} time(s), costing "
            f"{ms(document.redirect_us)}: {chain}"
        )
    else:
        lines.append("- PASSED: the request was not redirected.")
    server = document.server_ms
    if server is None:
        lines.append("- Server response time: unknown (no response timing in the trace).")
    elif server > SERVER_RESPONSE_LIMIT_MS:
        lines.append(
            f"- FAILED: the server took {server:.0f} ms to respond (the limit is {SERVER_RESPONSE_LIMIT_MS} ms)."
        )
    else:
        lines.append(f"- PASSED: the server responded in {server:.0f} ms.")
    if document.uncompressed:
        lines.append(
            f"- FAILED: the {document.size}-byte {document.mime} response was sent without compression "
            "(Content-Encoding)."
        )
    elif document.encoding:
        lines.append(f"- PASSED: the response was compressed ({document.encoding}).")
    else:
        lines.append(f"- PASSED: compression not needed ({document.size} bytes of {document.mime or 'unknown type'}).")
    saved_us = document.saved_us
    savings = f"FCP {ms(saved_us)}, LCP {ms(saved_us)}" if saved_us >= 1000 else "none"
    return _insight("DocumentLatency", lines, document.bounds, savings)


def _render_blocking(blocking: RenderBlocking, start: float) -> Insight:
    lines = [f"{len(blocking.requests)} request(s) blocked the first render (times from the start of the navigation):"]
    for request in blocking.requests:
        kind = "resource" if request.resource_type is None else request.resource_type
        mime = "unknown type" if request.mime is None else request.mime
        lines.append(
            f"- {request.url} ({kind}, {mime}): requested at {ms(request.requested - start)}, "
            f"finished at {ms(request.finished - start)}, took {ms(request.finished - request.requested)}"
        )
    if blocking.fcp_ts is not None:
        lines.append(f"First contentful paint: {ms(blocking.fcp_ts - start)}.")
    lines.append("Inline the critical CSS, defer or async scripts, and load the rest without blocking rendering.")
    saved_us = blocking.saved_us
    savings = f"FCP up to {ms(saved_us)}, LCP up to {ms(saved_us)}" if saved_us >= 1000 else "none"
    return _insight("RenderBlocking", lines, blocking.bounds, savings)


_INP_ADVICE = {
    "Input delay": "other work kept the main thread busy when the user acted; break up long tasks.",
    "Processing duration": "the event handlers do too much; move work out of them or yield to the browser.",
    "Presentation delay": "rendering the update is expensive; reduce the DOM and style/layout work it causes.",
}


def _inp_breakdown(inp: Interaction, start: float) -> Insight:
    lines = [
        (
            f"{inp.count} interaction(s) were recorded. The longest, which sets INP, was a "
            f"{inp.type} on {node_text(inp)} at {ms(inp.ts - start)} taking {inp.duration:.0f} ms "
            f"({_rating(inp.duration, 200, 500)}):"
        ),
        f"- Input delay: {inp.delay:.0f} ms (waiting for the main thread to be free)",
        f"- Processing duration: {inp.processing:.0f} ms (event handlers running)",
        f"- Presentation delay: {inp.presentation:.0f} ms (until the next frame was painted)",
    ]
    parts = (
        ("Input delay", inp.delay),
        ("Processing duration", inp.processing),
        ("Presentation delay", inp.presentation),
    )
    biggest = max(parts, key=lambda part: part[1])
    lines.append(f"The biggest part is the {biggest[0].lower()}: {_INP_ADVICE[biggest[0]]}")
    return _insight("INPBreakdown", lines, (inp.ts, inp.ts + inp.duration * 1000))


def _cls_culprits(shifts: LayoutShifts, start: float) -> Insight:
    worst = shifts.worst
    lines = [
        (
            f"CLS is {shifts.score:.2f} ({_rating(shifts.score, 0.1, 0.25)}). {shifts.shifts} layout shift(s) without "
            f"recent input in {shifts.clusters} cluster(s); the worst cluster ({len(worst)} shift(s)) sets the score."
        ),
        "Largest shifts in the worst cluster:",
    ]
    for shift in sorted(worst, key=lambda s: s.score, reverse=True)[:TOP_SHIFTS]:
        moved = [f"{node_text(n)} moved from {_rect(n.old_rect)} to {_rect(n.new_rect)}" for n in shift.moved]
        what = "; ".join(moved) or "no element named"
        lines.append(f"- at {ms(shift.ts - start)}, score {shift.score:.4f}: {what}")
    lines.append(
        "Content inserted above existing content, images and embeds without dimensions, and late web fonts are "
        "the usual causes: reserve space for late content."
    )
    return _insight("CLSCulprits", lines, (worst[0].ts, worst[-1].ts))


def _long_tasks(tasks: LongTasks, start: float) -> Insight:
    longest = tasks.longest[0]
    lines = [
        (
            f"{tasks.count} main-thread task(s) took longer than 50 ms; together they blocked the main thread for "
            f"{ms(tasks.blocking_us)} beyond 50 ms each. Longest first:"
        )
    ]
    for task in tasks.longest:
        cause = f", mostly {_work(task.cause)}" if task.cause else ""
        lines.append(f"- at {ms(task.ts - start)}: {ms(task.dur)}{cause}")
    lines.append("Break long tasks up (yield to the browser between chunks of work) or move work off the main thread.")
    return _insight("LongTasks", lines, (longest.ts, longest.ts + longest.dur), f"TBT {ms(tasks.blocking_us)}")


_WORDING: dict[str, Callable[[Any, float], Insight]] = {
    "LCPBreakdown": _lcp_breakdown,
    "DocumentLatency": _document_latency,
    "RenderBlocking": _render_blocking,
    "INPBreakdown": _inp_breakdown,
    "CLSCulprits": _cls_culprits,
    "LongTasks": _long_tasks,
}


def word(name: str, record, start: float) -> Insight:
    """The insight ``name`` of a set starting at ``start``, from its record."""
    return _WORDING[name](record, start)


# -- small pieces -----------------------------------------------------------------------


def _work(work: Work) -> str:
    """A task's main piece of work: what ran, for how long, and where."""
    where = work.source
    if where and work.line is not None:
        where += f":{work.line}"
    label = work.name
    if work.function:
        label += f" {work.function}"
    if work.type:
        label += f" ({work.type})"
    return f"{label} {ms(work.dur)}" + (f" in {where}" if where else "")


def node_text(node) -> str:
    """A DOM node by its description from the page, else by its id."""
    return node.node_name or f"nodeId {node.node_id}"


def _rating(value: float, good: float, poor: float) -> str:
    return "good" if value <= good else "needs improvement" if value <= poor else "poor"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole > 0 else "n/a"


def _rect(rect) -> str:
    if not rect or len(rect) != 4:
        return "?"
    x, y, width, height = rect
    return f"({x},{y} {width}x{height})"


def ms(us: float) -> str:
    """Microseconds as whole milliseconds."""
    return f"{us / 1000:.0f} ms"


def bounds_text(bounds: tuple[float, float]) -> str:
    """Trace bounds as DevTools shows them."""
    return f"{{min: {bounds[0]:.0f}µs, max: {bounds[1]:.0f}µs}}"
