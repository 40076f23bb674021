"""Deterministic tests of the tool machinery: argument validation, `first`, settling (with a
Clock and a scripted page), page listing and the close_page guard (with a fake browser)."""

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock

from mcproxy.auth.principal import Principal
from mcproxy.browser.page import PageState
from mcproxy.calls import CallContext, SessionView
from mcproxy.config import ToolsConfig
from mcproxy.errors import CDPError, ToolError
from mcproxy.testing.deferreds import failure_result_of, success_result_of
from mcproxy.tools import schema
from mcproxy.tools.settle import DOM_POLL, DOM_QUIET, NAVIGATION_WINDOW, SETTLE_CAP, act_and_settle, first

# -- schema.validate -------------------------------------------------------------------

SCHEMA = schema.obj(
    {
        "pageId": schema.page_id(),
        "kind": schema.string("k", enum=("a", "b")),
        "count": {"type": "integer", "minimum": 0, "maximum": 5},
        "texts": schema.array("t", {"type": "string"}, min_items=1),
        "flag": schema.boolean("f"),
    },
    ("pageId",),
)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({}, 'Missing required argument "pageId".'),
        ({"pageId": None}, 'Missing required argument "pageId".'),
        ({"pageId": True}, 'Invalid argument "pageId": expected a number, got a boolean.'),
        ({"pageId": 1, "kind": "c"}, 'Invalid argument "kind": must be one of "a", "b", got \'c\'.'),
        ({"pageId": 1, "count": 1.5}, 'Invalid argument "count": expected an integer, got a number.'),
        ({"pageId": 1, "count": -1}, 'Invalid argument "count": must be at least 0, got -1.'),
        ({"pageId": 1, "texts": []}, 'Invalid argument "texts": must have at least 1 item(s).'),
        ({"pageId": 1, "texts": ["x", None]}, 'Invalid argument "texts"[1]: expected a string, got null.'),
        ({"pageId": 1, "flag": "yes"}, 'Invalid argument "flag": expected a boolean, got a string.'),
        (
            {"pageId": 1, "other": 1},
            'Unknown argument "other" (this tool takes: "pageId", "kind", "count", "texts", "flag").',
        ),
    ],
)
def test_validation_names_the_parameter(arguments, message):
    with pytest.raises(schema.InvalidArguments) as raised:
        schema.validate(SCHEMA, arguments)
    assert raised.value.message == message


def test_validation_passes_good_arguments_and_drops_nulls():
    arguments = {"pageId": 2.0, "kind": "a", "count": 5, "texts": ["x"], "flag": False, "other": None}
    assert schema.validate({**SCHEMA, "properties": {**SCHEMA["properties"], "other": {}}}, arguments) == {
        "pageId": 2.0,
        "kind": "a",
        "count": 5,
        "texts": ["x"],
        "flag": False,
    }
    with pytest.raises(schema.InvalidArguments, match="expected an object"):
        schema.validate(SCHEMA, ["pageId"])


# -- first -----------------------------------------------------------------------------


def test_first_fires_with_the_first_result_and_cancels_the_rest():
    a, b = Deferred(), Deferred()
    both = first([a, b])
    b.callback("b")
    assert success_result_of(both) == (1, "b")
    assert a.called, "the loser was cancelled (its CancelledError is consumed by first)"


def test_first_reports_the_first_failure_instead_of_waiting():
    a, b = Deferred(), Deferred()
    both = first([a, b])
    a.errback(ToolError("boom"))
    assert "boom" in failure_result_of(both, ToolError).value.message
    assert b.called


def test_cancelling_first_cancels_every_input():
    a, b = Deferred(), Deferred()
    first([a, b]).addErrback(lambda f: f.trap(CancelledError)).cancel()
    assert a.called and b.called


# -- act_and_settle ----------------------------------------------------------------------


class ScriptedPage:
    """A page whose CDP answers are scripted: ``counts`` lists the mutation counts the
    observer reports, one a reading (the last one repeats)."""

    page_id = 1
    target_id = "MAIN"

    def __init__(self, counts=(0,), quiet_error=None, silent=False):
        self.state = PageState()
        self.counts = list(counts)
        self.quiet_error = quiet_error
        self.silent = silent
        self.calls = []
        self.subscribers = {}
        self.observers = 0
        self.readings = 0

    def subscribe(self, method, callback):
        self.subscribers.setdefault(method, []).append(callback)
        return lambda: self.subscribers[method].remove(callback)

    def emit(self, method, params):
        for callback in list(self.subscribers.get(method, [])):
            callback(method, params)

    def send(self, method, params=None, *, timeout=None):
        self.calls.append(method)
        if method == "Runtime.evaluate":
            self.observers += 1
            return succeed({"result": {"objectId": f"watch{self.observers}"}})
        if method == "Runtime.callFunctionOn" and "this.count" in params["functionDeclaration"]:
            self.readings += 1
            if self.quiet_error is not None:
                error, self.quiet_error = self.quiet_error, None
                return fail(error)
            if self.silent:
                return Deferred()
            count = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
            return succeed({"result": {"value": count}})
        return succeed({})


def settle(page, clock, action=lambda: succeed(None), **kw):
    async def run():
        await action()

    return Deferred.fromCoroutine(act_and_settle(page, clock, run, navigation_timeout=5, **kw))


def settled_at(clock, done, limit=10.0):
    """Advance ``clock`` in small steps until ``done`` fires; the time it fired at."""
    while not done.called and clock.seconds() < limit:
        clock.advance(0.005)
    assert success_result_of(done) is None
    return clock.seconds()


def test_returns_once_the_dom_has_been_quiet_for_the_window():
    clock, page = Clock(), ScriptedPage(counts=[0])
    at = settled_at(clock, settle(page, clock))
    assert DOM_QUIET <= at < DOM_QUIET + DOM_POLL
    assert page.observers == 1
    assert not any(page.subscribers.values()), "every event subscription is removed"


def test_a_mutation_restarts_the_quiet_window_on_our_clock():
    # Read at once after the action (the action's own mutations count from there), mutated
    # before the next reading (at DOM_POLL), then still: quiet from that reading on.
    clock, page = Clock(), ScriptedPage(counts=[0, 1, 1])
    at = settled_at(clock, settle(page, clock))
    assert DOM_POLL + DOM_QUIET <= at < 2 * DOM_POLL + DOM_QUIET


def test_the_actions_own_mutations_do_not_cost_a_poll():
    """What the action itself changed is counted by the reading made at once: the quiet
    window starts right after the action, not one poll later."""
    clock, page = Clock(), ScriptedPage(counts=[3, 3])
    at = settled_at(clock, settle(page, clock))
    assert DOM_QUIET <= at < DOM_QUIET + DOM_POLL


def test_a_dom_that_never_rests_is_waited_for_at_most_the_cap():
    clock, page = Clock(), ScriptedPage(counts=list(range(1, 10_000)))
    at = settled_at(clock, settle(page, clock))
    assert SETTLE_CAP <= at < SETTLE_CAP + DOM_POLL


def test_a_page_that_stops_answering_is_given_up_on_at_the_cap():
    clock, page = Clock(), ScriptedPage(silent=True)
    at = settled_at(clock, settle(page, clock))
    assert SETTLE_CAP <= at < SETTLE_CAP + DOM_POLL
    assert page.readings == 1


def test_a_page_that_breaks_the_observer_still_waits_the_quiet_window():
    clock, page = Clock(), ScriptedPage()
    page.send = lambda method, params=None, *, timeout=None: succeed(
        {"result": {"type": "object"}, "exceptionDetails": {"text": "MutationObserver is not a constructor"}}
    )
    at = settled_at(clock, settle(page, clock))
    assert DOM_QUIET <= at < DOM_QUIET + DOM_POLL


def test_a_navigation_started_in_the_window_is_awaited_then_the_new_document_settles():
    clock, page = Clock(), ScriptedPage()
    done = settle(page, clock)
    clock.advance(NAVIGATION_WINDOW / 2)
    page.emit("Page.frameStartedLoading", {"frameId": "MAIN"})
    clock.advance(1)
    assert not done.called
    page.emit("Page.frameStoppedLoading", {"frameId": "SUBFRAME"})
    assert not done.called
    page.emit("Page.frameStoppedLoading", {"frameId": "MAIN"})
    assert page.observers == 2, "a fresh observer watches the new document"
    loaded = clock.seconds()
    assert DOM_QUIET <= settled_at(clock, done) - loaded < DOM_QUIET + DOM_POLL


def test_a_late_navigation_shows_up_as_a_lost_document():
    clock, page = Clock(), ScriptedPage(quiet_error=CDPError("Cannot find context"))
    done = settle(page, clock)
    clock.advance(DOM_QUIET)
    assert not done.called
    page.emit("Page.loadEventFired", {})
    settled_at(clock, done)
    assert page.observers == 2


def test_a_navigation_that_never_loads_is_bounded():
    clock, page = Clock(), ScriptedPage()
    done = settle(page, clock)
    page.emit("Page.frameStartedLoading", {"frameId": "MAIN"})
    clock.advance(NAVIGATION_WINDOW)
    clock.advance(5)
    assert success_result_of(done) is None


def test_a_dialog_ends_the_wait_and_cancels_the_action():
    clock, page = Clock(), ScriptedPage()
    blocked = Deferred()
    done = settle(page, clock, action=lambda: blocked)
    page.emit("Page.javascriptDialogOpening", {"type": "alert", "message": "hi"})
    assert success_result_of(done) == {"type": "alert", "message": "hi"}
    assert blocked.called, "the blocked CDP call was cancelled"
    blocked.addErrback(lambda f: f.trap(CancelledError))


def test_a_failed_action_fails_at_once():
    clock, page = Clock(), ScriptedPage()
    done = settle(page, clock, action=lambda: fail(ToolError("not fillable")))
    assert "not fillable" in failure_result_of(done, ToolError).value.message


def test_cancelling_stops_every_wait():
    clock, page = Clock(), ScriptedPage()
    done = settle(page, clock)
    done.cancel()
    failure_result_of(done, CancelledError)
    assert not clock.getDelayedCalls()


# -- pages -----------------------------------------------------------------------------


class FakePage:
    def __init__(self, page_id, opener=None, via_proxy=True, title="", url="about:blank"):
        self.page_id, self.opener, self.via_proxy = page_id, opener, via_proxy
        self.target_id, self.title, self.url, self.closed = f"T{page_id}", title, url, False
        self.state = PageState()
        self.crashed = False

    def run_exclusive(self, fn, *args):
        return Deferred.fromCoroutine(fn(*args))


class FakeBrowser:
    browser_url = "http://127.0.0.1:9222"

    def __init__(self, pages):
        self._pages = pages
        self.closed = []

    def pages(self):
        return list(self._pages)

    def context_name(self, page):
        return None

    async def connected(self, timeout=None):
        assert timeout == ToolsConfig().navigation_timeout

    def send(self, method, params=None, *, timeout=None):
        assert method == "Target.getTargets"
        return succeed({"targetInfos": [{"targetId": "T2", "title": "Fresh title", "url": "http://x/2"}]})

    def close_page(self, page_id):
        self.closed.append(page_id)
        self._pages = [p for p in self._pages if p.page_id != page_id]
        return succeed(None)


def registry_for(browser, clock=None, records=None, **config):
    from mcproxy.tools.registry import ToolRegistry

    async def get_browser(user_id):
        return browser

    observers = {} if records is None else {"on_call_finished": [records.append]}
    return ToolRegistry(get_browser, ToolsConfig(**config), clock or Clock(), **observers)


def context(session_id="s1", selected=None, permissions=("tools:*",)):
    return CallContext(Principal("u", frozenset(permissions), "tok1"), SessionView(session_id, selected), "2025-11-25")


def test_pages_listing_text_and_structured_content():
    browser = FakeBrowser([FakePage(1, "s1"), FakePage(2, "s1", title="stale"), FakePage(3, "other")])
    result = success_result_of(registry_for(browser).call_tool("list_pages", {}, context(selected=2)))
    assert result["content"][0]["text"] == "## Pages\n1: about:blank\n2: Fresh title (http://x/2) [selected]"
    assert result["structuredContent"] == {
        "pages": [
            {"id": 1, "url": "about:blank", "title": "", "selected": False},
            {"id": 2, "url": "http://x/2", "title": "Fresh title", "selected": True},
        ]
    }
    empty = success_result_of(registry_for(browser).call_tool("list_pages", {}, context("nobody")))
    assert empty["content"][0]["text"] == "## Pages\nNo pages open. Call new_page to open one."


def test_close_page_refuses_the_last_page_and_clears_the_selection():
    browser = FakeBrowser([FakePage(1, "s1")])
    tools = registry_for(browser)
    result = success_result_of(tools.call_tool("close_page", {"pageId": 1}, context()))
    assert result["isError"] and result["content"][0]["text"].startswith("The last open page cannot be closed.")
    browser._pages.append(FakePage(2, "s1"))
    call_context = context(selected=2)
    result = success_result_of(tools.call_tool("close_page", {"pageId": 2}, call_context))
    assert not result["isError"] and browser.closed == [2]
    assert call_context.session.selected_page_id is None
    assert result["content"][0]["text"] == "## Pages\n1: about:blank"


def test_unexpected_errors_become_an_internal_error_result():
    class Broken(FakeBrowser):
        def pages(self):
            raise RuntimeError("secret detail")

    result = success_result_of(registry_for(Broken([])).call_tool("list_pages", {}, context()))
    assert result["isError"]
    assert result["content"][0]["text"] == (
        'Internal error while running "list_pages". The failure was logged; try again.'
    )


def test_an_unreachable_browser_is_reported_as_a_tool_error():
    from mcproxy.errors import BrowserUnavailable

    class Away(FakeBrowser):
        async def connected(self, timeout=None):
            raise BrowserUnavailable("the browser of u at http://127.0.0.1:9222 is not reachable right now")

    result = success_result_of(registry_for(Away([])).call_tool("list_pages", {}, context()))
    assert result["isError"]
    assert result["content"][0]["text"] == "the browser of u at http://127.0.0.1:9222 is not reachable right now"


def test_a_missing_browser_is_reported_as_a_tool_error():
    from mcproxy.tools.registry import ToolRegistry

    async def no_browser(user_id):
        raise ToolError(f"no browser registered for user {user_id}; register one with POST /api/register")

    result = success_result_of(
        ToolRegistry(no_browser, ToolsConfig(), Clock()).call_tool("list_pages", None, context())
    )
    assert result["isError"]
    assert result["content"][0]["text"] == "no browser registered for user u; register one with POST /api/register"


# fmt: off
#: A key combination and the (type, key, modifiers) of the events it sends, the presses before the releases.
KEY_COMBINATIONS = [
    ("Enter", [("keyDown", "Enter", 0), ("keyUp", "Enter", 0)]),
    ("+", [("keyDown", "+", 0), ("keyUp", "+", 0)]),
    ("Control++", [("rawKeyDown", "Control", 2), ("rawKeyDown", "+", 2), ("keyUp", "+", 2), ("keyUp", "Control", 0)]),
    (
        "Control+Shift+r",
        [
            ("rawKeyDown", "Control", 2), ("rawKeyDown", "Shift", 10), ("rawKeyDown", "R", 10),
            ("keyUp", "R", 10), ("keyUp", "Shift", 2), ("keyUp", "Control", 0),
        ],
    ),
]
# fmt: on


@pytest.mark.parametrize("combo, expected", KEY_COMBINATIONS)
def test_key_combinations(combo, expected):
    from mcproxy.tools.keyboard import key_events

    events = [(p["type"], p["key"], p["modifiers"]) for method, p in key_events(combo)]
    assert events == expected


@pytest.mark.parametrize("combo", ["Hyper+a", "Control+", "NoSuchKey"])
def test_bad_key_combinations_are_explained(combo):
    from mcproxy.tools.keyboard import key_events

    with pytest.raises(ToolError, match=r"modifier|No key|Unknown key"):
        key_events(combo)


# -- permissions, categories and the record of each call ---------------------------------


def listed(tools, permissions):
    return {tool.name for tool in tools.list_tools(Principal("u", frozenset(permissions)))}


def test_grants_patterns_and_deny_rules():
    tools = registry_for(FakeBrowser([]))
    everything = listed(tools, ["tools:*"])
    assert {"list_pages", "click", "evaluate_script", "take_screenshot"} <= everything
    patterned = listed(tools, ["tools:take_*"])
    assert {"take_snapshot", "take_screenshot"} <= patterned
    assert patterned == {name for name in everything if name.startswith("take_")}
    assert listed(tools, ["tools:category:navigation"]) == {
        t.name for t in tools.list_tools(Principal("u", frozenset({"admin"}))) if t.meta["category"] == "navigation"
    }
    assert "evaluate_script" not in listed(tools, ["tools:*", "!tools:evaluate_script"])
    assert not listed(tools, ["tools:*", "!tools:category:*"])
    assert listed(tools, ["admin", "!tools:click"]) == everything - {"click"}
    refused = success_result_of(
        tools.call_tool("click", {"pageId": 1, "uid": "1_1"}, context(permissions=["tools:*", "!tools:click"]))
    )
    assert refused["isError"] and 'not allowed to call "click"' in refused["content"][0]["text"]


def test_a_tool_can_need_its_own_permission():
    tools = registry_for(FakeBrowser([]), own_permission=("evaluate_script",))
    assert "evaluate_script" not in listed(tools, ["tools:*", "tools:category:debugging"])
    assert "evaluate_script" in listed(tools, ["tools:evaluate_script"])
    refused = success_result_of(tools.call_tool("evaluate_script", {"pageId": 1, "function": "() => 1"}, context()))
    assert refused["isError"] and "requires it by name" in refused["content"][0]["text"]


def test_categories_restrict_what_is_offered_and_callable():
    tools = registry_for(FakeBrowser([FakePage(1, "s1")]), categories=("navigation",))
    assert listed(tools, ["tools:*"]) == {
        t.name for t in tools.list_tools(Principal("u", frozenset({"admin"}))) if t.meta["category"] == "navigation"
    }
    assert "list_pages" in listed(tools, ["tools:*"])
    unknown = success_result_of(tools.call_tool("take_snapshot", {"pageId": 1}, context()))
    assert unknown["isError"] and unknown["content"][0]["text"].startswith('Unknown tool "take_snapshot"')


def test_every_call_is_recorded_with_its_outcome():
    clock = Clock()
    records = []
    tools = registry_for(FakeBrowser([FakePage(1, "s1")]), clock=clock, records=records)
    success_result_of(tools.call_tool("list_pages", {}, context()))
    success_result_of(tools.call_tool("nope", {}, context()))
    success_result_of(tools.call_tool("list_pages", {}, context(permissions=["tools:click"])))
    success_result_of(tools.call_tool("select_page", {"pageId": 9}, context()))
    assert [(r.tool, r.outcome) for r in records] == [
        ("list_pages", "ok"),
        ("nope", "unknown_tool"),
        ("list_pages", "denied"),
        ("select_page", "error"),
    ]
    first = records[0]
    assert first.browser_url == "http://127.0.0.1:9222" and first.context.principal.token_id == "tok1"
    assert first.duration == 0 and first.sensitive == frozenset()


def test_secret_arguments_are_marked_sensitive_even_when_the_call_fails():
    records = []
    tools = registry_for(FakeBrowser([FakePage(1, "s1")]), clock=Clock(), records=records)
    headers = '{"Cookie": "session=abc"}'
    result = success_result_of(tools.call_tool("emulate", {"pageId": 9, "extraHttpHeaders": headers}, context()))
    assert result["isError"]
    answer = {"pageId": 9, "action": "accept", "promptText": "hunter2"}
    assert success_result_of(tools.call_tool("handle_dialog", answer, context()))["isError"]
    assert [(r.tool, r.outcome, r.sensitive) for r in records] == [
        ("emulate", "error", frozenset({"extraHttpHeaders"})),
        ("handle_dialog", "error", frozenset({"promptText"})),
    ]


def test_cancelled_and_rate_limited_calls_are_recorded_and_passed_on():
    from mcproxy.errors import RateLimited
    from mcproxy.tools.registry import ToolRegistry

    class Waiting(FakeBrowser):
        def connected(self, timeout=None):
            return Deferred()  # never

    class Limits:
        def check_tool(self, user_id, name):
            if name == "list_pages":
                raise RateLimited("slow down", retry_after=3)

    async def get_browser(user_id):
        return Waiting([FakePage(1, "s1")])

    records = []
    tools = ToolRegistry(get_browser, ToolsConfig(), Clock(), limits=Limits(), on_call_finished=[records.append])
    assert failure_result_of(tools.call_tool("list_pages", {}, context()), RateLimited).value.retry_after == 3
    waiting = tools.call_tool("select_page", {"pageId": 1}, context())
    assert records[-1].outcome == "rate_limited" and not waiting.called
    waiting.cancel()
    failure_result_of(waiting, CancelledError)
    assert [(r.tool, r.outcome) for r in records] == [("list_pages", "rate_limited"), ("select_page", "cancelled")]
