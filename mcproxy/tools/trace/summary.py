"""The trace summary ``performance_stop_trace`` answers, and the insight lookup of
``performance_analyze_insight``, from what `mcproxy.tools.trace.insights` measured."""

from mcproxy.errors import ToolError
from mcproxy.tools.trace.insights import COMPUTED, NOT_COMPUTED
from mcproxy.tools.trace.records import InsightSet, Interaction, LcpBreakdown, LongTasks, TraceAnalysis
from mcproxy.tools.trace.wording import PHASES, Insight, bounds_text, ms, node_text, word

#: Why an insight that applies to a set has no data there.
_MISSING = {
    "LCPBreakdown": "no largest contentful paint was recorded for this navigation",
    "DocumentLatency": "the main document request is not in the trace",
    "RenderBlocking": "no render-blocking requests",
    "INPBreakdown": "no interactions were recorded",
    "CLSCulprits": "no layout shifts",
    "LongTasks": "no main-thread task over 50 ms",
}


def summary(analysis: TraceAnalysis) -> str:
    """The trace summary: bounds, then each insight set with its metrics and insights."""
    ids = ", ".join(s.id for s in analysis.sets)
    notes = []
    if analysis.kept is not None:
        notes.append(
            f"Note: the trace was too large to keep every relevant event; insights cover its first "
            f"{analysis.kept} relevant events."
        )
    parts = [
        "\n".join(
            (
                f"## Summary of Performance trace findings:\nURL: {analysis.url}",
                f"Trace bounds: {bounds_text(analysis.bounds)}",
                *analysis.conditions,
            )
        ),
        *notes,
        (
            "# Available insight sets\n\nThe trace is split into insight sets, one per navigation (and one for "
            "the time before the first navigation when something happened then). Each insight applies to its "
            "own set only, so pass the insight set id together with the insight name. When nobody names a set "
            f"or navigation, the first set is meant. Insight sets: {ids}."
        ),
        *(_set_text(s) for s in analysis.sets),
        (
            f"Insights computed by this server: {', '.join(COMPUTED)}. Not computed: {', '.join(NOT_COMPUTED)}.\n"
            "Call performance_analyze_insight with an insight set id and an insight name for the details."
        ),
    ]
    return "\n\n".join(parts)


def explain(analysis: TraceAnalysis, set_id: str, name: str) -> Insight:
    """One insight; ToolError naming what exists when the set or the insight does not."""
    found = next((s for s in analysis.sets if s.id == set_id), None)
    if found is None:
        ids = ", ".join(s.id for s in analysis.sets)
        raise ToolError(f'No insight set "{set_id}" in the last trace. Its insight sets are: {ids}.')
    insights = found.insights
    if name in insights:
        return word(name, insights[name], found.bounds[0])
    available = ", ".join(insights) or "none"
    if name in found.measured:
        raise ToolError(f"{name} has no data in {set_id}: {_MISSING[name]}. Available insights there: {available}.")
    if name in NOT_COMPUTED:
        raise ToolError(
            f"{name} is a DevTools insight this server does not compute. Available insights in {set_id}: {available}."
        )
    raise ToolError(f'Unknown insight "{name}". Available insights in {set_id}: {available}.')


def metrics(insight_set: InsightSet) -> tuple[str, ...]:
    """The set's lab metrics, one line each (the LCP with its breakdown)."""
    start = insight_set.bounds[0]
    lines = []
    lcp: LcpBreakdown | None = insight_set.measured.get("LCPBreakdown")
    if lcp is not None:
        lines.append(
            f"- LCP: {ms(lcp.ts - lcp.navigation_ts)}, event: (ts: {lcp.ts}), nodeId: {lcp.node_id} "
            f"({lcp.node_name or 'unknown element'})"
        )
        if lcp.phases:
            lines.append("- LCP breakdown:")
            lines.extend(
                f"  - {PHASES[p.kind][0]}: {ms(p.end - p.start)}, bounds: {bounds_text((p.start, p.end))}"
                for p in lcp.phases
            )
    if insight_set.fcp_ts is not None:
        lines.append(f"- FCP: {ms(insight_set.fcp_ts - start)}, event: (ts: {insight_set.fcp_ts})")
    inp: Interaction | None = insight_set.measured.get("INPBreakdown")
    if inp is not None:
        lines.append(f"- INP: {inp.duration:.0f} ms, event: (ts: {inp.ts}), {inp.type} on {node_text(inp)}")
    shifts = insight_set.shifts
    worst = f", worst cluster starts at ts {shifts.worst[0].ts}" if shifts.worst else ""
    lines.append(f"- CLS: {shifts.score:.2f}{worst}")
    tasks: LongTasks | None = insight_set.measured.get("LongTasks")
    if tasks is not None:
        lines.append(
            f"- Long tasks: {tasks.count} over 50 ms, longest {ms(tasks.longest[0].dur)}, total blocking time "
            f"{ms(tasks.blocking_us)}"
        )
    return tuple(lines)


def _set_text(insight_set: InsightSet) -> str:
    """This set's part of the trace summary."""
    start = insight_set.bounds[0]
    metric_lines = "\n".join(f"  {line}" for line in metrics(insight_set)) or "  (none measured)"
    insights = insight_set.insights
    listed = "\n".join(word(name, record, start).listing() for name, record in insights.items()) or "  (none)"
    missing = "; ".join(f"{name} ({_MISSING[name]})" for name in insight_set.measured if name not in insights)
    text = (
        f"## insight set id: {insight_set.id}\n\nURL: {insight_set.url}\nBounds: {bounds_text(insight_set.bounds)}\n"
        f"Metrics (lab / observed):\n{metric_lines}\n"
        "Metrics (field / real users): n/a – this server does not fetch CrUX field data\n"
        f"Available insights:\n{listed}"
    )
    return text + (f"\nNot available in this set: {missing}" if missing else "")
