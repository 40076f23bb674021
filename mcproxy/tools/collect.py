"""Console messages and network requests of the pages a user may see.

chrome-devtools-mcp starts collecting when a tool first touches a page, so whatever a page
logged while loading is lost. Here `Collector` is a `BrowserPool` page listener that
enables Runtime, Log and Network on a page's session and records its events into
``page.state["collect"]`` (a `PageRecords`):

- a page opened through the proxy (``new_page``) from its attach on, before it loads
  anything, and again after each reconnect;
- any other tab (the human's, a popup) only once a caller may see it: `make_visible`,
  called for every page a tool lists or uses (`mcproxy.tools.scope.visible_pages`). Until
  then it costs nothing: Chrome is not asked for its events. When collection starts,
  Chrome reports the console messages and log entries it still stores, so those logged
  earlier are there; earlier network requests are not.

Memory bound, per page (what an endless console flood or a chatty page can cost):

- the current navigation and the two before it; an older navigation is dropped whole;
- at most ``max_messages`` console messages (default 10,000) and ``max_requests`` network
  requests (default 1,000), and at most ``max_bytes`` (default 8 MiB) of accounted size
  for each kind (`_ENTRY_OVERHEAD` per entry, an upper estimate of its objects, plus the
  characters of its strings); the oldest entries go first and are counted as dropped;
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

import json
import re
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcproxy.errors import ToolError
from mcproxy.tools.schema import MAX_SAFE_INTEGER

log = Logger()

STATE_KEY = "collect"
#: The `Collector` of a page it does not collect for yet (`make_visible` starts it).
PENDING_KEY = "collect.pending"
#: How long a list or get tool waits for collection just started (Chrome's replay of the
#: console messages it stored) before it answers with what is there.
READY_WAIT = 2.0
#: Round trips a new tab's attach may take before the collector knows whose it is.
_PROBES = 2
DEFAULT_REDACTED_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})
REDACTED = "<redacted>"
TRUNCATED = "... <truncated>"
KEPT_NAVIGATIONS = 3
MAX_FRAMES = 20
MAX_FIELD = 4096
#: Raw-header events that came before their request or response, kept until it comes.
MAX_EARLY_HEADERS = 256
#: Accounted sizes, upper estimates of CPython's: an entry besides its strings (object,
#: tuples, its slot in the journal), a string besides its characters, a header pair.
_ENTRY_OVERHEAD = 384
_STRING_OVERHEAD = 64
_HEADER_OVERHEAD = 2 * _STRING_OVERHEAD + 64

_DOMAINS = ("Runtime.enable", "Log.enable", "Network.enable")
#: Chrome says "warning" where console types (and upstream) say "warn".
_TYPE_NAMES = {"warning": "warn"}
_FORMAT = re.compile(r"%[sdifoOc%]")


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + TRUNCATED


# -- bounded per-page journals ----------------------------------------------------------


class _Navigation:
    __slots__ = ("entries", "dropped")

    def __init__(self) -> None:
        self.entries: OrderedDict[int, object] = OrderedDict()
        self.dropped = 0


class Journal:
    """Entries of one kind for one page, by navigation, bounded in number and size.

    Entries carry ``id`` (assigned here) and ``cost`` (their accounted size). ``on_drop``
    is told about every entry that leaves, so indexes of it can forget it.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        on_drop: Callable[[object], None] = lambda entry: None,
        budget: "Budget | None" = None,
    ):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._budget = budget
        self._navigations: deque[_Navigation] = deque([_Navigation()])
        self._count = 0
        self._cost = 0
        self._next_id = 1
        if budget is not None:
            budget.journals.add(self)

    def __len__(self) -> int:
        return self._count

    @property
    def cost(self) -> int:
        """The accounted size of the entries kept."""
        return self._cost

    def add(self, entry):
        """Give ``entry`` the next id and keep it in the current navigation."""
        entry.id = self._next_id
        self._next_id += 1
        self._navigations[-1].entries[entry.id] = entry
        self._count += 1
        self._account(entry.cost)
        self._trim()
        return entry

    def charge(self, entry, extra: int) -> None:
        """``entry`` (kept) grew by ``extra``."""
        entry.cost += extra
        self._account(extra)
        self._trim()

    def _account(self, cost: int) -> None:
        self._cost += cost
        if self._budget is not None:
            self._budget.cost += cost

    def navigated(self, keep: Callable[[object], bool] | None = None) -> None:
        """A new navigation starts; entries of the last one matching ``keep`` move into it."""
        last = self._navigations[-1]
        current = _Navigation()
        if keep is not None:
            for entry_id in [i for i, e in last.entries.items() if keep(e)]:
                current.entries[entry_id] = last.entries.pop(entry_id)
        self._navigations.append(current)
        while len(self._navigations) > KEPT_NAVIGATIONS:
            for entry in self._navigations.popleft().entries.values():
                self._forget(entry)

    def _trim(self) -> None:
        while self._count > self.max_entries or (self._cost > self.max_bytes and self._count > 1):
            self.drop_oldest()
        if self._budget is not None:
            self._budget.trim()

    def drop_oldest(self) -> None:
        """Drop the oldest entry kept, for room (it counts as dropped)."""
        navigation = next(n for n in self._navigations if n.entries)
        _, entry = navigation.entries.popitem(last=False)
        navigation.dropped += 1
        self._forget(entry)

    def _forget(self, entry) -> None:
        self._count -= 1
        self._account(-entry.cost)
        self._on_drop(entry)

    def release(self) -> None:
        """The page is gone: its entries no longer count against the browser's budget."""
        if self._budget is not None:
            self._budget.journals.discard(self)
            self._budget.cost -= self._cost
            self._budget = None

    def entries(self, preserved: bool = False) -> list:
        """The current navigation's entries (all kept navigations' with ``preserved``), oldest first."""
        if not preserved:
            return list(self._navigations[-1].entries.values())
        return [entry for navigation in self._navigations for entry in navigation.entries.values()]

    def dropped(self, preserved: bool = False) -> int:
        """How many entries of the current (or every kept) navigation were dropped for room."""
        if not preserved:
            return self._navigations[-1].dropped
        return sum(navigation.dropped for navigation in self._navigations)

    def get(self, entry_id: int):
        """The kept entry with this id, or None."""
        for navigation in self._navigations:
            entry = navigation.entries.get(entry_id)
            if entry is not None:
                return entry
        return None

    def limits(self) -> str:
        """The bounds, for messages that explain a drop."""
        return f"a page keeps at most {self.max_entries} entries and {self.max_bytes / 2**20:g} MiB"

    def issued(self, entry_id: int) -> bool:
        """Whether this id was ever given out (so a missing entry was dropped, not invented)."""
        return 0 < entry_id < self._next_id


class Budget:
    """What the collected pages of one browser hold together, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.cost = 0
        self.journals: set[Journal] = set()

    def trim(self) -> None:
        """Over the bound: the journal holding most drops its oldest entries (never a
        journal's last one, as within a page)."""
        while self.cost > self.max_bytes:
            fullest = max((j for j in self.journals if len(j) > 1), key=lambda j: j.cost, default=None)
            if fullest is None:
                return
            fullest.drop_oldest()


# -- what is kept ---------------------------------------------------------------------------


class ConsoleMessage:
    """One console message, uncaught exception or browser log entry.

    ``own_text`` is set when the text is not just the arguments joined (log entries,
    exceptions, format strings).
    """

    __slots__ = ("id", "type", "args", "own_text", "stack", "more_frames", "cost")

    def __init__(self, kind: str, args: tuple[str, ...], text: str | None, stack: tuple[str, ...], more_frames: int):
        self.id = 0
        self.type = kind
        self.args = args
        self.own_text = text
        self.stack = stack
        self.more_frames = more_frames
        self.cost = _ENTRY_OVERHEAD + _strings_size((*args, *stack)) + (0 if text is None else _strings_size((text,)))

    @property
    def text(self) -> str:
        """The message as one line of text (the arguments joined, for console calls)."""
        return self.own_text if self.own_text is not None else " ".join(self.args)

    def stack_lines(self) -> list[str]:
        """The stack trace, one frame per line (1-based line and column numbers)."""
        lines = list(self.stack)
        if self.more_frames:
            lines.append(f"... and {self.more_frames} more frames")
        return lines


class NetworkRequest:
    """One request (one hop of a redirect chain) with its response's metadata; never its body."""

    __slots__ = (
        "id",
        "cdp_id",
        "loader_id",
        "frame_id",
        "method",
        "url",
        "resource_type",
        "request_headers",
        "has_post_data",
        "status",
        "status_text",
        "response_headers",
        "raw_response_headers",
        "raw_request_headers",
        "extra_info_due",
        "mime_type",
        "failure",
        "finished",
        "body_size",
        "redirected",
        "redirected_from",
        "cost",
    )

    def __init__(self, params: dict, headers: tuple[tuple[str, str], ...]):
        request = params.get("request", {})
        self.id = 0
        self.cdp_id = params["requestId"]
        self.loader_id = params.get("loaderId")
        self.frame_id = params.get("frameId")
        self.method = request.get("method", "GET")
        self.url = clip(request.get("url", "") + request.get("urlFragment", ""), MAX_FIELD)
        self.resource_type = (params.get("type") or "Other").lower()
        self.request_headers = headers
        self.has_post_data = bool(request.get("hasPostData") or request.get("postData"))
        self.status: int | None = None
        self.status_text = ""
        self.response_headers: tuple[tuple[str, str], ...] = ()
        self.raw_response_headers = False
        self.raw_request_headers = False
        #: Chrome said the raw headers (with Set-Cookie) follow in a separate, later event.
        self.extra_info_due = False
        self.mime_type = ""
        self.failure: str | None = None
        self.finished = False
        self.body_size = 0
        self.redirected = False
        self.redirected_from: NetworkRequest | None = None
        self.cost = _ENTRY_OVERHEAD + _strings_size((self.url,)) + _headers_size(headers)

    @property
    def status_label(self) -> str:
        """``200``, ``failed - net::ERR_...`` or ``pending``."""
        if self.status is not None:
            return str(self.status)
        if self.failure is not None:
            return f"failed - {self.failure}"
        return "pending"

    def redirect_chain(self) -> list["NetworkRequest"]:
        """The earlier hops that led here, first hop first."""
        chain = []
        hop = self.redirected_from
        while hop is not None:
            chain.append(hop)
            hop = hop.redirected_from
        return chain[::-1]


def _strings_size(strings: Iterable[str]) -> int:
    return sum(_STRING_OVERHEAD + len(text) for text in strings)


def _headers_size(headers: Iterable[tuple[str, str]]) -> int:
    return sum(_HEADER_OVERHEAD + len(name) + len(value) for name, value in headers)


# -- turning CDP values into text ---------------------------------------------------------------


def _number(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _preview_value(prop: dict) -> str:
    kind = prop.get("type")
    value = prop.get("value", "")
    if kind == "string":
        return json.dumps(value, ensure_ascii=False)
    if kind == "object" and prop.get("subtype") != "null":
        return value or "{…}"
    return value


def _from_preview(preview: dict) -> str:
    """A JSON-like one-liner from an object preview (what Chrome sends anyway; no extra calls)."""
    props = preview.get("properties", ())
    more = ",…" if preview.get("overflow") else ""
    if preview.get("subtype") == "array":
        return "[" + ",".join(_preview_value(p) for p in props) + more + "]"
    return "{" + ",".join(f"{json.dumps(p.get('name', ''))}:{_preview_value(p)}" for p in props) + more + "}"


def describe(value: dict) -> str:
    """A console argument (a CDP RemoteObject) as text, from what the event already carries."""
    if "unserializableValue" in value:
        return value["unserializableValue"]
    kind = value.get("type")
    if kind == "string":
        return value.get("value", "")
    if kind in ("number", "boolean"):
        return _number(value.get("value"))
    if kind == "undefined":
        return "undefined"
    subtype = value.get("subtype")
    if subtype == "null":
        return "null"
    preview = value.get("preview")
    if kind == "object" and preview and (subtype == "array" or value.get("className") == "Object"):
        return _from_preview(preview)
    return value.get("description") or value.get("className") or kind or "?"


def substituted(args: list[dict]) -> str | None:
    """The text of a console call whose first argument has format specifiers (%s, %d, %o, %c...)."""
    if not args or args[0].get("type") != "string" or "%" not in args[0].get("value", ""):
        return None
    rest = list(args[1:])

    def replace(match: re.Match) -> str:
        spec = match.group(0)
        if spec == "%%":
            return "%"
        if not rest:
            return spec
        arg = rest.pop(0)
        if spec == "%c":
            return ""
        if spec in ("%d", "%i") and arg.get("type") == "number":
            return str(int(arg.get("value", 0)))
        return describe(arg)

    return " ".join([_FORMAT.sub(replace, args[0]["value"]), *(describe(a) for a in rest)])


def _frames(stack_trace: dict | None) -> tuple[tuple[str, ...], int]:
    """Stack frames as text (1-based positions), at most MAX_FRAMES, and how many were left out."""
    frames = (stack_trace or {}).get("callFrames", ())
    lines = tuple(
        f"at {frame.get('functionName') or '<anonymous>'} "
        f"({clip(frame.get('url', ''), MAX_FIELD)}:{frame.get('lineNumber', 0) + 1}:{frame.get('columnNumber', 0) + 1})"
        for frame in frames[:MAX_FRAMES]
    )
    return lines, max(0, len(frames) - MAX_FRAMES)


# -- the listener ---------------------------------------------------------------------------------


class PageRecords:
    """One page's console messages and network requests, fed by its CDP events."""

    def __init__(self, collector: "Collector", budget: Budget | None = None):
        self._collector = collector
        self.console = Journal(collector.max_messages, collector.max_bytes, budget=budget)
        self.network = Journal(collector.max_requests, collector.max_bytes, self._forget_request, budget)
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
            _frames(params.get("stackTrace")),
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
        self._add_message("error", [], text, _frames(details.get("stackTrace")))

    def _log_entry_added(self, _: str, params: dict) -> None:
        entry = params.get("entry", {})
        if not self._fresh(entry.get("timestamp")):
            return
        level = entry.get("level", "info")
        stack = _frames(entry.get("stackTrace"))
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
        self.network.charge(request, _headers_size(headers) - _headers_size(request.response_headers))
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
        request = self._requests.get(params.get("requestId"))
        if not params.get("headers"):
            return
        if request is None or request.raw_request_headers or (request.status is not None and not request.finished):
            # Before its request, for the next hop of a redirect that is not known yet, or late
            # for this hop: `_loading_finished` settles which (no hop follows a finished one).
            self._keep_early("request", params.get("requestId"), params["headers"])
            return
        request.raw_request_headers = True
        # The headers as sent, including the Cookie header the main event leaves out.
        headers = self._headers(params["headers"])
        self.network.charge(request, _headers_size(headers) - _headers_size(request.request_headers))
        request.request_headers = headers

    def _response_received(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId"))
        if request is not None:
            self._set_response(request, params.get("response", {}))
            request.extra_info_due = bool(params.get("hasExtraInfo")) and not request.raw_response_headers

    def _response_extra_info(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId"))
        if (request is None or request.status is None) and params.get("headers"):
            # Before the request or its response: applied when that comes (`_set_response`).
            self._keep_early("response", params.get("requestId"), params["headers"])
            return
        if request is not None and params.get("headers"):
            # The headers as received, including Set-Cookie; they win over the summary.
            self._replace_response_headers(request, self._headers(params["headers"]))
            request.raw_response_headers = True
            request.extra_info_due = False

    def _data_received(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId"))
        if request is not None:
            request.body_size += params.get("dataLength", 0)

    def _loading_finished(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId"))
        if request is not None:
            request.finished = True
            late = None if request.raw_request_headers else self._take_early("request", request.cdp_id)
            if late is not None:  # raw headers Chrome sent after the response: this hop's
                self._request_extra_info("", {"requestId": request.cdp_id, "headers": late})

    def _loading_failed(self, _: str, params: dict) -> None:
        request = self._requests.get(params.get("requestId"))
        if request is not None:
            request.finished = True
            request.failure = params.get("errorText") or ("canceled" if params.get("canceled") else "failed")


class Collector:
    """The page listener that collects console and network data (see the module docstring).

    ``redact_headers``: header names (lower case) whose values are replaced by
    ``<redacted>`` before they are stored; empty to keep every value.
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
            page.state.pop(PENDING_KEY, None)
            records = page.state.pop(STATE_KEY, None)
            if records is not None:
                records.release()
            return
        if event not in ("attached", "reattached"):
            return
        records = page.state.get(STATE_KEY)
        if records is not None:  # seen before the reconnect: collect on the new session too
            records.reattached()
            records.enable(page)
            return
        page.state[PENDING_KEY] = self
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
        records = page.state.get(STATE_KEY)
        if records is None and not page.closed:
            page.state.pop(PENDING_KEY, None)
            budget = self._budgets.get(page.browser)
            if budget is None:
                budget = self._budgets[page.browser] = Budget(self.max_browser_bytes)
            records = page.state[STATE_KEY] = PageRecords(self, budget)
            records.subscribe(page)
            records.enable(page)
        return records


def make_visible(page) -> None:
    """A caller may now see ``page``: start collecting for it, if a `Collector` waits to."""
    collector = page.state.get(PENDING_KEY)
    if collector is not None:
        collector.start(page)


def _log_enable_failure(failure, page, method: str) -> None:
    log.info(
        "Collecting on page {page_id}: {method} failed: {error}",
        page_id=page.page_id,
        method=method,
        error=failure.getErrorMessage(),
    )


def records_of(page) -> PageRecords:
    """The page's collected data; ToolError when collection is not running for it."""
    records = page.state.get(STATE_KEY)
    if records is None:
        raise ToolError(
            f"Console and network collection is not running for page {page.page_id}; "
            "this server was started without the collector. Ask its operator."
        )
    return records


async def collected(source, clock) -> PageRecords:
    """`records_of` ``source`` (a page or worker) once collection that just started caught up."""
    return await records_of(source).ready(clock)


def whole_id(value: float, name: str) -> int:
    """A ``msgid``/``reqid`` argument (a JSON number) as an int; ToolError when it has a fraction."""
    if not float(value).is_integer():
        raise ToolError(f'Invalid argument "{name}": expected a whole number, got {value}.')
    return int(value)


# -- paging, shared by the list tools -------------------------------------------------------------

PAGINATION_SCHEMA = {
    "type": "object",
    "properties": {
        "currentPage": {"type": "integer"},
        "totalPages": {"type": "integer"},
        "hasNextPage": {"type": "boolean"},
        "hasPreviousPage": {"type": "boolean"},
        "startIndex": {"type": "integer"},
        "endIndex": {"type": "integer"},
        "invalidPage": {"type": "boolean"},
    },
    "required": ["currentPage", "totalPages", "hasNextPage", "hasPreviousPage", "startIndex", "endIndex"],
}
DEFAULT_PAGE_SIZE = 20


def paging_schema(what: str) -> dict[str, dict]:
    """The ``pageSize`` and ``pageIdx`` parameters of a list tool."""
    return {
        "pageSize": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SAFE_INTEGER,
            "description": f"How many {what} to return per page. Absent: all of them.",
        },
        "pageIdx": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_SAFE_INTEGER,
            "description": "Which page to return, counting from 0. Absent: the first.",
        },
    }


def listed(
    journal: Journal, args: dict, *, preserved: str, types: str, type_of: Callable[[object], str], what: str
) -> tuple[list, list[str], dict] | None:
    """A list tool's page of ``journal``: the current navigation's entries (every kept one's
    when ``args[preserved]``), only of the types ``args[types]`` names, paged by ``pageSize``
    and ``pageIdx``: `paginate`'s three values, its lines also telling how many ``what``
    were dropped for room. None when no entry matches."""
    keep_all = bool(args.get(preserved))
    entries = journal.entries(keep_all)
    wanted = set(args.get(types) or ())
    if wanted:
        entries = [entry for entry in entries if type_of(entry) in wanted]
    if not entries:
        return None
    chosen, lines, pagination = paginate(entries, args.get("pageSize"), args.get("pageIdx"))
    dropped = journal.dropped(keep_all)
    if dropped:
        lines.append(f"{dropped} older {what} dropped to bound memory ({journal.limits()}).")
    return chosen, lines, pagination


def paginate(items: list, page_size: float | None, page_idx: float | None) -> tuple[list, list[str], dict]:
    """One page of ``items``: the items, the text lines describing the page, and ``pagination``."""
    total = len(items)
    paged = page_size is not None or page_idx is not None
    size = int(page_size) if page_size is not None else (DEFAULT_PAGE_SIZE if paged else max(total, 1))
    pages = max(1, -(-total // size))
    current = 0 if page_idx is None else int(page_idx)
    invalid = current >= pages
    if invalid:
        current = 0
    start = current * size
    chosen = items[start : start + size]
    lines = ["Invalid page number provided. Showing first page."] if invalid else []
    lines.append(f"Showing {start + 1}-{start + len(chosen)} of {total} (Page {current + 1} of {pages}).")
    if paged and current < pages - 1:
        lines.append(f"Next page: {current + 1}")
    if paged and current > 0:
        lines.append(f"Previous page: {current - 1}")
    pagination = {
        "currentPage": current,
        "totalPages": pages,
        "hasNextPage": current < pages - 1,
        "hasPreviousPage": current > 0,
        "startIndex": start,
        "endIndex": start + len(chosen),
        "invalidPage": invalid,
    }
    return chosen, lines, pagination
