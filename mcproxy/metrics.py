"""Prometheus metrics of one daemon, on a registry of its own.

Each `Metrics` has its own `CollectorRegistry`, so several services in one process (the
test suite) never clash. Labels come from small fixed sets: a raw path, a made-up tool
name or an unexpected reason is folded into ``other``/``unknown``, never a new series,
and no label ever names a user or a session.
"""

import weakref
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

ROUTES = frozenset({"/mcp", "/sse", "/message", "/health", "/metrics", "/admin"})
API_ROUTES = frozenset({"tokens", "register", "users", "admin"})
AUTH_REASONS = frozenset({"missing", "invalid", "expired", "revoked", "forbidden", "timeout"})
RATE_LIMIT_KINDS = frozenset({"address", "user", "endpoint", "tool"})
TOOL_OUTCOMES = frozenset({"ok", "error", "denied", "unknown_tool", "rate_limited", "cancelled", "internal_error"})
TIMED_OUTCOMES = frozenset({"ok", "error", "cancelled", "internal_error"})
TOOL_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REFRESH_TIMEOUT = 5.0

SessionCounts = Callable[[], Mapping[tuple[str, str], int]]
StatusCounts = Callable[[], Mapping[str, int]]


def route_label(path: bytes | str) -> str:
    """The route label of a request path: one of a fixed set, never the raw path."""
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    segments = [s for s in path.split("?", 1)[0].split("/") if s]
    if not segments:
        return "other"
    first = "/" + segments[0]
    if first in ROUTES:
        return first
    if first == "/api" and len(segments) > 1 and segments[1] in API_ROUTES:
        return f"/api/{segments[1]}"
    return "other"


def _bounded(value: str, allowed: frozenset[str], fallback: str = "other") -> str:
    return value if value in allowed else fallback


def connections_dropped(registry: CollectorRegistry | None) -> Counter:
    """``mcproxy_connections_dropped_total{reason}``, counted by the HTTP listeners themselves
    (`mcproxy.web.site.ProxySite`), which exist apart from any `Metrics` in tests."""
    return Counter(
        "mcproxy_connections_dropped",
        "Connections closed for a slow request head or body, or refused over the per-address cap.",
        ("reason",),
        registry=registry,
    )


class _LiveGauges:
    """Gauges read at scrape time from the live registries (sessions, browsers)."""

    def __init__(self, sessions: SessionCounts, browsers: StatusCounts):
        self._sessions = sessions
        self._browsers = browsers

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "mcproxy_sessions_active",
                "MCP sessions open now, by transport and protocol revision.",
                labels=("transport", "protocol"),
            ),
            GaugeMetricFamily(
                "mcproxy_browser_connections",
                "Users' browser connections, by status.",
                labels=("status",),
            ),
        )

    def describe(self):
        """Names only: registering must not call into the registries."""
        return self._families()

    def collect(self):
        sessions, browsers = self._families()
        for (transport, protocol), count in sorted(self._sessions().items()):
            sessions.add_metric((transport, protocol), count)
        for status, count in sorted(self._browsers().items()):
            browsers.add_metric((status,), count)
        return sessions, browsers


class Metrics(Service):
    """Every metric of the daemon; the rest of the code reports through these methods.

    ``sessions()`` maps ``(transport, protocol revision)`` to open sessions, ``browsers()``
    maps status to connections (`BrowserPool.status_counts`); both are read at scrape time.
    ``registered_users()`` is async (it asks the store), so `refresh` caches its answer;
    the ``/metrics`` resource refreshes before every scrape.
    """

    def __init__(
        self,
        clock,
        *,
        sessions: SessionCounts = dict,
        browsers: StatusCounts = dict,
        registered_users: Callable[[], Coroutine[Any, Any, int]] | None = None,
        lag_interval: float = 1.0,
    ):
        self.clock = clock
        self.registry = registry = CollectorRegistry()
        self._registered_users = registered_users
        self._lag_interval = lag_interval
        self._lag_loop: LoopingCall | None = None
        self._lag_expected = 0.0
        #: Labelled children by (metric, labels): prometheus_client looks a child up under a
        #: lock on every ``labels()`` call; the labels here are few and bounded.
        self._children: dict[tuple, Any] = {}
        registry.register(_LiveGauges(sessions, browsers))
        self.users_registered = Gauge("mcproxy_users_registered", "Users with a registered browser.", registry=registry)
        self.reconnects = Counter(
            "mcproxy_browser_reconnects", "Attempts to reconnect to a user's browser.", registry=registry
        )
        self.tool_calls = Counter(
            "mcproxy_tool_calls", "Tool calls by tool and outcome.", ("tool", "outcome"), registry=registry
        )
        self.tool_duration = Histogram(
            "mcproxy_tool_call_duration_seconds",
            "How long tool calls take, by tool.",
            ("tool",),
            buckets=TOOL_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("mcproxy_tool_calls_in_flight", "Tool calls running now.", registry=registry)
        self.http_requests = Counter(
            "mcproxy_http_requests", "HTTP requests by route and status code.", ("route", "code"), registry=registry
        )
        self.auth_failures = Counter(
            "mcproxy_auth_failures", "Refused credentials by reason.", ("reason",), registry=registry
        )
        self.rate_limited_requests = Counter(
            "mcproxy_rate_limited", "Requests refused by a rate limit, by kind of limit.", ("kind",), registry=registry
        )
        self.reactor_lag = Histogram(
            "mcproxy_reactor_lag_seconds",
            "How late a timer of the event loop fires: time the reactor spends blocked.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    # -- events -------------------------------------------------------------------

    def http_request(self, path: bytes | str, code: int) -> None:
        """Count one answered request; ``path`` is folded into a route label here."""
        self._child(self.http_requests, route_label(path), code).inc()

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(_bounded(reason, AUTH_REASONS)).inc()

    def rate_limited(self, kind: str) -> None:
        """`RequestLimits` ``on_limited`` observer: kind is address, user, endpoint or tool."""
        self.rate_limited_requests.labels(_bounded(kind, RATE_LIMIT_KINDS)).inc()

    def reconnect_attempt(self) -> None:
        self.reconnects.inc()

    def tool_call_started(self, tool: str) -> None:
        """`ToolRegistry` ``on_call_started`` observer."""
        self.in_flight.inc()

    def tool_call_finished(self, record) -> None:
        """`ToolRegistry` ``on_call_finished`` observer (a `ToolCallRecord`).

        A name that is no tool counts as ``unknown``; only calls that ran are timed, so
        refusals do not pull the latency down.
        """
        self.in_flight.dec()
        tool = "unknown" if record.outcome == "unknown_tool" else record.tool
        self._child(self.tool_calls, tool, _bounded(record.outcome, TOOL_OUTCOMES)).inc()
        if record.outcome in TIMED_OUTCOMES:
            self._child(self.tool_duration, tool).observe(record.duration)

    def _child(self, metric, *labels) -> Any:
        """``metric.labels(*labels)``, looked up once."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*map(str, labels))
        return child

    # -- wrappers the service puts around its parts --------------------------------

    def counting_reconnects(self, open_link: Callable) -> Callable:
        """A `BrowserPool` ``open_link`` that counts every attempt after a browser's first."""
        tried: weakref.WeakSet = weakref.WeakSet()

        def counted(browser):
            if browser in tried:
                self.reconnect_attempt()
            else:
                tried.add(browser)
            return open_link(browser)

        return counted

    # -- refresh and the reactor lag loop -------------------------------------------

    async def refresh(self) -> None:
        """Ask for the values that need I/O (registered users); keep the old ones on failure."""
        if self._registered_users is None:
            return
        try:
            asked = ensureDeferred(self._registered_users())
            count = await asked.addTimeout(REFRESH_TIMEOUT, self.clock)
        except Exception as e:
            log.warn("Could not count registered users for /metrics ({error}); the last value stays", error=repr(e))
            return
        self.users_registered.set(count)

    def startService(self) -> None:
        """Start measuring reactor lag."""
        super().startService()
        if self._lag_loop is None:
            self._lag_loop = LoopingCall.withCount(self._lag_tick)
            self._lag_loop.clock = self.clock
            self._lag_expected = self.clock.seconds()
            self._lag_loop.start(self._lag_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._lag_loop is not None and self._lag_loop.running:
            self._lag_loop.stop()
        self._lag_loop = None

    def _lag_tick(self, intervals: int) -> None:
        """LoopingCall skips missed beats; ``intervals`` says how many passed since the last."""
        self._lag_expected += intervals * self._lag_interval
        self.reactor_lag.observe(max(0.0, self.clock.seconds() - self._lag_expected))
