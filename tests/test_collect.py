"""The collector's bookkeeping, fed with CDP-shaped events (no browser): bounds, ids, text, headers."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from mcproxy.browser.collect import Collector, make_visible
from mcproxy.browser.entries import ENTRY_OVERHEAD, ConsoleMessage, describe, substituted
from mcproxy.browser.journal import Journal
from mcproxy.browser.page import PageState
from mcproxy.config import ToolsConfig
from mcproxy.testing.tool_calls import make_context
from mcproxy.tools.collected import CHUNK, paginate
from mcproxy.tools.registry import ToolRegistry


class FakeBrowser:
    """What pages of one browser share (the collector's budget is per browser)."""


class FakePage:
    """Just what the collector touches: state, subscriptions and sends.

    ``answer``: None answers every call at once; else a list that collects the unanswered
    calls' Deferreds."""

    page_id = 7
    closed = False

    def __init__(self, fail_sends=False, *, via_proxy=True, browser=None, answer=None):
        self.state = PageState()
        self.sent = []
        self.handlers = {}
        self._fail = fail_sends
        self.via_proxy = via_proxy
        self.browser = browser or FakeBrowser()
        self.unanswered = answer

    def subscribe(self, method, callback):
        self.handlers.setdefault(method, []).append(callback)
        return lambda: None

    def send(self, method, params=None):
        self.sent.append(method)
        if self.unanswered is not None:
            self.unanswered.append(defer.Deferred())
            return self.unanswered[-1]
        return defer.fail(RuntimeError("gone")) if self._fail else defer.succeed({})

    def fire(self, method, **params):
        for callback in self.handlers.get(method, ()):
            callback(method, params)


def message(text="m"):
    return ConsoleMessage("log", (text,), None, (), 0)


def attached(collector=None):
    page = FakePage()
    (collector or Collector())(page, "attached")
    return page, page.state.records


def string(value):
    return {"type": "string", "value": value}


def test_journal_ids_count_cap_and_dropped():
    journal = Journal(max_entries=3, max_bytes=10**9)
    for text in "abcde":
        journal.add(message(text))
    assert [(m.id, m.text) for m in journal.entries()] == [(3, "c"), (4, "d"), (5, "e")]
    assert len(journal) == 3 and journal.dropped() == 2
    assert journal.get(1) is None and journal.issued(1) and not journal.issued(6)
    assert journal.get(4).text == "d"


def test_a_message_keeps_its_list_line_and_gives_back_its_text_and_arguments():
    journal = Journal(max_entries=100, max_bytes=10**9)
    joined = journal.add(ConsoleMessage("log", ("a b", "", "c"), None, (), 0))
    formatted = journal.add(ConsoleMessage("error", ("%s!", "x"), "x!", ("at f (u:1:1)",), 0))
    empty = journal.add(ConsoleMessage("info", (), None, (), 0))
    single = journal.add(ConsoleMessage("log", ("one arg",), None, (), 0))
    assert (joined.line, joined.text, joined.args) == ("msgid=1 [log] a b  c (3 args)", "a b  c", ("a b", "", "c"))
    assert (formatted.line, formatted.text, formatted.args) == ("msgid=2 [error] x! (2 args)", "x!", ("%s!", "x"))
    assert (empty.line, empty.text, empty.args) == ("msgid=3 [info]  (0 args)", "", ())
    assert (single.line, single.text, single.args) == ("msgid=4 [log] one arg (1 args)", "one arg", ("one arg",))
    # The arguments of a console call are its text: their characters are kept, and counted, once.
    long = ConsoleMessage("log", ("x" * 1000, "y" * 1000), None, (), 0)
    assert long.cost < ENTRY_OVERHEAD + 2 * 2001


def test_journal_byte_cap_counts_what_it_keeps():
    one = message("x" * 100).cost
    journal = Journal(max_entries=100, max_bytes=3 * one)
    for _ in range(10):
        journal.add(message("x" * 100))
    assert len(journal) == 3 and journal.cost == 3 * one and journal.dropped() == 7
    # A single entry over the budget is still kept (the newest is never dropped for room).
    huge = Journal(max_entries=100, max_bytes=10)
    huge.add(message("y" * 1000))
    assert len(huge) == 1


def test_journal_keeps_three_navigations_and_moves_what_belongs_to_the_new_one():
    dropped = []
    journal = Journal(max_entries=100, max_bytes=10**9, on_drop=dropped.append)
    for step in range(1, 5):
        journal.add(message(f"before {step}"))
        journal.add(message(f"document {step}"))
        journal.navigated(keep=lambda m, step=step: m.text == f"document {step}")
        journal.add(message(f"after {step}"))
    assert [m.text for m in journal.entries()] == ["document 4", "after 4"]
    # fmt: off
    assert [m.text for m in journal.entries(preserved=True)] == [
        "document 2", "after 2", "before 3",
        "document 3", "after 3", "before 4",
        "document 4", "after 4",
    ]
    # fmt: on
    assert [m.text for m in dropped] == ["before 1", "document 1", "after 1", "before 2"]
    assert len(journal) == 8 and journal.cost == sum(m.cost for m in journal.entries(preserved=True))


@pytest.mark.parametrize(
    "value, text",
    [
        (string("plain"), "plain"),
        ({"type": "number", "value": 42.0, "description": "42"}, "42"),
        ({"type": "number", "value": 1.5}, "1.5"),
        ({"type": "number", "unserializableValue": "NaN"}, "NaN"),
        ({"type": "bigint", "unserializableValue": "12n"}, "12n"),
        ({"type": "boolean", "value": False}, "false"),
        ({"type": "undefined"}, "undefined"),
        ({"type": "object", "subtype": "null", "value": None}, "null"),
        (
            {
                "type": "object",
                "className": "Object",
                "description": "Object",
                "preview": {
                    "type": "object",
                    "overflow": True,
                    "properties": [
                        {"name": "s", "type": "string", "value": 'say "hi"'},
                        {"name": "n", "type": "number", "value": "1"},
                        {"name": "o", "type": "object", "value": "Array(2)", "subtype": "array"},
                        {"name": "z", "type": "object", "value": "null", "subtype": "null"},
                    ],
                },
            },
            '{"s":"say \\"hi\\"","n":1,"o":Array(2),"z":null,…}',
        ),
        (
            {
                "type": "object",
                "subtype": "array",
                "className": "Array",
                "description": "Array(2)",
                "preview": {"subtype": "array", "properties": [{"name": "0", "type": "number", "value": "1"}]},
            },
            "[1]",
        ),
        (
            {"type": "object", "subtype": "error", "className": "Error", "description": "Error: no\n    at x"},
            "Error: no\n    at x",
        ),
        ({"type": "object", "subtype": "node", "className": "HTMLDivElement", "description": "div#main"}, "div#main"),
        ({"type": "function", "className": "Function", "description": "() => 1"}, "() => 1"),
    ],
)
def test_describe_uses_what_the_event_carries(value, text):
    assert describe(value) == text


def test_format_specifiers():
    number = {"type": "number", "value": 7.9}
    assert substituted([string("%cred%c %s=%d%%"), string("color:red"), string(""), string("x"), number]) == "red x=7%"
    assert substituted([string("%s and %s"), string("one")]) == "one and %s"
    assert substituted([string("%o"), string("a"), string("extra")]) == "a extra"
    assert substituted([string("no specifiers")]) is None
    assert substituted([number]) is None


def test_console_events_become_messages():
    page, records = attached(Collector(max_text=30))
    frame = {"functionName": "", "url": "http://h/p.js", "lineNumber": 0, "columnNumber": 4}
    page.fire(
        "Runtime.consoleAPICalled",
        type="warning",
        args=[string("hello"), {"type": "number", "value": 42}],
        stackTrace={"callFrames": [frame] * 25},
    )
    page.fire("Runtime.consoleAPICalled", type="log", args=[string("z" * 50)])
    page.fire("Runtime.consoleAPICalled", type="log", args=[string("a" * 20), string("b" * 20)])
    page.fire(
        "Runtime.exceptionThrown",
        exceptionDetails={
            "text": "Uncaught",
            "exception": {"type": "object", "subtype": "error", "description": "TypeError: bad\n    at f (p.js:1:1)"},
            "stackTrace": {"callFrames": [dict(frame, functionName="f")]},
        },
    )
    page.fire("Runtime.exceptionThrown", exceptionDetails={"text": "Uncaught (in promise)", "exception": string("why")})
    page.fire(
        "Log.entryAdded",
        entry={"source": "network", "level": "error", "text": "Failed", "url": "http://h/x", "lineNumber": 2},
    )
    page.fire("Log.entryAdded", entry={"source": "other", "level": "verbose", "text": "quiet"})
    found = [(m.id, m.type, m.text, len(m.args)) for m in records.console.entries()]
    assert found == [
        (1, "warn", "hello 42", 2),
        (2, "log", "z" * 30 + "... <truncated>", 1),
        (3, "log", "a" * 20 + " " + "b" * 9 + "... <truncated>", 2),
        (4, "error", "Uncaught TypeError: bad", 0),
        (5, "error", "Uncaught (in promise) why", 0),
        (6, "error", "Failed", 0),
        (7, "verbose", "quiet", 0),
    ]
    first = records.console.get(1)
    assert first.stack_lines()[0] == "at <anonymous> (http://h/p.js:1:5)"
    assert len(first.stack) == 20 and first.stack_lines()[-1] == "... and 5 more frames"
    assert records.console.get(4).stack == ("at f (http://h/p.js:1:5)",)
    assert records.console.get(6).stack == ("at http://h/x:3",)


def request_sent(page, request_id, url, *, loader="L1", redirect=None, headers=None, method="GET"):
    params = {
        "requestId": request_id,
        "loaderId": loader,
        "frameId": "F",
        "type": "Fetch",
        "request": {"url": url, "method": method, "headers": headers or {"Accept": "*/*"}},
    }
    if redirect is not None:
        params["redirectResponse"] = redirect
    page.fire("Network.requestWillBeSent", **params)


def test_network_events_redirects_and_redaction():
    page, records = attached()
    request_sent(page, "r1", "http://h/a", headers={"Authorization": "Bearer t", "X-Mine": "1"})
    page.fire("Network.requestWillBeSentExtraInfo", requestId="r1", headers={"Cookie": "c=1", "X-Mine": "1"})
    page.fire("Network.responseReceivedExtraInfo", requestId="r1", headers={"Location": "/b", "Set-Cookie": "s=2"})
    request_sent(page, "r1", "http://h/b", redirect={"status": 302, "headers": {"location": "/b"}})
    response = {"status": 200, "mimeType": "text/plain", "headers": {"A": "b"}}
    page.fire("Network.responseReceived", requestId="r1", response=response)
    page.fire("Network.dataReceived", requestId="r1", dataLength=10, encodedDataLength=5)
    page.fire("Network.dataReceived", requestId="r1", dataLength=15, encodedDataLength=5)
    page.fire("Network.loadingFinished", requestId="r1", encodedDataLength=10)
    request_sent(page, "r2", "http://h/c", method="POST")
    page.fire("Network.loadingFailed", requestId="r2", errorText="net::ERR_CONNECTION_REFUSED")
    request_sent(page, "r3", "http://h/d")
    page.fire("Network.responseReceived", requestId="unknown", response={"status": 500})

    first, second, failed, pending = records.network.entries()
    assert (first.id, first.status_label, first.redirected) == (1, "302", True)
    assert first.request_headers == (("Cookie", "[REDACTED]"), ("X-Mine", "1"))
    # Chrome's raw headers win over the summary in the redirect response.
    assert first.response_headers == (("Location", "/b"), ("Set-Cookie", "[REDACTED]"))
    assert (second.id, second.status, second.redirected_from, second.redirect_chain()) == (2, 200, first, [first])
    assert (second.body_size, second.finished, second.mime_type) == (25, True, "text/plain")
    assert (failed.method, failed.status_label) == ("POST", "failed - net::ERR_CONNECTION_REFUSED")
    assert failed.finished
    assert (pending.status_label, pending.finished) == ("pending", False)
    assert records.network.cost == sum(r.cost for r in records.network.entries())

    open_page, open_records = attached(Collector(redact_headers=()))
    request_sent(open_page, "r1", "http://h/a", headers={"Authorization": "Bearer t"})
    assert open_records.network.entries()[0].request_headers == (("Authorization", "Bearer t"),)


def test_raw_headers_that_come_before_their_request_or_response_are_not_lost():
    page, records = attached(Collector(redact_headers=()))
    # Chrome may send the ...ExtraInfo events first; across a redirect, the next hop's
    # raw request headers can also come before that hop is announced.
    page.fire("Network.requestWillBeSentExtraInfo", requestId="r1", headers={"Cookie": "a=1"})
    page.fire("Network.responseReceivedExtraInfo", requestId="r1", headers={"Location": "/b", "Set-Cookie": "s=2"})
    request_sent(page, "r1", "http://h/a")
    page.fire("Network.requestWillBeSentExtraInfo", requestId="r1", headers={"Cookie": "a=1; s=2"})
    request_sent(page, "r1", "http://h/b", redirect={"status": 302, "headers": {"location": "/b"}})
    page.fire("Network.responseReceivedExtraInfo", requestId="r1", headers={"Content-Type": "text/plain", "X-Raw": "1"})
    page.fire(
        "Network.responseReceived", requestId="r1", response={"status": 200, "headers": {"Content-Type": "text/plain"}}
    )
    first, second = records.network.entries()
    assert first.request_headers == (("Cookie", "a=1"),)
    assert first.response_headers == (("Location", "/b"), ("Set-Cookie", "s=2"))
    assert second.request_headers == (("Cookie", "a=1; s=2"),)
    assert second.response_headers == (("Content-Type", "text/plain"), ("X-Raw", "1"))


def test_raw_request_headers_that_come_after_the_response_are_not_lost():
    """Under load Chrome's requestWillBeSentExtraInfo can trail the response; once the hop has
    finished loading no other hop can follow, so the late headers are its own."""
    page, records = attached(Collector(redact_headers=()))
    request_sent(page, "r1", "http://h/a")
    request_sent(page, "r1", "http://h/b", redirect={"status": 302, "headers": {"location": "/b"}})
    page.fire("Network.responseReceived", requestId="r1", response={"status": 200, "headers": {"A": "b"}})
    page.fire("Network.requestWillBeSentExtraInfo", requestId="r1", headers={"Cookie": "late=1"})
    page.fire("Network.loadingFinished", requestId="r1")
    _first, second = records.network.entries()
    assert second.request_headers == (("Cookie", "late=1"),) and second.finished
    page.fire("Network.requestWillBeSentExtraInfo", requestId="r1", headers={"Cookie": "later=1"})
    assert second.request_headers == (("Cookie", "late=1"),)  # raw headers come once


def test_raw_headers_of_both_hops_of_a_redirect_before_it_go_to_their_own_hop():
    page, records = attached(Collector(redact_headers=()))
    request_sent(page, "r1", "http://h/a")
    # Both responses' raw headers come before Chrome announces the redirect (same requestId).
    page.fire("Network.responseReceivedExtraInfo", requestId="r1", headers={"Location": "/b"})
    page.fire("Network.responseReceivedExtraInfo", requestId="r1", headers={"X-Raw": "1"})
    request_sent(page, "r1", "http://h/b", redirect={"status": 302, "headers": {"location": "/b"}})
    page.fire("Network.responseReceived", requestId="r1", response={"status": 200, "headers": {"A": "b"}})
    first, second = records.network.entries()
    assert first.response_headers == (("Location", "/b"),)
    assert second.response_headers == (("X-Raw", "1"),)


def test_main_frame_navigation_starts_a_new_navigation_with_its_document():
    page, records = attached()
    page.fire("Runtime.consoleAPICalled", type="log", args=[string("old page")])
    request_sent(page, "r1", "http://h/old", loader="L1")
    request_sent(page, "r2", "http://h/new", loader="L2")
    page.fire("Page.frameNavigated", frame={"id": "F2", "parentId": "F", "loaderId": "L9", "url": "http://h/iframe"})
    assert len(records.console.entries()) == 1
    page.fire("Page.frameNavigated", frame={"id": "F", "loaderId": "L2", "url": "http://h/new"})
    assert records.console.entries() == []
    assert [r.url for r in records.network.entries()] == ["http://h/new"]
    assert [r.url for r in records.network.entries(preserved=True)] == ["http://h/old", "http://h/new"]


def test_request_cap_forgets_cdp_ids():
    page, records = attached(Collector(max_requests=2))
    for n in range(4):
        request_sent(page, f"r{n}", f"http://h/{n}")
    page.fire("Network.responseReceived", requestId="r0", response={"status": 200})
    assert [r.url for r in records.network.entries()] == ["http://h/2", "http://h/3"]
    assert sorted(records._requests) == ["r2", "r3"]


def test_messages_reported_again_after_a_reconnect_are_not_collected_twice():
    collector = Collector()
    page, records = attached(collector)
    for at in (10.0, 20.0):
        page.fire("Runtime.consoleAPICalled", type="log", args=[string(f"at {at:g}")], timestamp=at)
    page.fire("Log.entryAdded", entry={"level": "info", "text": "log at 25", "timestamp": 25.0})
    collector(page, "reattached")
    page.fire("Runtime.consoleAPICalled", type="log", args=[string("at 10")], timestamp=10.0)
    page.fire("Log.entryAdded", entry={"level": "info", "text": "log at 25", "timestamp": 25.0})
    page.fire(
        "Runtime.exceptionThrown", timestamp=30.0, exceptionDetails={"text": "Uncaught", "exception": string("x")}
    )
    page.fire("Runtime.consoleAPICalled", type="log", args=[string("at 15, in an iframe")], timestamp=15.0)
    assert [m.text for m in records.console.entries()] == [
        "at 10",
        "at 20",
        "log at 25",
        "Uncaught x",
        "at 15, in an iframe",
    ]


def test_listener_enables_domains_on_every_attach_and_subscribes_once():
    page = FakePage(fail_sends=True)  # failures are logged, never raised
    collector = Collector()
    collector(page, "attached")
    records = page.state.records
    collector(page, "reattached")
    assert page.sent == ["Runtime.enable", "Log.enable", "Network.enable"] * 2
    assert page.state.records is records
    assert len(page.handlers["Runtime.consoleAPICalled"]) == 1
    collector(page, "closed")
    assert page.state.records is None


def test_paginate_like_upstream():
    items = list(range(5))
    assert paginate(items, None, None)[:2] == (items, ["Showing 1-5 of 5 (Page 1 of 1)."])
    chosen, lines, pagination = paginate(items, 2, 1)
    assert chosen == [2, 3] and lines == ["Showing 3-4 of 5 (Page 2 of 3).", "Next page: 2", "Previous page: 0"]
    assert pagination["hasNextPage"] and pagination["hasPreviousPage"] and pagination["endIndex"] == 4
    chosen, lines, pagination = paginate(items, 2.0, 9)
    assert chosen == [0, 1] and lines[0] == "Invalid page number provided. Showing first page."
    assert pagination["invalidPage"] and pagination["currentPage"] == 0
    assert paginate(list(range(25)), None, 1)[1][0] == "Showing 21-25 of 25 (Page 2 of 2)."


DOMAINS = ["Runtime.enable", "Log.enable", "Network.enable"]


def log_call(page, text, at=None):
    page.fire("Runtime.consoleAPICalled", type="log", args=[string(text)], timestamp=at)


def test_a_tab_nobody_may_see_costs_nothing_until_a_tool_lists_or_uses_it():
    page = FakePage(via_proxy=False)
    collector = Collector()
    collector(page, "attached")
    assert page.sent == ["Page.enable"] * 2  # answered at once, and the tab is still no one's
    assert page.state.records is None and page.handlers == {}
    collector(page, "reattached")
    assert page.state.records is None and page.sent == ["Page.enable"] * 4
    make_visible(page)
    records = page.state.records
    assert page.sent[4:] == DOMAINS
    log_call(page, "now seen")
    assert [m.text for m in records.console.entries()] == ["now seen"]
    make_visible(page)  # once is enough
    assert page.sent[4:] == DOMAINS and page.state.records is records


def test_a_tab_the_proxy_opens_is_collected_before_it_loads():
    """new_page marks its tab right after the attach settles, before any navigation; the
    collector asks once Chrome answered a call sent at attach time (answers come in order)."""
    calls = []
    page = FakePage(via_proxy=False, answer=calls)
    Collector()(page, "attached")
    assert page.sent == ["Page.enable"] and page.state.records is None
    calls[0].callback({})  # a page listener's set-up still holds the attach: ask once more
    assert page.sent == ["Page.enable"] * 2 and page.state.records is None
    page.via_proxy = True  # what BrowserPool.new_page does when the attach settles
    calls[1].callback({})
    assert page.sent == ["Page.enable"] * 2 + DOMAINS and page.state.records is not None
    # A tab already known to be the proxy's starts at once (a reconnect, a late listener).
    known = FakePage()
    Collector()(known, "attached")
    assert known.sent == DOMAINS


def test_a_closed_tab_never_starts_collecting():
    calls = []
    page = FakePage(via_proxy=False, answer=calls)
    collector = Collector()
    collector(page, "attached")
    collector(page, "closed")
    page.closed = True
    make_visible(page)
    calls[0].errback(RuntimeError("closed"))
    assert page.state.records is None and page.sent == ["Page.enable"]


def test_all_pages_of_a_browser_share_one_budget_and_the_fullest_pays():
    one = message("x" * 100).cost
    collector = Collector(max_browser_bytes=20 * one)
    browser = FakeBrowser()
    quiet, quiet_records = FakePage(browser=browser), None
    collector(quiet, "attached")
    quiet_records = quiet.state.records
    for n in range(5):
        log_call(quiet, f"{n:03d}" + "x" * 97)
    loud = FakePage(browser=browser)
    collector(loud, "attached")
    loud_records = loud.state.records
    for n in range(1000):
        log_call(loud, f"{n:03d}" + "x" * 97)
    # The flood stays within what the browser may hold, and the quiet page keeps its five.
    assert len(quiet_records.console) == 5
    assert len(loud_records.console) == 15 and loud_records.console.dropped() == 985
    assert quiet_records.console.cost + loud_records.console.cost <= 20 * one
    # Another browser has its own budget.
    other = FakePage()
    collector(other, "attached")
    for n in range(30):
        log_call(other, f"{n:03d}" + "x" * 97)
    assert len(other.state.records.console) == 20
    # A closed page gives its share back.
    collector(loud, "closed")
    for n in range(10):
        log_call(quiet, f"{n:03d}" + "x" * 97)
    assert len(quiet_records.console) == 15 and quiet_records.console.dropped() == 0


def test_ready_waits_for_the_enables_or_gives_up_after_a_while():
    calls = []
    page = FakePage(answer=calls)
    Collector()(page, "attached")
    records = page.state.records
    clock = Clock()
    first, second = records.ready(clock), records.ready(clock)
    for call in calls[:2]:
        call.callback({})
    assert not first.called
    calls[2].errback(RuntimeError("Network.enable failed"))  # logged, still ready
    assert first.result is records and second.result is records
    assert records.ready(clock).result is records
    Collector()(blocked := FakePage(answer=[]), "attached")
    waiting = blocked.state.records.ready(clock)
    clock.advance(2)
    assert waiting.result is blocked.state.records


class ListedBrowser(FakeBrowser):
    """A browser with one page, as the list tools find it."""

    browser_url = "http://127.0.0.1:9222"

    def __init__(self):
        self.page = FakePage(browser=self)

    async def connected(self, timeout=None):
        return None

    def pages(self):
        return [self.page]


@pytest.mark.parametrize("stacks", [False, True])
def test_a_long_listing_lets_the_reactor_run_between_its_parts(stacks):
    browser = ListedBrowser()
    Collector()(browser.page, "attached")
    for index in range(2 * CHUNK + 1):
        trace = {"callFrames": [{"url": "http://h/p.js", "lineNumber": index}]} if index % 2 else None
        browser.page.fire(
            "Runtime.consoleAPICalled",
            type="log",
            args=[string("m"), {"type": "number", "value": index}],
            stackTrace=trace,
        )

    async def get_browser(user_id):
        return browser

    clock, answered = Clock(), []
    tools = ToolRegistry(get_browser, ToolsConfig(tab_scope="browser"), clock)
    args = {"pageId": 7, "includeStackTraces": stacks}
    tools.call_tool("list_console_messages", args, make_context()).addBoth(answered.append)
    assert not answered and clock.getDelayedCalls()  # the first part is done; the reactor is free
    clock.advance(0)
    [result] = answered
    lines = result["content"][0]["text"].splitlines()
    assert lines[:2] == ["## Console messages", f"Showing 1-{2 * CHUNK + 1} of {2 * CHUNK + 1} (Page 1 of 1)."]
    expected = []
    for index in range(2 * CHUNK + 1):
        expected.append(f"msgid={index + 1} [log] m {index} (2 args)")
        if stacks and index % 2:
            expected.append(f"  at <anonymous> (http://h/p.js:{index + 1}:1)")
    if stacks:
        expected.append("Note: stack trace line and column numbers use 1-based indexing")
    assert lines[2:] == expected
    items = result["structuredContent"]["consoleMessages"]
    assert [(item["id"], item["text"], "stackTrace" in item) for item in items] == [
        (index + 1, f"m {index}", stacks and index % 2 == 1) for index in range(2 * CHUNK + 1)
    ]
