"""The activity ring buffers behind the admin dashboard: bounded, newest first, no arguments."""

import json

import attrs
from twisted.internet.task import Clock

from mcproxy.activity import ActivityLog
from mcproxy.auth.principal import Principal
from mcproxy.calls import CallContext, SessionView
from mcproxy.tools.registry import ToolCallRecord


def _record(tool="click", outcome="ok", user="alice", duration=0.25, arguments=None):
    context = CallContext(principal=Principal(user), session=SessionView(None), protocol_version="2026-07-28")
    return ToolCallRecord(
        tool=tool,
        arguments=arguments or {},
        context=context,
        outcome=outcome,
        duration=duration,
        browser_url="http://127.0.0.1:9222",
        sensitive=frozenset(),
    )


def _finish(activity, clock, *records):
    for record in records:
        activity.tool_call_started(record.tool)
        clock.advance(1)
        activity.tool_call_finished(record)


def test_calls_are_bounded_and_newest_first():
    clock = Clock()
    activity = ActivityLog(clock, max_calls=3)
    _finish(activity, clock, *(_record(tool=f"tool_{i}") for i in range(5)))
    calls = activity.recent_calls()
    assert [c.tool for c in calls] == ["tool_4", "tool_3", "tool_2"]
    assert [c.time for c in calls] == [5.0, 4.0, 3.0]
    assert [c.tool for c in activity.recent_calls(2)] == ["tool_4", "tool_3"]
    assert activity.total_calls == 5
    assert activity.in_flight == 0


def test_in_flight_counts_calls_between_start_and_finish():
    activity = ActivityLog(Clock())
    activity.tool_call_started("wait_for")
    activity.tool_call_started("click")
    assert activity.in_flight == 2
    activity.tool_call_finished(_record("click"))
    assert activity.in_flight == 1


def test_failed_calls_are_errors_but_ok_and_cancelled_are_not():
    clock = Clock()
    activity = ActivityLog(clock, max_errors=2)
    _finish(
        activity,
        clock,
        _record("click", "ok"),
        _record("made_up", "unknown_tool", user="bob"),
        _record("wait_for", "cancelled"),
        _record("navigate_page", "error"),
        _record("fill", "internal_error"),
    )
    errors = activity.recent_errors()
    assert [(e.subject, e.kind) for e in errors] == [
        ("fill", "tool"),
        ("navigate_page", "tool"),
    ]
    assert "internal error" in errors[0].message
    outcomes = [c.outcome for c in activity.recent_calls()]
    assert outcomes == ["internal_error", "error", "cancelled", "unknown_tool", "ok"]
    assert activity.recent_calls()[3].user_id == "bob"


def test_arguments_are_never_kept():
    clock = Clock()
    activity = ActivityLog(clock)
    _finish(activity, clock, _record("fill", "error", arguments={"value": "hunter2-secret"}))
    kept = [attrs.asdict(e) for e in [*activity.recent_calls(), *activity.recent_errors()]]
    assert kept and "hunter2-secret" not in json.dumps(kept)
    assert all("arguments" not in entry for entry in kept)


def test_last_call_per_user():
    clock = Clock()
    activity = ActivityLog(clock)
    assert activity.last_call("alice") is None
    _finish(activity, clock, _record(user="alice"), _record(user="bob"))
    assert activity.last_call("alice") == 1.0
    assert activity.last_call("bob") == 2.0


def test_browser_changes_are_kept_once_per_change_with_errors_when_away():
    clock = Clock()
    activity = ActivityLog(clock, max_changes=10)
    url = "http://127.0.0.1:9222"
    activity.browsers_seen([("alice", url, "connected", None)])
    clock.advance(1)
    activity.browsers_seen([("alice", url, "connected", None)])  # no change: nothing new
    clock.advance(1)
    activity.browsers_seen([("alice", url, "reconnecting", "connection lost: gone")])
    clock.advance(1)
    activity.browsers_seen([("alice", url, "connected", None)])
    changes = activity.browser_changes()
    assert [(c.previous, c.status, c.time) for c in changes] == [
        ("reconnecting", "connected", 3.0),
        ("connected", "reconnecting", 2.0),
        (None, "connected", 0.0),
    ]
    [error] = activity.recent_errors()
    assert (error.kind, error.user_id, error.subject) == ("browser", "alice", url)
    assert error.message == "reconnecting: connection lost: gone"


def test_browsers_no_longer_listed_are_forgotten():
    clock = Clock()
    activity = ActivityLog(clock)
    url = "http://127.0.0.1:9222"
    activity.browsers_seen([("alice", url, "connected", None)])
    activity.browsers_seen([])
    activity.browsers_seen([("alice", url, "connected", None)])
    assert [c.previous for c in activity.browser_changes()] == [None, None]


def test_browser_changes_are_bounded():
    clock = Clock()
    activity = ActivityLog(clock, max_changes=2, max_errors=1)
    for i in range(4):
        activity.browsers_seen([("alice", "http://127.0.0.1:9222", "failed", f"attempt {i}")])
    assert [c.error for c in activity.browser_changes()] == ["attempt 3", "attempt 2"]
    assert [e.message for e in activity.recent_errors()] == ["failed: attempt 3"]


def test_every_status_change_of_a_pool_browser_is_noted():
    from twisted.internet import defer

    from mcproxy.browser.pool import BrowserPool
    from mcproxy.config import BrowserConfig

    clock = Clock()
    log = ActivityLog(clock)
    pool = BrowserPool(
        clock,
        BrowserConfig(backoff_initial=1.0, max_attempts=0),
        http_client=object(),
        open_link=lambda browser: defer.fail(ConnectionRefusedError("nothing listens")),
        status_listeners=[lambda b: log.browser_changed(b.user_id, b.browser_url, b.status, b.last_error)],
    )
    pool.browser_for("alice", "http://127.0.0.1:9")
    clock.advance(0)
    changes = log.browser_changes()
    assert [(c.user_id, c.status) for c in changes] == [("alice", "reconnecting")]
    assert "nothing listens" in changes[0].error
    assert [(e.kind, e.subject) for e in log.recent_errors()] == [("browser", "http://127.0.0.1:9")]
    pool.close()
    clock.advance(0)
    assert next(c.status for c in log.browser_changes()) == "disconnected"
