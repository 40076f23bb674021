"""Trace parsing and insights, on a recorded trace and on synthetic events (no browser).

fixtures/traces/perf_load.json is a real trace of fixtures/perf_load.html (Chromium 156),
recorded through performance_start_trace (reload, no autoStop) on the slow site of
test_tools_performance.py, with the Work button clicked once, then reduced to the events
`TraceEvents` keeps (the site's address replaced by 127.0.0.1:8000). Its page has: a
stylesheet answered 0.3 s late (render-blocking), a hero image answered 0.4 s late (the
LCP), a 120 ms script at load, a banner inserted 0.2 s later (a layout shift) and a 150 ms
click handler (INP and a long task).
"""

import json
import os
import re

import pytest

from mcproxy.errors import ToolError
from mcproxy.tools.trace import events as trace_events
from mcproxy.tools.trace.events import TraceEvents, TraceFormatError, TraceParser
from mcproxy.tools.trace.insights import analyze, node_ids
from mcproxy.tools.trace.summary import explain, metrics, summary

RECORDED = os.path.join(os.path.dirname(__file__), "fixtures", "traces", "perf_load.json")
SITE = "http://127.0.0.1:8000/"


def load(text: str, chunk: int = 4096) -> TraceEvents:
    parser, events = TraceParser(), TraceEvents()
    for start in range(0, len(text), chunk):
        events.feed(parser.feed(text[start : start + chunk]))
    parser.close()
    return events


@pytest.fixture(scope="module")
def recorded():
    with open(RECORDED, encoding="utf-8") as f:
        return analyze(load(f.read()), {24: "IMG id='hero'", 20: "BUTTON id='work'"})


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


# -- parsing ---------------------------------------------------------------------------


def test_parser_reads_events_split_anywhere():
    events = [{"name": "a", "ph": "X", "ts": 1, "args": {"s": '}],[{\\"x'}}, {"name": "b", "ph": "I", "ts": 2}]
    text = json.dumps({"traceEvents": events, "metadata": {"x": [1, 2]}}, indent=1)
    for chunk in (1, 2, 3, 7, len(text)):
        parser, seen = TraceParser(), []
        for start in range(0, len(text), chunk):
            seen.extend(parser.feed(text[start : start + chunk]))
        parser.close()
        assert seen == events, chunk


def test_parser_takes_the_bare_array_form():
    parser = TraceParser()
    assert parser.feed('[{"name":"a","ts":1},\n{"name":"b","ts"') == [{"name": "a", "ts": 1}]
    assert parser.feed(":2}]") == [{"name": "b", "ts": 2}]
    parser.close()


def test_parser_refuses_what_is_not_a_trace():
    with pytest.raises(TraceFormatError):
        TraceParser().feed("<html>")
    parser = TraceParser()
    parser.feed('{"traceEvents":[{"name":"a","ts":1},{"name":')
    with pytest.raises(TraceFormatError, match="ended before"):
        parser.close()


def test_parser_bounds_an_undecodable_event(monkeypatch):
    monkeypatch.setattr(trace_events, "MAX_PENDING_CHARS", 100)
    parser = TraceParser()
    parser.feed('{"traceEvents":[{"name": "')
    with pytest.raises(TraceFormatError, match="undecodable"):
        parser.feed("x" * 200)


def test_only_the_events_the_insights_read_are_kept():
    headers = [{"name": "Content-Encoding", "value": "br"}, {"name": "Set-Cookie", "value": "secret"}]
    events = TraceEvents()
    events.feed(
        [
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "CrRendererMain"}},
            {"name": "RunTask", "ph": "X", "ts": 10, "dur": 49_000},
            {"name": "RunTask", "ph": "X", "ts": 20, "dur": 51_000},
            {"name": "UpdateLayer", "ph": "X", "ts": 5, "dur": 1},
            {"name": "EventTiming", "ph": "b", "ts": 30, "args": {"data": {"interactionId": 0}}},
            {"name": "EventTiming", "ph": "b", "ts": 31, "args": {"data": {"interactionId": 7}}},
            {"name": "EventTiming", "ph": "e", "ts": 40, "args": {}},
            {"name": "ResourceReceiveResponse", "ph": "I", "ts": 50, "args": {"data": {"headers": headers}}},
        ]
    )
    assert events.threads == {(1, 2): "CrRendererMain"}
    assert [e["ts"] for e in events.of("RunTask")] == [20]
    assert [e["ts"] for e in events.of("EventTiming")] == [31]
    assert events.of("ResourceReceiveResponse")[0]["args"]["data"] == {"contentEncoding": "br"}
    assert (events.min_ts, events.max_ts, events.seen, events.kept) == (5, 51_020, 8, 3)


def test_kept_events_are_capped(monkeypatch):
    monkeypatch.setattr(trace_events, "MAX_KEPT_EVENTS", 2)
    events = TraceEvents()
    events.feed([{"name": "LayoutShift", "ph": "I", "ts": t, "args": {"data": {}}} for t in (1, 2, 3)])
    assert events.kept == 2 and events.truncated
    assert "too large to keep every relevant event" in summary(analyze(events))


# -- the recorded trace ------------------------------------------------------------------


def test_recorded_summary(recorded):
    summary_text = summary(recorded)
    assert [s.id for s in recorded.sets] == ["NAVIGATION_0"]
    assert recorded.url == SITE + "perf_load.html"
    lcp = number(r"- LCP: (\d+) ms, event: \(ts: \d+\), nodeId: \d+ \(IMG id='hero'\)", summary_text)
    assert 400 < lcp < 1000
    phases = [
        number(rf"    - {label}: (\d+) ms", summary_text)
        for label in ("Time to first byte", "Resource load delay", "Resource load duration", "Element render delay")
    ]
    # The phases add up to LCP (each rounded to the ms), and the image's 0.4 s dominates.
    assert abs(sum(phases) - lcp) <= 2
    assert 395 <= phases[2] < 600 and phases[0] < 100
    assert number(r"- FCP: (\d+) ms", summary_text) >= 300  # after the slow stylesheet
    assert 150 <= number(r"- INP: (\d+) ms, event: \(ts: \d+\), \w+ on BUTTON id='work'", summary_text) < 400
    assert 0.1 < number(r"- CLS: (0\.\d+)", summary_text) < 0.25
    assert number(r"- Long tasks: 2 over 50 ms, longest (\d+) ms", summary_text) >= 150
    listed = re.findall(r"  - insight name: (\w+)", summary_text)
    assert listed == ["LCPBreakdown", "DocumentLatency", "RenderBlocking", "INPBreakdown", "CLSCulprits", "LongTasks"]
    assert "Not available in this set" not in summary_text
    assert summary_text.startswith(
        f"## Summary of Performance trace findings:\nURL: {SITE}perf_load.html\nTrace bounds: "
    )


def test_recorded_lcp_breakdown(recorded):
    text = explain(recorded, "NAVIGATION_0", "LCPBreakdown").text()
    assert text.startswith("## Insight Title: LCP breakdown\n\n## Insight Summary:\n")
    assert f"The LCP resource: {SITE}perf_hero.png" in text
    assert "painting an image: IMG id='hero'" in text
    assert "The longest phase is Resource load duration" in text
    assert "## External resources:\n- https://developer.chrome.com/docs/performance/insights/lcp-breakdown" in text


def test_recorded_render_blocking_and_document(recorded):
    text = explain(recorded, "NAVIGATION_0", "RenderBlocking").details
    took = number(re.escape(f"- {SITE}perf_slow.css (Stylesheet, text/css)") + r".*took (\d+) ms", text)
    assert 295 <= took < 1000
    assert "1 request(s) blocked the first render" in text
    latency = explain(recorded, "NAVIGATION_0", "DocumentLatency")
    assert f"The main document: {SITE}perf_load.html (status 200)." in latency.details
    assert number(r"PASSED: the server responded in (\d+) ms", latency.details) < 100
    assert latency.savings == "none"


def test_recorded_interaction_shift_and_tasks(recorded):
    inp = explain(recorded, "NAVIGATION_0", "INPBreakdown").details
    assert "1 interaction(s) were recorded." in inp
    # The click handler spins for 150 ms.
    assert number(r"- Processing duration: (\d+) ms", inp) >= 145
    assert "The biggest part is the processing duration" in inp
    cls = explain(recorded, "NAVIGATION_0", "CLSCulprits").details
    assert "1 layout shift(s) without recent input in 1 cluster(s)" in cls
    assert re.search(r"IMG id='hero' moved from \(\d+,\d+ \d+x\d+\) to \(\d+,\d+ \d+x\d+\)", cls), cls
    tasks = explain(recorded, "NAVIGATION_0", "LongTasks").details
    lines = [line for line in tasks.splitlines() if line.startswith("- at ")]
    assert len(lines) == 2
    # Longest first: the click handler, then the script run at load.
    assert re.match(r"- at \d+ ms: 1[5-9]\d ms, mostly EventDispatch \(click\) 1[4-9]\d ms$", lines[0]), tasks
    at_load = r"- at \d+ ms: 1[2-9]\d ms, mostly EvaluateScript 1[2-9]\d ms in " + re.escape(SITE)
    assert re.match(at_load, lines[1]), tasks


def test_unknown_names_list_what_exists(recorded):
    with pytest.raises(ToolError, match=r'^Unknown insight "Bogus"\. Available insights in NAVIGATION_0: LCPBreakdown'):
        explain(recorded, "NAVIGATION_0", "Bogus")
    with pytest.raises(ToolError, match="ThirdParties is a DevTools insight this server does not compute"):
        explain(recorded, "NAVIGATION_0", "ThirdParties")
    no_set = r'^No insight set "NO_NAVIGATION" in the last trace\. Its insight sets are: NAVIGATION_0\.$'
    with pytest.raises(ToolError, match=no_set):
        explain(recorded, "NO_NAVIGATION", "LCPBreakdown")


def test_node_ids_of_the_recorded_trace():
    with open(RECORDED, encoding="utf-8") as f:
        ids = node_ids(load(f.read()))
    assert {20, 23, 24} <= ids and all(isinstance(i, int) and i > 0 for i in ids)


# -- synthetic traces ----------------------------------------------------------------------

MAIN = "F1"
PID = 10


def event(name: str, ts: int, phase: str = "I", pid: int = PID, at_frame: str | None = MAIN, **data) -> dict:
    """A trace event of the page's renderer main thread (``args.frame`` is ``at_frame`` unless None)."""
    args = {"data": data} if at_frame is None else {"frame": at_frame, "data": data}
    return {"name": name, "ph": phase, "ts": ts, "pid": pid, "tid": pid, "args": args}


def trace(*events) -> TraceEvents:
    """The events after a tracing start (at 1 s) for a page whose main frame runs in PID."""
    frames = [{"frame": MAIN, "processId": PID, "isOutermostMainFrame": True}]
    result = TraceEvents()
    result.feed(
        [
            {"name": "thread_name", "ph": "M", "pid": PID, "tid": PID, "args": {"name": "CrRendererMain"}},
            event("TracingStartedInBrowser", 1_000_000, pid=1, at_frame=None, frames=frames),
            *events,
        ]
    )
    return result


def navigation(ts, nav_id, url):
    flags = {"isLoadingMainFrame": True, "isOutermostMainFrame": True}
    return event("navigationStart", ts, "R", documentLoaderURL=url, navigationId=nav_id, **flags)


def request(request_id, url, sent, *, finish, server_ms, size=1000, encoding=None):
    """Send, response and finish events of a document request (times in µs)."""
    timing = {
        "requestTime": sent / 1e6,
        "sendStart": 0.1,
        "sendEnd": 0.2,
        "receiveHeadersStart": 0.2 + server_ms,
        "receiveHeadersEnd": 0.3 + server_ms,
    }
    headers = [{"name": "content-encoding", "value": encoding}] if encoding else []
    response = {"statusCode": 200, "mimeType": "text/html", "timing": timing, "headers": headers}
    finished = {"finishTime": finish / 1e6, "decodedBodyLength": size}
    return [
        event("ResourceSendRequest", sent, at_frame=None, frame=MAIN, requestId=request_id, url=url),
        event("ResourceReceiveResponse", sent + 1000, at_frame=None, requestId=request_id, **response),
        event("ResourceFinish", finish, at_frame=None, requestId=request_id, **finished),
    ]


def shift(ts, score, recent_input=False):
    moved = [{"node_id": 9, "old_rect": [0, 0, 10, 10], "new_rect": [0, 50, 10, 10]}]
    return event("LayoutShift", ts, weighted_score_delta=score, had_recent_input=recent_input, impacted_nodes=moved)


def lcp(ts, nav_id, node_type="text"):
    return event(
        "largestContentfulPaint::Candidate",
        ts,
        "R",
        candidateIndex=1,
        isOutermostMainFrame=True,
        navigationId=nav_id,
        nodeId=4,
        nodeName="H1",
        type=node_type,
    )


def test_redirected_slow_uncompressed_document():
    first = event("ResourceSendRequest", 2_001_000, at_frame=None, frame=MAIN, requestId="N1", url="http://a/old")
    events = trace(
        navigation(2_000_000, "N1", "http://a/"),
        first,
        *request("N1", "http://a/new", 2_300_000, finish=3_300_000, size=50_000, server_ms=900),
        lcp(3_500_000, "N1"),
    )
    analysis = analyze(events)
    assert analysis.sets[0].url == "http://a/new"
    details = explain(analysis, "NAVIGATION_0", "DocumentLatency").details
    assert "- FAILED: the request was redirected 1 time(s), costing 300 ms: http://a/old -> http://a/new" in details
    assert "- FAILED: the server took 900 ms to respond (the limit is 600 ms)." in details
    assert "- FAILED: the 50000-byte text/html response was sent without compression" in details
    # Redirect (the final request starts 300 ms after the navigation) plus the server time beyond
    # the 100 ms goal (800 ms).
    assert explain(analysis, "NAVIGATION_0", "DocumentLatency").savings == "FCP 1100 ms, LCP 1100 ms"
    breakdown = explain(analysis, "NAVIGATION_0", "LCPBreakdown").details
    # Text LCP: only time to first byte and render delay.
    assert "- Time to first byte: 1200 ms" in breakdown and "- Element render delay: 300 ms" in breakdown
    assert "Resource load" not in breakdown


def test_compressed_document_passes():
    document = request("N1", "http://a/", 2_000_500, finish=2_100_000, size=90_000, server_ms=20, encoding="br")
    analysis = analyze(trace(navigation(2_000_000, "N1", "http://a/"), *document))
    details = explain(analysis, "NAVIGATION_0", "DocumentLatency").details
    assert "- PASSED: the response was compressed (br)." in details
    assert "- PASSED: the server responded in 20 ms." in details


def test_cls_takes_the_worst_session_window_and_ignores_input():
    events = trace(
        navigation(2_000_000, "N1", "http://a/"),
        shift(2_100_000, 0.05),
        shift(2_500_000, 0.05),  # same window (0.4 s later): 0.10
        shift(4_000_000, 0.08),  # a new window after a 1.5 s gap
        shift(4_100_000, 0.5, recent_input=True),  # after input: never counts
        shift(9_000_000, 0.02),
    )
    analysis = analyze(events, {9: "DIV id='late'"})
    assert "- CLS: 0.10, worst cluster starts at ts 2100000" in summary(analysis)
    details = explain(analysis, "NAVIGATION_0", "CLSCulprits").details
    assert "4 layout shift(s) without recent input in 3 cluster(s); the worst cluster (2 shift(s))" in details
    assert "DIV id='late' moved from (0,0 10x10) to (0,50 10x10)" in details


def test_navigations_split_the_trace_and_scope_filters_other_pages():
    events = trace(
        navigation(2_000_000, "N1", "http://a/"),
        lcp(2_400_000, "N1"),
        lcp(2_450_000, "OTHER"),  # another navigation id: not this set's LCP
        navigation(5_000_000, "N2", "http://a/next"),
        lcp(5_700_000, "N2", node_type="image"),
        {"name": "RunTask", "ph": "X", "ts": 5_800_000, "dur": 90_000, "pid": PID, "tid": PID},
        {"name": "RunTask", "ph": "X", "ts": 5_900_000, "dur": 300_000, "pid": 99, "tid": 99},  # another tab's
        {"name": "TimerFire", "ph": "X", "ts": 5_810_000, "dur": 70_000, "pid": PID, "tid": PID, "args": {}},
    )
    analysis = analyze(events)
    assert [s.id for s in analysis.sets] == ["NAVIGATION_0", "NAVIGATION_1"]
    first, second = analysis.sets
    assert first.url == "http://a/" and second.url == "http://a/next" and analysis.url == "http://a/next"
    assert first.bounds == (2_000_000, 5_000_000)
    assert "- LCP: 400 ms, event: (ts: 2400000), nodeId: 4 (H1)" in metrics(first)
    assert "- LCP: 700 ms, event: (ts: 5700000), nodeId: 4 (H1)" in metrics(second)
    assert "LongTasks" not in first.insights
    tasks = explain(analysis, "NAVIGATION_1", "LongTasks").details
    assert tasks.splitlines()[1] == "- at 800 ms: 90 ms, mostly TimerFire 70 ms"
    # No document request in these traces: said plainly, not guessed.
    no_document = "DocumentLatency has no data in NAVIGATION_0: the main document request is not in the trace"
    with pytest.raises(ToolError, match=no_document):
        explain(analysis, "NAVIGATION_0", "DocumentLatency")
    assert "The phases could not be measured" in explain(analysis, "NAVIGATION_0", "LCPBreakdown").details


def test_invalidated_lcp_is_not_reported():
    invalidate = event("largestContentfulPaint::Invalidate", 2_500_000, "R", navigationId="N1")
    analysis = analyze(trace(navigation(2_000_000, "N1", "http://a/"), lcp(2_400_000, "N1"), invalidate))
    assert not any(line.startswith("- LCP") for line in metrics(analysis.sets[0]))
    assert "LCPBreakdown (no largest contentful paint was recorded for this navigation)" in summary(analysis)


def test_trace_without_navigation_is_one_set():
    timing = {
        "interactionId": 5,
        "type": "keydown",
        "duration": 240.0,
        "timeStamp": 100.0,
        "processingStart": 180.0,
        "processingEnd": 300.0,
        "nodeId": 7,
        "frame": MAIN,
    }
    keydown = {**event("EventTiming", 1_500_000, "b", at_frame=None, **timing), "id": "0x1"}
    analysis = analyze(trace(keydown, keydown), {7: "INPUT id='q'"})  # Chrome repeats some events
    assert [s.id for s in analysis.sets] == ["NO_NAVIGATION"]
    summary_text = summary(analysis)
    assert "- INP: 240 ms, event: (ts: 1500000), keydown on INPUT id='q'" in summary_text
    assert "- CLS: 0.00" in summary_text
    details = explain(analysis, "NO_NAVIGATION", "INPBreakdown").details
    assert details.startswith("1 interaction(s) were recorded.")
    assert "- Input delay: 80 ms" in details and "- Processing duration: 120 ms" in details
    assert "- Presentation delay: 40 ms" in details and "(needs improvement)" in details
    with pytest.raises(ToolError, match="LongTasks has no data in NO_NAVIGATION: no main-thread task over 50 ms"):
        explain(analysis, "NO_NAVIGATION", "LongTasks")


def test_quiet_time_before_the_first_navigation_gets_no_set():
    analysis = analyze(trace(navigation(3_000_000, "N1", "http://a/")))
    assert [s.id for s in analysis.sets] == ["NAVIGATION_0"]
    assert analysis.bounds[0] == 1_000_000
