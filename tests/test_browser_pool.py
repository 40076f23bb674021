"""Deterministic tests of the pool: backoff, give-up, health checks, pages, serialization.

The browser is a `FakeChrome` reached through in-memory links; time is a `Clock`.
"""

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mcproxy.browser.pool import BrowserPool, PageLoadError, UserBrowser
from mcproxy.config import BrowserConfig
from mcproxy.errors import BrowserUnavailable, ToolError
from mcproxy.testing.deferreds import failure_result_of, success_result_of
from mcproxy.testing.fake_cdp import HANG, FakeChrome, memory_link


class Harness:
    """A UserBrowser on a Clock whose connect attempts go to ``chrome`` (or fail)."""

    def __init__(self, jitter: float = 0.0, **config):
        self.clock = Clock()
        self.chrome = FakeChrome()
        self.up = True
        self.attempts = 0
        self.links = []
        self.config = BrowserConfig(**{"call_timeout": 5.0, "connect_timeout": 5.0, **config})
        self.browser = UserBrowser(
            self.clock,
            self.config,
            None,
            "alice",
            "http://127.0.0.1:9222",
            open_link=self.open_link,
            rng=lambda: jitter,
        )

    async def open_link(self, browser):
        self.attempts += 1
        if not self.up:
            raise BrowserUnavailable("nothing listens at http://127.0.0.1:9222")
        link = memory_link(self.chrome, self.clock, default_timeout=self.config.call_timeout)
        self.links.append(link)
        return link


def test_backoff_schedule_and_jitter_bounds():
    h = Harness(jitter=0.0)
    assert [h.browser.retry_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    top = Harness(jitter=0.999999)
    assert top.browser.max_jitter == 0.25
    for n in range(1, 10):
        delay = top.browser.retry_delay(n)
        base = h.browser.retry_delay(n)
        assert base <= delay < base + top.browser.max_jitter


def test_reconnect_attempts_follow_the_backoff():
    h = Harness()
    h.up = False
    h.browser.start()
    assert h.attempts == 1
    assert h.browser.status == "reconnecting"
    assert "nothing listens" in h.browser.last_error
    expected = 1
    for delay in (1, 2, 4, 8, 16, 30, 30):
        h.clock.advance(delay - 0.01)
        assert h.attempts == expected
        h.clock.advance(0.01)
        expected += 1
        assert h.attempts == expected
    h.up = True
    h.clock.advance(30)
    assert h.browser.status == "connected"
    assert h.browser.last_error is None
    success_result_of(h.browser.stop())
    assert h.browser.status == "disconnected"


def test_max_attempts_then_failed():
    h = Harness(max_attempts=3)
    h.up = False
    h.browser.start()
    h.clock.advance(1)
    h.clock.advance(2)
    assert h.attempts == 3
    h.clock.advance(0)
    assert h.browser.status == "failed"
    h.clock.advance(1000)
    assert h.attempts == 3
    failure = failure_result_of(h.browser.connected(1), BrowserUnavailable)
    assert "gave up after 3 attempts" in failure.value.message
    h.up = True
    h.browser.retry()
    assert h.browser.status == "connected"


def test_connected_fails_fast_while_waiting_to_retry():
    h = Harness()
    h.up = False
    h.browser.start()
    failure = failure_result_of(Deferred.fromCoroutine(h.browser.connected(10)))
    assert failure.check(BrowserUnavailable)
    assert "reconnecting in the background" in failure.value.message
    assert "nothing listens" in failure.value.message


def test_connected_waits_for_an_attempt_in_flight():
    h = Harness()
    gate = Deferred()

    async def slow_open(browser):
        await gate
        return memory_link(h.chrome, h.clock)

    h.browser._open_link = slow_open
    h.browser.start()
    waiting = Deferred.fromCoroutine(h.browser.connected(10))
    assert not waiting.called
    gate.callback(None)
    assert not waiting.called, "waiters are woken from a fresh reactor turn"
    h.clock.advance(0)
    assert success_result_of(waiting) is None
    assert h.browser.status == "connected"


def test_connected_reports_a_failed_attempt_it_waited_for():
    h = Harness()
    gate = Deferred()

    async def refused(browser):
        await gate
        raise BrowserUnavailable("nothing listens at http://127.0.0.1:9222")

    h.browser._open_link = refused
    h.browser.start()
    waiting = Deferred.fromCoroutine(h.browser.connected(10))
    gate.callback(None)
    h.clock.advance(0)
    failure = failure_result_of(waiting)
    assert failure.check(BrowserUnavailable)
    assert "last error: nothing listens" in failure.value.message
    stopped_while_waiting = Deferred.fromCoroutine(h.browser.connected(10))
    assert failure_result_of(stopped_while_waiting).check(BrowserUnavailable)


def test_connected_times_out():
    h = Harness()
    h.browser._open_link = lambda browser: Deferred()
    h.browser.start()
    waiting = Deferred.fromCoroutine(h.browser.connected(3))
    h.clock.advance(3)
    assert "did not connect within 3 s" in failure_result_of(waiting).value.message


def test_health_check_failure_reconnects_and_keeps_page_ids():
    h = Harness(health_interval=30.0, call_timeout=5.0)
    h.chrome.add_target("http://example.test/")
    h.browser.start()
    before = {p.target_id: p.page_id for p in h.browser.pages()}
    assert len(before) == 2
    page = h.browser.pages()[1]
    page.state.tools = "kept"
    h.chrome.handlers["Browser.getVersion"] = lambda p, s: HANG
    h.clock.advance(30)
    assert h.chrome.methods().count("Browser.getVersion") == 1
    assert h.browser.status == "connected"
    h.clock.advance(5)
    assert h.browser.status == "reconnecting"
    assert h.links[0].closed
    assert page.session_id is None
    failure = failure_result_of(page.send("Runtime.evaluate", {"expression": "1"}))
    assert failure.check(BrowserUnavailable)
    h.chrome.handlers["Browser.getVersion"] = lambda p, s: {"product": "FakeChrome/1.0"}
    h.chrome.add_target("http://new.test/")
    h.clock.advance(1)
    assert h.browser.status == "connected"
    after = {p.target_id: p.page_id for p in h.browser.pages()}
    assert {t: after[t] for t in before} == before
    assert max(after.values()) == 3
    assert page.session_id == f"S-{page.target_id}-2"  # a new session for the same target
    assert h.browser.page(page.page_id).state.tools == "kept"


def test_pages_of_vanished_targets_are_dropped_on_reconnect():
    h = Harness()
    h.browser.start()
    [page] = h.browser.pages()
    events = []
    h.browser.add_page_listener(lambda p, e: events.append((p.page_id, e)))
    h.links[0].abort()
    del h.chrome.targets[page.target_id]
    h.clock.advance(1)
    assert h.browser.status == "connected"
    assert h.browser.pages() == []
    assert page.closed
    assert events == [(1, "closed")]
    with pytest.raises(ToolError, match="No page with id 1"):
        h.browser.page(1)


def test_pending_calls_fail_on_disconnect():
    h = Harness()
    h.browser.start()
    h.chrome.handlers["Runtime.evaluate"] = lambda p, s: HANG
    call = h.browser.pages()[0].send("Runtime.evaluate", {"expression": "1"})
    assert not call.called
    h.links[0].abort()
    failure = failure_result_of(call)
    assert failure.check(BrowserUnavailable)
    assert "lost during Runtime.evaluate" in failure.value.message
    assert h.browser.status == "reconnecting"
    assert failure_result_of(h.browser.send("Browser.getVersion")).check(BrowserUnavailable)


def test_new_page_waits_for_load_and_marks_opener():
    h = Harness()

    def navigate(params, session_id):
        h.clock.callLater(0.5, h.chrome.emit, "Page.loadEventFired", {"timestamp": 1}, session_id=session_id)
        return {"frameId": "F", "loaderId": "L"}

    h.chrome.handlers["Page.navigate"] = navigate
    h.browser.start()
    seen = []
    h.browser.add_page_listener(lambda p, e: seen.append((p.page_id, e)))
    opening = h.browser.new_page("http://127.0.0.1:1/x", opener="session-1", background=True)
    assert not opening.called
    h.clock.advance(0.5)
    page = success_result_of(opening)
    assert (page.page_id, page.opener, page.via_proxy) == (2, "session-1", True)
    assert seen == [(2, "attached")]
    assert ("Target.createTarget", {"url": "about:blank", "background": True}, None) in h.chrome.calls
    success_result_of(h.browser.close_page(2))
    assert page.closed and [p.page_id for p in h.browser.pages()] == [1]


def test_new_page_load_timeout_and_navigation_error():
    h = Harness()
    h.chrome.handlers["Page.navigate"] = lambda p, s: {"frameId": "F"}
    h.browser.start()
    opening = h.browser.new_page("http://127.0.0.1:1/slow", timeout=4)
    h.clock.advance(4)
    failure = failure_result_of(opening)
    assert failure.check(PageLoadError)
    assert "did not finish loading within 4 s" in failure.value.message
    assert failure.value.page.page_id == 2
    h.chrome.handlers["Page.navigate"] = lambda p, s: {"frameId": "F", "errorText": "net::ERR_CONNECTION_REFUSED"}
    failure = failure_result_of(h.browser.new_page("http://127.0.0.1:1/"))
    assert "net::ERR_CONNECTION_REFUSED" in failure.value.message


def test_run_exclusive_is_fifo_per_page_and_concurrent_across_pages():
    h = Harness()
    h.chrome.add_target("about:blank")
    h.browser.start()
    one, two = h.browser.pages()
    gates = {name: Deferred() for name in ("a", "b", "c", "d")}
    order = []

    async def work(name):
        order.append(f"start {name}")
        await gates[name]
        order.append(f"end {name}")
        return name

    a = one.run_exclusive(work, "a")
    b = one.run_exclusive(work, "b")
    c = one.run_exclusive(work, "c")
    d = two.run_exclusive(work, "d")
    assert order == ["start a", "start d"]
    c.cancel()
    assert failure_result_of(c).check(defer.CancelledError)
    gates["a"].callback(None)
    assert success_result_of(a) == "a"
    assert order == ["start a", "start d", "end a", "start b"]
    gates["b"].callback(None)
    gates["d"].callback(None)
    assert (success_result_of(b), success_result_of(d)) == ("b", "d")
    assert "start c" not in order
    assert not one.busy and not two.busy


def test_cancelling_a_running_exclusive_call_frees_the_page():
    h = Harness()
    h.browser.start()
    [page] = h.browser.pages()
    h.chrome.handlers["Runtime.evaluate"] = lambda p, s: HANG

    async def evaluate():
        return await page.send("Runtime.evaluate", {"expression": "1"})

    running = page.run_exclusive(evaluate)
    running.cancel()
    assert failure_result_of(running).check(defer.CancelledError)
    assert h.links[0].pending_count == 0
    assert not page.busy
    assert success_result_of(page.run_exclusive(lambda: 42)) == 42


def test_wait_for_event_predicate_timeout_and_cancel():
    h = Harness()
    h.browser.start()
    [page] = h.browser.pages()
    session = page.session_id
    waiting = page.wait_for_event("Page.lifecycleEvent", lambda p: p["name"] == "load", timeout=2)
    h.chrome.emit("Page.lifecycleEvent", {"name": "DOMContentLoaded"}, session_id=session)
    assert not waiting.called
    h.chrome.emit("Page.lifecycleEvent", {"name": "load"}, session_id="another-session")
    assert not waiting.called
    h.chrome.emit("Page.lifecycleEvent", {"name": "load"}, session_id=session)
    assert success_result_of(waiting) == {"name": "load"}
    late = page.wait_for_event("Page.loadEventFired", timeout=2)
    h.clock.advance(2)
    assert "did not fire Page.loadEventFired within 2 s" in failure_result_of(late).value.message
    cancelled = page.wait_for_event("Page.loadEventFired")
    cancelled.cancel()
    assert failure_result_of(cancelled).check(defer.CancelledError)
    assert page._subscribers.get("Page.loadEventFired") == []


def test_pool_shares_replaces_and_forgets():
    clock = Clock()
    chrome = FakeChrome()
    pool = BrowserPool(clock, BrowserConfig(), open_link=lambda b: defer.succeed(memory_link(chrome, clock)))
    first = pool.browser_for("alice", "http://127.0.0.1:9222")
    assert pool.browser_for("alice", "http://127.0.0.1:9222") is first
    assert pool.connection_count() == 1
    replaced = pool.browser_for("alice", "http://127.0.0.1:9333")
    assert replaced is not first and first.status == "disconnected"
    pool.browser_for("bob", "http://127.0.0.1:9222")
    assert pool.connection_count() == 2
    assert pool.status_counts() == {"connected": 2, "disconnected": 0, "reconnecting": 0, "failed": 0}
    success_result_of(pool.forget("alice"))
    assert pool.existing("alice") is None and replaced.status == "disconnected"
    success_result_of(pool.close())
    assert pool.connection_count() == 0
    with pytest.raises(Exception, match="scheme"):
        pool.browser_for("carol", "ftp://127.0.0.1:21")


def test_page_listeners_can_use_the_page_during_attach_and_reattach():
    h = Harness()
    results = []

    def enable_runtime(page, event):
        if event != "closed":
            page.send("Runtime.enable").addBoth(lambda r: results.append((page.page_id, event, r)))

    h.browser.add_page_listener(enable_runtime)
    h.browser.start()
    h.links[0].abort()
    h.clock.advance(1)
    assert results == [(1, "attached", {}), (1, "reattached", {})]
    sessions = [s for m, _, s in h.chrome.calls if m == "Runtime.enable"]
    assert sessions == ["S-T1-1", "S-T1-2"]


def test_event_waits_fail_fast_when_the_link_drops_or_the_page_closes():
    h = Harness()
    h.chrome.add_target("about:blank")
    h.browser.start()
    one, two = h.browser.pages()
    dropped = one.wait_for_event("Page.loadEventFired", timeout=30)
    h.links[0].abort()
    failure = failure_result_of(dropped)
    assert failure.check(BrowserUnavailable) and "connection to the browser was lost" in failure.value.message
    h.clock.advance(1)
    closing = two.wait_for_event("Page.loadEventFired", timeout=30)
    success_result_of(h.browser.close_page(two.page_id))
    assert "page 2 was closed" in failure_result_of(closing).value.message
    assert two._waiters == set() and one._waiters == set()


def test_a_crash_fails_waiting_calls_but_not_a_reload_on_its_way():
    h = Harness()
    h.browser.start()
    (page,) = h.browser.pages()
    h.chrome.handlers["Runtime.evaluate"] = h.chrome.handlers["Page.reload"] = lambda p, s: HANG
    evaluating, reloading = page.send("Runtime.evaluate"), page.send("Page.reload")
    h.chrome.emit("Inspector.targetCrashed", {}, session_id=page.session_id)
    assert page.crashed
    assert failure_result_of(evaluating).value.message == page.crash_message()
    assert not reloading.called  # the browser process answers it: the page's way back
    h.clock.advance(h.config.call_timeout)
    assert "Page.reload" in str(failure_result_of(reloading).value)


def test_new_targets_run_once_the_page_listeners_have_set_them_up():
    """Chrome attaches every page and holds new ones; the pool lets each run when the Deferreds
    its listeners returned have fired (at once when there are none), and closes one whose
    set-up failed instead of letting it run."""
    h = Harness()
    gates: dict[str, Deferred] = {}

    def listener(page, event):
        if event == "attached" and page.target_id in gates:
            return gates[page.target_id]
        return None

    h.browser.add_page_listener(listener)
    h.browser.start()

    def resumed(session: str) -> bool:
        return ("Runtime.runIfWaitingForDebugger", {}, session) in h.chrome.calls

    auto = {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True, "filter": [{"type": "page"}]}
    assert ("Target.setAutoAttach", auto, None) in h.chrome.calls
    assert "Target.attachToTarget" not in h.chrome.methods()
    # Nothing to wait for: a new tab runs at once.
    plain = h.chrome.add_target("http://plain.test/")
    assert resumed(f"S-{plain}-1")
    # A listener still setting the tab up holds it; the page is known meanwhile.
    gates["T3"] = Deferred()
    held = h.chrome.add_target("http://held.test/")
    assert held == "T3" and not resumed("S-T3-1")
    assert [p.target_id for p in h.browser.pages()] == ["T1", plain, held]
    gates["T3"].callback(None)
    assert resumed("S-T3-1")
    # A set-up that failed: the tab is closed, never run.
    gates["T4"] = defer.fail(ToolError("Fetch.enable failed"))
    doomed = h.chrome.add_target("http://doomed.test/")
    assert not resumed(f"S-{doomed}-1")
    assert ("Target.closeTarget", {"targetId": doomed}, None) in h.chrome.calls
    assert doomed not in [p.target_id for p in h.browser.pages()]


def test_new_page_returns_once_its_tab_is_set_up():
    h = Harness()
    gate = Deferred()
    h.browser.add_page_listener(lambda page, event: gate if page.page_id == 2 else None)
    h.browser.start()
    opening = h.browser.new_page("about:blank")
    assert not opening.called
    gate.callback(None)
    page = success_result_of(opening)
    assert page.page_id == 2 and page.via_proxy
