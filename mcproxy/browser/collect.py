"""Console messages and network requests of the pages a user may see.

chrome-devtools-mcp starts collecting when a tool first touches a page, so whatever a page
logged while loading is lost. Here `Collector` is a `BrowserPool` page listener that
enables Runtime, Log and Network on a page's session and records its events into
``page.state.records`` (a `PageRecords`):

- a page opened through the proxy (``new_page``) from its attach on, before it loads
  anything, and again after each reconnect;
- any other tab (the human's, a popup) only once a caller may see it: `make_visible`,
  called for every page a tool lists or uses (`mcproxy.tools.pages.visible_pages`). Until
  then it costs nothing: Chrome is not asked for its events. When collection starts,
  Chrome reports the console messages and log entries it still stores, so those logged
  earlier are there; earlier network requests are not.

Memory bound, per page (what an endless console flood or a chatty page can cost):

- the current navigation and the two before it; an older navigation is dropped whole;
- at most ``max_messages`` console messages (default 10,000) and ``max_requests`` network
  requests (default 1,000), and at most ``max_bytes`` (default 8 MiB) of accounted size
  for each kind (`mcproxy.browser.entries.ENTRY_OVERHEAD` per entry, an upper estimate of
  its objects, plus the characters of its strings); the oldest entries go first and are
  counted as dropped;
- every message text and argument is cut at ``max_text`` characters (default 10,000),
  URLs and header values at 4,096, stack traces at 20 frames;
- no bodies: response and request bodies are fetched from Chrome when asked for.

So a page holds at most about 2 × 8 MiB of collected data (a flood of 100,000 messages
is measured in tests/test_tools_console_network.py); a quiet page holds a few kilobytes.
All the pages of one browser together hold at most ``max_browser_bytes`` (default 64 MiB,
``tools.collect_browser_max_bytes``): past it, the journal that holds most drops its
oldest entries first, so a flooding page cannot push a quiet page's few out. Ids
(``msgid``, ``reqid``) are increasing integers per page that never repeat.
"""

import weakref
from collections import deque
from collections.abc import Iterable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcproxy.browser.entries import (
    MAX_FIELD,
    ConsoleMessage,
    NetworkRequest,
    clip,
    describe,
    headers_size,
    stack_frames,
    substituted,
)
from mcproxy.browser.journal import Budget, Journal
from mcproxy.logs import REDACTED

log = Logger()

#: How long a list or get tool waits for collection just started (Chrome's replay of the
#: console messages it stored) before it answers with what is there.
READY_WAIT = 2.0
#: Round trips a new tab's attach may take before the collector knows whose it is.
_PROBES = 2
DEFAULT_REDACTED_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})
#: Raw-header events that came before their request or response, kept until it comes.
MAX_EARLY_HEADERS = 256

_DOMAINS = ("Runtime.enable", "Log.enable", "Network.enable")
#: Chrome says "warning" where console types (and upstream) say "warn".
_TYPE_NAMES = {"warning": "warn"}


class PageRecords:
    """One page's console messages and network requests, fed by its CDP events."""

    def __init__(self, collector: "Collector", budget: Budget | None = None):
        self._collector = collector
        self.console: Journal[ConsoleMessage] = Journal(collector.max_messages, collector.max_bytes, budget=budget)
        self.network: Journal[NetworkRequest] = Journal(
            collector.max_requests, collector.max_bytes, self._forget_request, budget
        )
        #: Domain enables not answered yet, and the `ready` callers waiting for them.
        self._enabling = 0
        self._waiting: list[Deferred] = []
        self._requests: dict[str, NetworkRequest] = {}
        # Chrome may send the ...ExtraInfo events (raw headers, with cookies) before the
        # event they complete: (kind, requestId, headers), oldest first and dropped first.
        # The hops of a redirect share their requestId: each takes the oldest of its kind.
        self._early: deque[tuple[str, str, dict]] = deque(maxlen=MAX_EARLY_HEADERS)
        self._newest = 0.0
        self._replayed_until: float | None = None

    def reattached(self) -> None:
        """A new session is coming: Chrome will report the messages it still stores again."""
        self._replayed_until = self._newest

    def release(self) -> None:
        """The page closed: what it held no longer counts for its browser."""
        self.console.release()
        self.network.release()

    def enable(self, page) -> None:
        """Ask Chrome for the page's events. Not awaited: commands run in order on the
        session, so a navigation sent later already reports into enabled domains."""
        for method in _DOMAINS:
            self._enabling += 1
            sending = page.send(method)
            sending.addErrback(_log_enable_failure, page, method)
            sending.addBoth(self._enabled)

    def _enabled(self, _) -> None:
        self._enabling -= 1
        if not self._enabling:
            waiting, self._waiting = self._waiting, []
            for each in waiting:
                each.callback(self)

    def ready(self, clock, timeout: float = READY_WAIT) -> Deferred:
        """Deferred[self] once the domains are enabled (Chrome then has reported what it
        stored), or after ``timeout`` seconds (an open dialog holds Runtime.enable)."""
        if not self._enabling:
            return defer.succeed(self)
        waiting: Deferred = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        waiting.addTimeout(timeout, clock, onTimeoutCancel=lambda result, seconds: self)
        return waiting

    def _fresh(self, timestamp: float | None) -> bool:
        """False for a message Chrome reports again after a reconnect (we have it already)."""
        if timestamp is None:
            return True
        if self._replayed_until is not None:
            if timestamp <= self._replayed_until:
                return False
            self._replayed_until = None
        self._newest = max(self._newest, timestamp)
        return True

    def subscribe(self, page) -> None:
        """Listen to the page's events (subscriptions survive reconnects)."""
        for method, handler in (
            ("Runtime.consoleAPICalled", self._console_api_called),
            ("Runtime.exceptionThrown", self._exception_thrown),
            ("Log.entryAdded", self._log_entry_added),
            ("Page.frameNavigated", self._frame_navigated),
            ("Network.requestWillBeSent", self._request_will_be_sent),
            ("Network.requestWillBeSentExtraInfo", self._request_extra_info),
            ("Network.responseReceived", self._response_received),
            ("Network.responseReceivedExtraInfo", self._response_extra_info),
            ("Network.dataReceived", self._data_received),
            ("Network.loadingFinished", self._loading_finished),
            ("Network.loadingFailed", self._loading_failed),
        ):
            page.subscribe(method, handler)

    # console

    def _add_message(self, kind: str, args: list[str], text: str | None, stack: tuple[tuple[str, ...], int]) -> None:
        limit = self._collector.max_text
        args = [clip(arg, limit) for arg in args]
        if text is None and sum(map(len, args)) + len(args) > limit:
            text = " ".join(args)
        lines, more = stack
        self.console.add(ConsoleMessage(kind, tuple(args), None if text is None else clip(text, limit), lines, more))

    def _console_api_called(self, _: str, params: dict) -> None:
        if not self._fresh(params.get("timestamp")):
            return
        kind = params.get("type", "log")
        args = params.get("args", ())
        self._add_message(
            _TYPE_NAMES.get(kind, kind),
            [describe(arg) for arg in args],
            substituted(args),
            stack_frames(params.get("stackTrace")),
        )

    def _exception_thrown(self, _: str, params: dict) -> None:
        if not self._fresh(params.get("timestamp")):
            return
        details = params.get("exceptionDetails", {})
        text = details.get("text") or "Uncaught"
        exception = details.get("exception")
        if exception is not None:
            # The description is "Error: message" followed by the stack, one frame a line.
            first_line = describe(exception).partition("\n")[0]
            text = f"{text} {first_line}".rstrip()
        self._add_message("error", [], text, stack_frames(details.get("stackTrace")))

    def _log_entry_added(self, _: str, params: dict) -> None:
        entry = params.get("entry", {})
        if not self._fresh(entry.get("timestamp")):
            return
        level = entry.get("level", "info")
        stack = stack_frames(entry.get("stackTrace"))
        if not stack[0] and entry.get("url"):
            line = entry.get("lineNumber")
            where = entry["url"] if line is None else f"{entry['url']}:{line + 1}"
            stack = ((f"at {clip(where, MAX_FIELD)}",), 0)
        self._add_message(_TYPE_NAMES.get(level, level), [], entry.get("text", ""), stack)

    # navigation

    def _frame_navigated(self, _: str, params: dict) -> None:
        frame = params.get("frame", {})
        if frame.get("parentId"):
            return
        loader_id = frame.get("loaderId")
        self.console.navigated()
        # The document's own request (and its redirects) came before the navigation commit.
        self.network.navigated(lambda request: loader_id is not None and request.loader_id == loader_id)

    # network

    def _headers(self, headers: dict | None) -> tuple[tuple[str, str], ...]:
        redact = self._collector.redact_headers
        return tuple(
            (name, REDACTED if name.lower() in redact else clip(str(value), MAX_FIELD))
            for name, value in (headers or {}).items()
        )

    def _forget_request(self, request: NetworkRequest) -> None:
        if self._requests.get(request.cdp_id) is request:
            del self._requests[request.cdp_id]

    def _keep_early(self, kind: str, request_id: str, headers: dict) -> None:
        self._early.append((kind, request_id, headers))

    def _take_early(self, kind: str, request_id: str) -> dict | None:
        for index, (early_kind, early_id, headers) in enumerate(self._early):
            if early_kind == kind and early_id == request_id:
                del self._early[index]
                return headers
        return None

    def _set_response(self, request: NetworkRequest, response: dict) -> None:
        request.status = response.get("status", request.status)
        request.status_text = response.get("statusText", request.status_text)
        request.mime_type = response.get("mimeType", request.mime_type)
        early = self._take_early("response", request.cdp_id)
        if early is not None:
            self._replace_response_headers(request, self._headers(early))
            request.raw_response_headers = True
        elif not request.raw_response_headers:
            self._replace_response_headers(request, self._headers(response.get("headers")))

    def _replace_response_headers(self, request: NetworkRequest, headers: tuple[tuple[str, str], ...]) -> None:
        """Requests found through ``_requests`` are kept, so their growth is charged."""
        self.network.charge(request, headers_size(headers) - headers_size(request.response_headers))
        request.response_headers = headers

    def _request_will_be_sent(self, _: str, params: dict) -> None:
        previous = self._requests.get(params["requestId"])
        redirect = params.get("redirectResponse")
        request = NetworkRequest(params, self._headers(params.get("request", {}).get("headers")))
        if previous is not None and redirect is not None:
            self._set_response(previous, redirect)
            previous.finished = previous.redirected = True
            request.redirected_from = previous
        self._requests[request.cdp_id] = request
        self.network.add(request)
        early = self._take_early("request", request.cdp_id)
        if early is not None:
            self._request_extra_info("", {"requestId": request.cdp_id, "headers": early})

    def _request_extra_info(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId", ""))
        if not params.get("headers"):
            return
        if request is None or request.raw_request_headers or (request.status is not None and not request.finished):
            # Before its request, for the next hop of a redirect that is not known yet, or late
            # for this hop: `_loading_finished` settles which (no hop follows a finished one).
            self._keep_early("request", params.get("requestId", ""), params["headers"])
            return
        request.raw_request_headers = True
        # The headers as sent, including the Cookie header the main event leaves out.
        headers = self._headers(params["headers"])
        self.network.charge(request, headers_size(headers) - headers_size(request.request_headers))
        request.request_headers = headers

    def _response_received(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId", ""))
        if request is not None:
            self._set_response(request, params.get("response", {}))
            request.extra_info_due = bool(params.get("hasExtraInfo")) and not request.raw_response_headers

    def _response_extra_info(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId", ""))
        if (request is None or request.status is None) and params.get("headers"):
            # Before the request or its response: applied when that comes (`_set_response`).
            self._keep_early("response", params.get("requestId", ""), params["headers"])
            return
        if request is not None and params.get("headers"):
            # The headers as received, including Set-Cookie; they win over the summary.
            self._replace_response_headers(request, self._headers(params["headers"]))
            request.raw_response_headers = True
            request.extra_info_due = False

    def _data_received(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId", ""))
        if request is not None:
            request.body_size += params.get("dataLength", 0)

    def _loading_finished(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId", ""))
        if request is not None:
            request.finished = True
            late = None if request.raw_request_headers else self._take_early("request", request.cdp_id)
            if late is not None:  # raw headers Chrome sent after the response: this hop's
                self._request_extra_info("", {"requestId": request.cdp_id, "headers": late})

    def _loading_failed(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId", ""))
        if request is not None:
            request.finished = True
            request.failure = params.get("errorText") or ("canceled" if params.get("canceled") else "failed")


class Collector:
    """The page listener that collects console and network data (see the module docstring).

    ``redact_headers``: header names (lower case) whose values are replaced by
    ``[REDACTED]`` (`mcproxy.logs.REDACTED`) before they are stored; empty to keep every value.
    """

    def __init__(
        self,
        redact_headers: Iterable[str] = DEFAULT_REDACTED_HEADERS,
        *,
        max_messages: int = 10_000,
        max_requests: int = 1_000,
        max_bytes: int = 8 * 1024 * 1024,
        max_text: int = 10_000,
        max_browser_bytes: int = 64 * 1024 * 1024,
    ):
        self.redact_headers = frozenset(name.lower() for name in redact_headers)
        self.max_messages = max_messages
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_text = max_text
        self.max_browser_bytes = max_browser_bytes
        self._budgets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, page, event: str) -> None:
        if event == "closed":
            records, page.state.records, page.state.pending_collector = page.state.records, None, None
            if records is not None:
                records.release()
            return
        if event not in ("attached", "reattached"):
            return
        records = page.state.records
        if records is not None:  # seen before the reconnect: collect on the new session too
            records.reattached()
            records.enable(page)
            return
        page.state.pending_collector = self
        self._start_if_opened(page, _PROBES)

    def _start_if_opened(self, page, probes: int) -> None:
        """Start for a tab the proxy opened. `BrowserPool.new_page` marks it (``via_proxy``)
        when its attach settles, once the page listeners' set-up calls are answered and
        before anything loads in it; Chrome answers a session's calls in order, so by the
        answer to a call sent now (Page.enable again: harmless), or to the next one, for
        set-up that takes two round trips, it has."""
        if page.via_proxy:
            self.start(page)
        elif probes and not page.closed:
            page.send("Page.enable").addCallbacks(lambda _: self._start_if_opened(page, probes - 1), lambda _: None)

    def start(self, page) -> "PageRecords":
        """Collect for ``page`` from now on (once; later calls return its records)."""
        records = page.state.records
        if records is None and not page.closed:
            page.state.pending_collector = None
            budget = self._budgets.get(page.browser)
            if budget is None:
                budget = self._budgets[page.browser] = Budget(self.max_browser_bytes)
            records = page.state.records = PageRecords(self, budget)
            records.subscribe(page)
            records.enable(page)
        return records


def make_visible(page) -> None:
    """A caller may now see ``page``: start collecting for it, if a `Collector` waits to."""
    collector = page.state.pending_collector
    if collector is not None:
        collector.start(page)


def _log_enable_failure(failure, page, method: str) -> None:
    log.info(
        "Collecting on page {page_id}: {method} failed: {error}",
        page_id=page.page_id,
        method=method,
        error=failure.getErrorMessage(),
    )
