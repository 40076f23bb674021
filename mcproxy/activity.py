"""What happened lately: a bounded memory of tool calls, errors and browser status changes.

The admin dashboard shows it; nothing else depends on it. It is fed as a `ToolRegistry`
``on_call_started`` / ``on_call_finished`` observer and by whoever looks at browser
statuses (`ActivityLog.browsers_seen`). It keeps no tool arguments, only who called which
tool, how it ended and how long it took, so it can never leak what was typed or sent.
Memory is bounded by the ring sizes, whatever the traffic.
"""

from collections import deque
from collections.abc import Iterable

import attrs

#: Tool call outcomes that are no error (a client cancelling is its own choice).
QUIET_OUTCOMES = frozenset({"ok", "cancelled"})

#: What each failing outcome means, for a reader who cannot see the tool's answer.
OUTCOME_MESSAGES = {
    "error": "the tool answered with an error the model can act on",
    "denied": "refused: the credential lacks the tool's permission",
    "unknown_tool": "no such tool",
    "rate_limited": "refused: over the tool rate limit",
    "internal_error": "internal error; the server log has details",
}


@attrs.frozen
class CallEntry:
    """One finished tool call (``time`` in epoch seconds, ``duration`` in seconds)."""

    time: float
    user_id: str
    tool: str
    outcome: str
    duration: float


@attrs.frozen
class ErrorEntry:
    """Something that went wrong: a failed tool call or a browser that is away.

    ``kind`` is "tool" or "browser"; ``subject`` the tool name or the browser URL.
    """

    time: float
    user_id: str
    kind: str
    subject: str
    message: str


@attrs.frozen
class BrowserChange:
    """A user's browser moved from ``previous`` (None when first seen) to ``status``."""

    time: float
    user_id: str
    browser_url: str
    previous: str | None
    status: str
    error: str | None


class ActivityLog:
    """Ring buffers of the latest calls, errors and browser changes, newest last inside.

    ``clock`` gives the time of browser observations (tool calls are timed by when they
    finished, on the same clock).
    """

    def __init__(self, clock, *, max_calls: int = 200, max_errors: int = 100, max_changes: int = 100):
        self._clock = clock
        self._calls: deque[CallEntry] = deque(maxlen=max_calls)
        self._errors: deque[ErrorEntry] = deque(maxlen=max_errors)
        self._changes: deque[BrowserChange] = deque(maxlen=max_changes)
        self._browsers: dict[str, tuple[str, str, str | None]] = {}
        self._last_call: dict[str, float] = {}
        #: Tool calls running now, and finished since start.
        self.in_flight = 0
        self.total_calls = 0

    # -- feeds ----------------------------------------------------------------

    def tool_call_started(self, tool: str) -> None:
        """`ToolRegistry` ``on_call_started`` observer."""
        self.in_flight += 1

    def tool_call_finished(self, record) -> None:
        """`ToolRegistry` ``on_call_finished`` observer (a `ToolCallRecord`; its arguments are not kept)."""
        now = self._clock.seconds()
        user_id = record.context.principal.user_id
        self.in_flight = max(0, self.in_flight - 1)
        self.total_calls += 1
        self._last_call[user_id] = now
        self._calls.append(CallEntry(now, user_id, record.tool, record.outcome, record.duration))
        if record.outcome not in QUIET_OUTCOMES:
            message = OUTCOME_MESSAGES.get(record.outcome, record.outcome)
            self._errors.append(ErrorEntry(now, user_id, "tool", record.tool, message))

    def browser_status(self, browser) -> None:
        """A `mcproxy.browser.pool.BrowserPool` status listener: note the browser's new status."""
        self.browser_changed(browser.user_id, browser.browser_url, browser.status, browser.last_error)

    def browser_changed(self, user_id: str, browser_url: str, status: str, error: str | None) -> None:
        """Note one browser as it is now (the pool calls this on every status change).

        A change of status (or of its error) is kept; a browser that is away with an error
        also counts as an error, once per change.
        """
        state = (browser_url, status, error)
        before = self._browsers.get(user_id)
        self._browsers[user_id] = state
        if before == state:
            return
        now = self._clock.seconds()
        previous = before[1] if before is not None else None
        self._changes.append(BrowserChange(now, user_id, browser_url, previous, status, error))
        if error is not None and status != "connected":
            self._errors.append(ErrorEntry(now, user_id, "browser", browser_url, f"{status}: {error}"))

    def browsers_seen(self, browsers: Iterable[tuple[str, str, str, str | None]]) -> None:
        """Note every registered browser as it is now: ``(user_id, browser_url, status, error)``;
        browsers not listed are forgotten."""
        listed = set()
        for user_id, browser_url, status, error in browsers:
            listed.add(user_id)
            self.browser_changed(user_id, browser_url, status, error)
        for gone in set(self._browsers) - listed:
            del self._browsers[gone]

    # -- reads ----------------------------------------------------------------

    def last_call(self, user_id: str) -> float | None:
        """When ``user_id``'s latest tool call finished (epoch seconds), or None."""
        return self._last_call.get(user_id)

    def recent_calls(self, limit: int | None = None) -> list[CallEntry]:
        """The latest tool calls, newest first."""
        return _newest_first(self._calls, limit)

    def recent_errors(self, limit: int | None = None) -> list[ErrorEntry]:
        """The latest errors, newest first."""
        return _newest_first(self._errors, limit)

    def browser_changes(self, limit: int | None = None) -> list[BrowserChange]:
        """The latest browser status changes, newest first."""
        return _newest_first(self._changes, limit)


def _newest_first(ring: deque, limit: int | None) -> list:
    items = list(reversed(ring))
    return items if limit is None else items[:limit]
