"""Metrics: names and labels, the tool/auth/reconnect hooks, reactor lag, /metrics permissions, etc/ files."""

import json
import os
import re

import pytest
import pytest_twisted
import treq
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from mcproxy.auth.admission import Admission
from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.principal import Principal
from mcproxy.auth.ratelimit import RequestLimits
from mcproxy.auth.tokens import TokenAuthenticator, create_token
from mcproxy.config import RateLimitConfig, ToolsConfig
from mcproxy.errors import Forbidden, RateLimited, ToolError, Unauthorized
from mcproxy.metrics import Metrics, route_label
from mcproxy.storage import open_store
from mcproxy.testing.requests import FakeRequest
from mcproxy.testing.tool_calls import make_context
from mcproxy.tools.registry import ToolCallRecord, ToolRegistry
from mcproxy.web.metrics import MetricsEndpoint
from mcproxy.web.routes import Router
from mcproxy.web.site import ProxySite

ETC = os.path.join(os.path.dirname(__file__), "..", "etc")
FIXED_NAMES = {
    "mcproxy_sessions_active": "gauge",
    "mcproxy_browser_connections": "gauge",
    "mcproxy_tool_calls": "counter",
    "mcproxy_tool_call_duration_seconds": "histogram",
    "mcproxy_http_requests": "counter",
    "mcproxy_auth_failures": "counter",
    "mcproxy_rate_limited": "counter",
    "mcproxy_users_registered": "gauge",
    "mcproxy_browser_reconnects": "counter",
    "mcproxy_tool_calls_in_flight": "gauge",
    "mcproxy_reactor_lag_seconds": "histogram",
}


def scrape(metrics: Metrics) -> dict:
    """The registry's exposition, parsed: family name -> family."""
    text = generate_latest(metrics.registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(metrics: Metrics, sample_name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(sample_name, labels)


def test_every_metric_has_its_fixed_name_and_type():
    families = scrape(Metrics(Clock()))
    assert {name: families[name].type for name in FIXED_NAMES} == FIXED_NAMES


def test_two_services_in_one_process_do_not_clash():
    first, second = Metrics(Clock()), Metrics(Clock())
    first.auth_failure("missing")
    assert value(first, "mcproxy_auth_failures_total", reason="missing") == 1
    assert value(second, "mcproxy_auth_failures_total", reason="missing") is None


def test_live_gauges_are_read_at_scrape_time():
    sessions = {("sse", "2024-11-05"): 1, ("streamable", "2025-11-25"): 2}
    browsers = {"connected": 3, "failed": 1}
    metrics = Metrics(Clock(), sessions=lambda: sessions, browsers=lambda: browsers)
    assert value(metrics, "mcproxy_sessions_active", transport="streamable", protocol="2025-11-25") == 2
    sessions[("streamable", "2025-11-25")] = 5
    browsers["connected"] = 0
    assert value(metrics, "mcproxy_sessions_active", transport="streamable", protocol="2025-11-25") == 5
    assert value(metrics, "mcproxy_sessions_active", transport="sse", protocol="2024-11-05") == 1
    assert value(metrics, "mcproxy_browser_connections", status="connected") == 0
    assert value(metrics, "mcproxy_browser_connections", status="failed") == 1


@pytest.mark.parametrize(
    "path, route",
    [
        (b"/mcp", "/mcp"),
        (b"/sse", "/sse"),
        (b"/message?sessionId=abc", "/message"),
        (b"/health/", "/health"),
        (b"/metrics", "/metrics"),
        (b"/api/users/alice/status", "/api/users"),
        (b"/api/tokens/0123456789abcdef/rotate", "/api/tokens"),
        (b"/api/register", "/api/register"),
        (b"/api/secret-thing", "other"),
        (b"/", "other"),
        (b"/users/alice", "other"),
        ("/admin/", "/admin"),
    ],
)
def test_routes_are_a_fixed_set_never_raw_paths(path, route):
    assert route_label(path) == route


def test_http_requests_are_counted_by_route_and_code():
    metrics = Metrics(Clock())
    metrics.http_request(b"/api/users/alice/status", 200)
    metrics.http_request(b"/api/users/bob/status", 200)
    metrics.http_request(b"/nowhere/alice", 404)
    assert value(metrics, "mcproxy_http_requests_total", route="/api/users", code="200") == 2
    assert value(metrics, "mcproxy_http_requests_total", route="other", code="404") == 1
    assert "alice" not in str(scrape(metrics))


def finished(tool, outcome, duration=0.1) -> ToolCallRecord:
    return ToolCallRecord(
        tool=tool,
        arguments={},
        context=make_context(),
        outcome=outcome,
        duration=duration,
        browser_url=None,
        sensitive=frozenset(),
    )


def test_tool_calls_are_counted_and_timed_by_outcome():
    metrics = Metrics(Clock())
    for _ in range(3):
        metrics.tool_call_started("click")
    assert value(metrics, "mcproxy_tool_calls_in_flight") == 3
    metrics.tool_call_finished(finished("click", "ok", 0.3))
    metrics.tool_call_finished(finished("click", "error", 0.1))
    metrics.tool_call_finished(finished("click", "denied", 0.0))
    assert value(metrics, "mcproxy_tool_calls_in_flight") == 0
    for outcome in ("ok", "error", "denied"):
        assert value(metrics, "mcproxy_tool_calls_total", tool="click", outcome=outcome) == 1
    assert value(metrics, "mcproxy_tool_call_duration_seconds_count", tool="click") == 2  # refusals are not timed
    assert value(metrics, "mcproxy_tool_call_duration_seconds_sum", tool="click") == pytest.approx(0.4)
    assert value(metrics, "mcproxy_tool_call_duration_seconds_bucket", tool="click", le="0.25") == 1


def test_made_up_tool_names_and_outcomes_create_no_series():
    metrics = Metrics(Clock())
    metrics.tool_call_started("no_such_tool_abc")
    metrics.tool_call_finished(finished("no_such_tool_abc", "unknown_tool"))
    metrics.tool_call_started("click")
    metrics.tool_call_finished(finished("click", "exploded"))
    assert value(metrics, "mcproxy_tool_calls_total", tool="unknown", outcome="unknown_tool") == 1
    assert value(metrics, "mcproxy_tool_calls_total", tool="click", outcome="other") == 1
    assert "no_such_tool_abc" not in str(scrape(metrics))


@pytest_twisted.ensureDeferred
async def test_a_real_tool_registry_reports_its_calls():
    metrics = Metrics(Clock())

    async def no_browser(user_id):
        raise ToolError("no browser here")

    registry = ToolRegistry(
        no_browser,
        ToolsConfig(),
        Clock(),
        on_call_started=[metrics.tool_call_started],
        on_call_finished=[metrics.tool_call_finished],
    )
    context = make_context()
    assert (await registry.call_tool("list_pages", {}, context))["isError"]
    assert (await registry.call_tool("made_up", {}, context))["isError"]
    assert value(metrics, "mcproxy_tool_calls_total", tool="list_pages", outcome="error") == 1
    assert value(metrics, "mcproxy_tool_calls_total", tool="unknown", outcome="unknown_tool") == 1
    assert value(metrics, "mcproxy_tool_calls_in_flight") == 0


@pytest_twisted.ensureDeferred
async def test_auth_failures_are_counted_by_reason():
    metrics = Metrics(Clock())
    errors = [Unauthorized("x", reason="expired"), Unauthorized("x", reason="made-up"), Forbidden("no")]

    async def authenticate(request):
        raise errors.pop(0)

    admission = Admission(authenticate, refused=metrics.auth_failure)
    for expected in (Unauthorized, Unauthorized, Forbidden):
        with pytest.raises(expected):
            await admission.authenticate(FakeRequest([b""]), "admin")
    for reason in ("expired", "other", "forbidden"):
        assert value(metrics, "mcproxy_auth_failures_total", reason=reason) == 1

    async def fine(request):
        return Principal("alice", frozenset())

    principal = await Admission(fine, refused=metrics.auth_failure).authenticate(FakeRequest([b""]), "admin")
    assert principal.user_id == "alice"


def test_rate_limits_are_counted_by_kind():
    metrics = Metrics(Clock())
    limits = RequestLimits(Clock(), RateLimitConfig(user_rate=1, user_burst=1), on_limited=metrics.rate_limited)
    limits.check_user("alice", "mcp")
    with pytest.raises(RateLimited):
        limits.check_user("alice", "mcp")
    metrics.rate_limited("session-abc")
    assert value(metrics, "mcproxy_rate_limited_total", kind="user") == 1
    assert value(metrics, "mcproxy_rate_limited_total", kind="other") == 1


def test_reconnects_count_every_attempt_after_a_browsers_first():
    metrics = Metrics(Clock())

    class Browser:
        pass

    opened = []
    open_link = metrics.counting_reconnects(lambda browser: opened.append(browser) or "link")
    alice, bob = Browser(), Browser()
    assert open_link(alice) == "link"
    open_link(bob)
    assert value(metrics, "mcproxy_browser_reconnects_total") == 0
    open_link(alice)
    open_link(alice)
    assert value(metrics, "mcproxy_browser_reconnects_total") == 2
    assert opened == [alice, bob, alice, alice]


def test_reactor_lag_is_how_late_the_timer_fires():
    clock = Clock()
    metrics = Metrics(clock, lag_interval=1.0)
    metrics.startService()
    clock.advance(1.0)  # on time
    clock.advance(1.3)  # due at 2.0, fires at 2.3
    clock.advance(2.9)  # due at 3.0 (4.0 skipped), fires at 5.2
    assert value(metrics, "mcproxy_reactor_lag_seconds_count") == 3
    assert value(metrics, "mcproxy_reactor_lag_seconds_sum") == pytest.approx(0.3 + 0.2)
    assert value(metrics, "mcproxy_reactor_lag_seconds_bucket", le="0.25") == 2
    metrics.stopService()
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_registered_users_come_from_the_store_and_survive_its_failure():
    answers: list = [succeed(4), fail(RuntimeError("store away"))]
    metrics = Metrics(Clock(), registered_users=lambda: answers.pop(0))
    await metrics.refresh()
    assert value(metrics, "mcproxy_users_registered") == 4
    with capturedLogs() as events:
        await metrics.refresh()
    assert value(metrics, "mcproxy_users_registered") == 4
    assert [e["log_level"].name for e in events] == ["warn"]
    assert "store away" in events[0]["error"]


# -- the /metrics resource ------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def scrape_target(reactor, tmp_path):
    """A /metrics resource behind real token authentication, on a loopback port.

    Yields ``serve(allowed_networks) -> base URL`` and the tokens by name.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    store = await open_store("memory:", reactor)
    tokens = {}
    for name, permissions in {
        "metrics": ["metrics"],
        "admin": ["admin"],
        "tools": ["tools:*", "register"],
    }.items():
        tokens[name], _ = await create_token(store, name, permissions, None, reactor)
    chain = AuthenticationChain([TokenAuthenticator(store, reactor)], "tokens", reactor)
    admission = Admission(chain.authenticate).authenticate
    metrics = Metrics(reactor, browsers=lambda: {"connected": 1}, registered_users=lambda: succeed(7))
    metrics.auth_failure("missing")
    ports = []

    async def serve(allowed_networks=()):
        root = Router({b"metrics": MetricsEndpoint(metrics, allowed_networks).area()}, authenticate=admission)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(ProxySite(root, max_body_bytes=1000))
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}/metrics"

    yield serve, tokens
    for port in ports:
        await port.stopListening()
    await store.close()


async def get(url, token=None, method="GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await treq.request(method, url, headers=headers, persistent=False)
    return response, await response.content()


def assert_scraped(response, body):
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == [CONTENT_TYPE_LATEST]
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert set(FIXED_NAMES) <= set(families)
    assert families["mcproxy_users_registered"].samples[0].value == 7
    assert {s.labels["status"]: s.value for s in families["mcproxy_browser_connections"].samples} == {"connected": 1}


def assert_json_error(response, body, status, code):
    assert response.code == status
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    assert json.loads(body)["error"]["code"] == code
    assert b"mcproxy_" not in body


@pytest_twisted.ensureDeferred
async def test_scrape_without_a_credential_is_refused(scrape_target):
    serve, _ = scrape_target
    response, body = await get(await serve())
    assert_json_error(response, body, 401, "unauthorized")
    assert response.headers.getRawHeaders("www-authenticate")[0].startswith("Bearer")


@pytest_twisted.ensureDeferred
async def test_scrape_with_a_bad_token_is_refused(scrape_target):
    serve, _ = scrape_target
    response, body = await get(await serve(), token="mcpx_0123456789abcdef_" + "x" * 43)
    assert_json_error(response, body, 401, "unauthorized")


@pytest_twisted.ensureDeferred
async def test_scrape_without_the_metrics_permission_is_forbidden(scrape_target):
    serve, tokens = scrape_target
    response, body = await get(await serve(), token=tokens["tools"])
    assert_json_error(response, body, 403, "forbidden")
    assert "metrics" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("who", ["metrics", "admin"])
@pytest_twisted.ensureDeferred
async def test_scrape_with_metrics_or_admin_permission(scrape_target, who):
    serve, tokens = scrape_target
    assert_scraped(*await get(await serve(), token=tokens[who]))


@pytest_twisted.ensureDeferred
async def test_scrape_from_an_allowed_network_needs_no_credential(scrape_target):
    serve, _ = scrape_target
    assert_scraped(*await get(await serve(["10.0.0.0/8", "127.0.0.0/8"])))


@pytest_twisted.ensureDeferred
async def test_allowed_networks_that_do_not_hold_the_client_still_need_a_credential(scrape_target):
    serve, tokens = scrape_target
    url = await serve(["10.0.0.0/8", "::1/128"])
    assert_json_error(*await get(url), 401, "unauthorized")
    assert_scraped(*await get(url, token=tokens["metrics"]))


@pytest_twisted.ensureDeferred
async def test_scrape_only_answers_get(scrape_target):
    serve, tokens = scrape_target
    response, body = await get(await serve(), token=tokens["admin"], method="POST")
    assert_json_error(response, body, 405, "method_not_allowed")
    assert response.headers.getRawHeaders("allow") == ["GET"]


# -- etc/: the Grafana dashboard and the alert rules -----------------------------------

METRIC_NAME = re.compile(r"\bmcproxy_[a-z_]+")


def exposed_series_names() -> set[str]:
    """Every sample name the daemon's registry can produce (with _total, _bucket, ...)."""
    metrics = Metrics(Clock(), sessions=lambda: {("sse", "2024-11-05"): 1}, browsers=lambda: {"connected": 1})
    metrics.tool_call_started("click")
    metrics.tool_call_finished(finished("click", "ok"))
    metrics.http_request(b"/mcp", 200)
    metrics.auth_failure("missing")
    metrics.rate_limited("user")
    metrics.reconnect_attempt()
    metrics.reactor_lag.observe(0.01)
    return {sample.name for family in scrape(metrics).values() for sample in family.samples}


def test_grafana_dashboard_is_valid_json_using_real_metric_names():
    with open(os.path.join(ETC, "grafana", "mcproxy-dashboard.json")) as f:
        dashboard = json.load(f)
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used <= exposed_series_names()
    assert {
        "mcproxy_sessions_active",
        "mcproxy_tool_call_duration_seconds_bucket",
        "mcproxy_reactor_lag_seconds_bucket",
    } <= used
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def read_alert_rules() -> list[dict]:
    """The rules of etc/prometheus/mcproxy-alerts.yml.

    PyYAML is not a dependency, so this reads the file's deliberately simple layout
    (groups > rules > alert/expr/for, labels and annotations one level deeper) and fails
    on anything else, which keeps the file in that layout.
    """
    rules: list[dict] = []
    section = None
    with open(os.path.join(ETC, "prometheus", "mcproxy-alerts.yml")) as f:
        lines = [line.rstrip("\n") for line in f if line.strip() and not line.lstrip().startswith("#")]
    assert lines[:3] == ["groups:", "  - name: mcproxy", "    rules:"]
    for line in lines[3:]:
        assert "\t" not in line
        if match := re.fullmatch(r"      - alert: (\w+)", line):
            rules.append({"alert": match.group(1), "labels": {}, "annotations": {}})
        elif match := re.fullmatch(r"        (expr|for): (.+)", line):
            rules[-1][match.group(1)] = match.group(2)
        elif match := re.fullmatch(r"        (labels|annotations):", line):
            section = match.group(1)
        elif match := re.fullmatch(r'          (\w+): (?:"([^"]*)"|([\w.-]+))', line):
            rules[-1][section][match.group(1)] = match.group(2) if match.group(2) is not None else match.group(3)
        else:
            raise AssertionError(f"unexpected line in the alert rules: {line!r}")
    return rules


def test_alert_rules_cover_the_operational_risks_with_real_metric_names():
    rules = read_alert_rules()
    by_name = {rule["alert"]: rule for rule in rules}
    assert len(by_name) == len(rules)
    for rule in rules:
        assert rule["expr"] and rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")")
    used = {name for rule in rules for name in METRIC_NAME.findall(rule["expr"])}
    assert used <= exposed_series_names()
    assert "failed" in by_name["McproxyBrowserConnectionsFailed"]["expr"]
    assert "mcproxy_tool_calls_total" in by_name["McproxyHighToolErrorRatio"]["expr"]
    assert "mcproxy_reactor_lag_seconds_bucket" in by_name["McproxyReactorLag"]["expr"]
    assert "mcproxy_auth_failures_total" in by_name["McproxyAuthFailureSpike"]["expr"]
