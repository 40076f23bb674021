"""Plugins: discovery through twisted.plugin, enabling by name, settings, start failures,
guarded hooks, and the three example plugins (tests/plugin_examples) on real requests."""

import json

import plugin_examples
import pytest
import pytest_twisted
import treq
from plugin_examples.call_counter import CallCounter
from plugin_examples.jsonl_audit import JsonLinesSink
from plugin_examples.sso import SsoHeaderAuthenticator
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from mcproxy.auth.admission import Admission
from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.principal import Principal
from mcproxy.auth.tokens import TokenAuthenticator
from mcproxy.config import Config, ConfigError, ToolsConfig
from mcproxy.metrics import Metrics
from mcproxy.plugins import (
    LoadedPlugin,
    PluginError,
    Plugins,
    discover,
    find_plugins,
    load_plugins,
    parse_settings,
)
from mcproxy.session.registry import SessionRegistry
from mcproxy.storage.memory import MemoryStore
from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.tool_calls import make_context
from mcproxy.tools.registry import ToolCallRecord, ToolRegistry
from mcproxy.web.front import build_router
from mcproxy.web.origins import OriginPolicy
from mcproxy.web.site import ProxySite
from mcproxy.web.transports import McpTransports

EXAMPLES = ("sso-header", "jsonl-audit", "call-counter")


def load(enabled, settings=(), metrics=None, clock=None):
    clock = clock or Clock()
    return load_plugins(
        enabled, Config(), MemoryStore(), clock, metrics or Metrics(clock), package=plugin_examples, settings=settings
    )


def example_settings(tmp_path, trusted="127.0.0.0/8 ::1/128"):
    return [
        f"sso-header.trusted_proxies={trusted}",
        "sso-header.permissions=tools:list_pages",
        f"jsonl-audit.path={tmp_path / 'plugin-audit.jsonl'}",
    ]


# -- discovery and loading ------------------------------------------------------------


def test_discovery_finds_one_plugin_of_each_kind_in_the_example_package():
    found = discover(plugin_examples)
    assert sorted(found) == sorted(EXAMPLES)
    assert [type(plugins[0]).__name__ for name, plugins in sorted(found.items())] == [
        "CallCounterPlugin",
        "JsonLinesAuditPlugin",
        "SsoHeaderPlugin",
    ]


def test_a_module_dropped_into_twisted_plugins_is_discovered_by_default(tmp_path, monkeypatch):
    """Twisted's convention: an installed package ships a module in twisted/plugins/."""
    import twisted.plugins

    dropins = tmp_path / "twisted" / "plugins"
    dropins.mkdir(parents=True)
    (dropins / "mcproxy_dropped.py").write_text(
        "from plugin_examples.call_counter import CallCounterPlugin\n"
        "class Dropped(CallCounterPlugin):\n"
        "    name = 'dropped-counter'\n"
        "dropped = Dropped()\n"
    )
    assert "dropped-counter" not in discover()
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(dropins)])
    [plugin] = find_plugins(["dropped-counter"])
    assert type(plugin).__name__ == "Dropped"
    assert "sso-header" not in discover()  # the example package is not installed


def test_two_plugins_with_one_name_refuse_that_name_and_bad_names_are_ignored(tmp_path, monkeypatch):
    import twisted.plugins

    dropins = tmp_path / "twisted" / "plugins"
    dropins.mkdir(parents=True)
    for module, name in (("first", "clash"), ("second", "clash"), ("third", "Bad Name")):
        (dropins / f"mcproxy_{module}.py").write_text(
            "from plugin_examples.call_counter import CallCounterPlugin\n"
            f"class Dropped(CallCounterPlugin):\n    name = {name!r}\n"
            "dropped = Dropped()\n"
        )
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(dropins)])
    with capturedLogs() as events:
        found = discover()
    assert len(found["clash"]) == 2 and "Bad Name" not in found
    assert any("Ignoring the mcproxy plugin" in e["log_format"] for e in events)
    with pytest.raises(PluginError) as caught:
        find_plugins(["clash"])
    assert str(caught.value) == "plugins.enabled: 2 installed plugins are named 'clash'; uninstall all but one"


def test_enabling_by_name_builds_each_kind_in_order(tmp_path):
    plugins = load(["call-counter", "sso-header", "jsonl-audit"], example_settings(tmp_path))
    assert [(p.name, p.kind) for p in plugins.loaded] == [
        ("call-counter", "observer"),
        ("sso-header", "authenticator"),
        ("jsonl-audit", "audit sink"),
    ]
    [authenticator], [sink], [observer] = plugins.authenticators, plugins.audit_sinks, plugins.observers
    assert isinstance(authenticator, SsoHeaderAuthenticator)
    assert isinstance(sink, JsonLinesSink)
    assert isinstance(observer, CallCounter)
    assert (tmp_path / "plugin-audit.jsonl").exists()


def test_nothing_enabled_scans_nothing():
    assert find_plugins([], package=object()) == []  # object() would break getPlugins
    assert load([]).loaded == ()


def test_an_unknown_name_fails_listing_the_installed_plugins():
    with pytest.raises(ConfigError) as caught:
        load(["sso-header", "ldap"], ["sso-header.trusted_proxies=10.0.0.0/8"])
    message = str(caught.value)
    assert message.startswith("plugins.enabled: no plugin named 'ldap' is installed; installed: ")
    for name in EXAMPLES:
        assert name in message
    assert "sso-header (authenticator: trusts a user header set by an SSO reverse proxy)" in message


@pytest.mark.parametrize(
    "enabled, settings, expected",
    [
        (["call-counter", "call-counter"], [], "plugins.enabled: 'call-counter' is listed twice"),
        (["sso-header"], [], "plugins.settings: sso-header.trusted_proxies: is required"),
        (["sso-header"], ["sso-header.trusted_proxies=10.0.0.0/33"], "sso-header.trusted_proxies: not a list of CIDR"),
        (
            ["sso-header"],
            ["sso-header.trusted=10.0.0.0/8"],
            "sso-header.trusted: unknown key (the plugin reads: trusted_proxies, header, permissions)",
        ),
        ([], ["call-counter.x=1"], "plugins.settings: call-counter.x: unknown key (the plugin reads: none)"),
        ([], ["ldap.url=ldap://x"], "plugins.settings: no plugin named 'ldap' is installed; installed: "),
        (
            [],
            ["sso-header trusted_proxies"],
            "plugins.settings: 'sso-header trusted_proxies' is not \"NAME.KEY=VALUE\"",
        ),
        ([], ["jsonl-audit.path=a", "jsonl-audit.path=b"], "plugins.settings: jsonl-audit.path is given twice"),
    ],
)
def test_bad_settings_fail_naming_the_key(enabled, settings, expected):
    with pytest.raises(PluginError) as caught:
        load(enabled, settings)
    assert expected in str(caught.value)


def test_a_make_that_fails_names_the_plugin(tmp_path):
    with pytest.raises(PluginError) as caught:
        load(["jsonl-audit"], [f"jsonl-audit.path={tmp_path / 'missing' / 'audit.jsonl'}"])
    assert str(caught.value).startswith("plugins.settings: jsonl-audit.path: cannot open ")
    metrics = Metrics(Clock())
    load(["call-counter"], metrics=metrics)
    with pytest.raises(PluginError) as caught:  # its counter is already in that registry
        load(["call-counter"], metrics=metrics)
    assert str(caught.value).startswith(
        "plugins.enabled: plugin 'call-counter' (observer) failed to build: DuplicateTimeseries("
    )


def test_settings_parse_lists_and_trim():
    assert parse_settings([" sso-header.permissions = tools:* register ", "jsonl-audit.path=/a=b"]) == {
        "sso-header": {"permissions": "tools:* register"},
        "jsonl-audit": {"path": "/a=b"},
    }


# -- the hooks ------------------------------------------------------------------------


class Broken:
    """An observer and audit sink whose every hook raises."""

    def __init__(self):
        self.stopped = False

    def tool_call_started(self, tool):
        raise RuntimeError("started")

    def tool_call_finished(self, record):
        raise RuntimeError("finished")

    def tool_call(self, record):
        raise RuntimeError("audit")

    def admin_action(self, *args):
        raise RuntimeError("admin")

    def http_request(self, route, code):
        raise RuntimeError("http")

    def start(self):
        raise RuntimeError("cannot reach the collector")

    def stop(self):
        self.stopped = True
        raise RuntimeError("stop")


def test_a_failing_hook_is_logged_and_the_others_still_run(tmp_path):
    good = load(["call-counter", "jsonl-audit"], [f"jsonl-audit.path={tmp_path / 'a.jsonl'}"])
    plugins = Plugins(
        [
            LoadedPlugin("broken", "observer", Broken()),
            LoadedPlugin("broken-sink", "audit sink", Broken()),
            *good.loaded,
        ]
    )
    counter = good.observers[0]
    record = ToolCallRecord("list_pages", {}, make_context(), "ok", 0.5, None, frozenset())
    admin_calls = []
    metrics = Metrics(Clock())
    with capturedLogs() as events:
        for hook in plugins.call_started_observers():
            hook("list_pages")
        for hook in plugins.call_finished_observers():
            hook(record)
        plugins.admin_audit(lambda *args: admin_calls.append(args))(
            Principal("root", frozenset({"admin"})), "127.0.0.1", "token.create", "alice", "ok"
        )
        plugins.site_metrics(metrics).http_request(b"/mcp?x=1", 200)
    failures = sorted((e["plugin"], e["hook"]) for e in events if e.get("log_failure"))
    assert failures == [
        ("broken", "http_request"),
        ("broken", "tool_call_finished"),
        ("broken", "tool_call_started"),
        ("broken-sink", "admin_action"),
        ("broken-sink", "tool_call"),
    ]
    assert counter.started == {"list_pages": 1}
    assert counter.finished == {("list_pages", "ok"): 1}
    assert counter.requests == {("/mcp", 200): 1}
    assert metrics.registry.get_sample_value("mcproxy_http_requests_total", {"route": "/mcp", "code": "200"}) == 1
    assert admin_calls == [(Principal("root", frozenset({"admin"})), "127.0.0.1", "token.create", "alice", "ok")]
    lines = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(line["event"], line.get("tool") or line.get("action")) for line in lines] == [
        ("tool_call", "list_pages"),
        ("admin", "token.create"),
    ]


def test_without_http_observers_the_site_gets_the_metrics_themselves():
    metrics = Metrics(Clock())
    assert load([]).site_metrics(metrics) is metrics


@pytest_twisted.ensureDeferred
async def test_start_failure_names_the_plugin_and_stop_reaches_every_plugin():
    broken = Broken()
    counter = load(["call-counter"])
    plugins = Plugins([*counter.loaded, LoadedPlugin("otel", "observer", broken)])
    with pytest.raises(PluginError) as caught:
        await plugins.start()
    assert str(caught.value) == "plugins.enabled: plugin 'otel' could not start: cannot reach the collector"
    assert counter.observers[0].running
    with capturedLogs() as events:
        await plugins.stop()
    assert broken.stopped and not counter.observers[0].running
    assert [e["plugin"] for e in events if e.get("log_failure")] == ["otel"]


# -- the example plugins on real requests ---------------------------------------------


async def serve_mcp(reactor, proxy, plugins, browser=None):
    """An /mcp front wired as `MCProxyService` would wire plugins, on the proxy's store and metrics."""

    async def get_browser(user_id):
        assert user_id == "alice", user_id
        return browser

    tools = ToolRegistry(
        get_browser,
        ToolsConfig(),
        reactor,
        on_call_started=[proxy.service.metrics.tool_call_started, *plugins.call_started_observers()],
        on_call_finished=[proxy.service.metrics.tool_call_finished, *plugins.call_finished_observers()],
    )
    chain = AuthenticationChain(
        [TokenAuthenticator(proxy.service.store, reactor), *plugins.authenticators], "tokens", reactor
    )
    sessions = SessionRegistry(reactor, 60.0)
    config = proxy.service.config
    transports = McpTransports(reactor, config, tools, sessions)
    site = ProxySite(
        build_router(origins=OriginPolicy(config), admission=Admission(chain.authenticate), transports=transports),
        max_body_bytes=1 << 20,
        metrics=plugins.site_metrics(proxy.service.metrics),
    )
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}/mcp", port


async def call_list_pages(url: str, sso_user: str) -> tuple[int, dict]:
    """One stateless tools/call of list_pages carrying only the SSO proxy's header."""
    headers = {
        "X-Forwarded-User": [sso_user],
        "Content-Type": ["application/json"],
        "Accept": ["application/json, text/event-stream"],
        "MCP-Protocol-Version": ["2026-07-28"],
        "Mcp-Method": ["tools/call"],
        "Mcp-Name": ["list_pages"],
    }
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "list_pages", "arguments": {}, "_meta": meta},
    }
    response = await treq.post(url, json.dumps(body).encode(), headers=headers, persistent=False)
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_example_plugins_serve_real_requests_end_to_end(reactor, tmp_path, user_browser, fixture_site):
    proxy = await start_proxy(reactor, tmp_path)
    plugins = load_plugins(
        list(EXAMPLES),
        proxy.service.config,
        proxy.service.store,
        reactor,
        proxy.service.metrics,
        package=plugin_examples,
        settings=example_settings(tmp_path),
    )
    await plugins.start()
    page = await user_browser.new_page(fixture_site.page())
    url, port = await serve_mcp(reactor, proxy, plugins, user_browser)
    try:
        code, answer = await call_list_pages(url, "alice")
        assert code == 200, answer
        [content] = answer["result"]["content"]
        assert fixture_site.page() in content["text"]
        assert answer["result"].get("isError") is not True

        code, refused = await call_list_pages(url, "alice smith")
        assert code == 401
        assert "X-Forwarded-User must hold exactly one user id" in json.dumps(refused)

        response = await treq.get(
            proxy.base_url + "/metrics", headers={"Authorization": [f"Bearer {proxy.admin_token}"]}, persistent=False
        )
        scraped = (await response.text()).splitlines()
        assert 'mcproxy_plugin_tool_calls_total{outcome="ok",tool="list_pages"} 1.0' in scraped
        assert 'mcproxy_tool_calls_total{outcome="ok",tool="list_pages"} 1.0' in scraped
    finally:
        await port.stopListening()
        await user_browser.close_page(page.page_id)
        await plugins.stop()
        await proxy.stop()
    counter = plugins.observers[0]
    assert counter.started == {"list_pages": 1} and not counter.running
    assert counter.requests == {("/mcp", 200): 1, ("/mcp", 401): 1}
    [line] = (tmp_path / "plugin-audit.jsonl").read_text().splitlines()
    assert json.loads(line) | {"at": 0} == {
        "event": "tool_call",
        "at": 0,
        "user": "alice",
        "tool": "list_pages",
        "outcome": "ok",
        "arguments": {},
    }


@pytest_twisted.ensureDeferred
async def test_the_sso_header_from_an_untrusted_peer_is_refused(reactor, tmp_path):
    proxy = await start_proxy(reactor, tmp_path)
    plugins = load_plugins(
        ["sso-header", "call-counter"],
        proxy.service.config,
        proxy.service.store,
        reactor,
        proxy.service.metrics,
        package=plugin_examples,
        settings=["sso-header.trusted_proxies=10.0.0.0/8"],
    )
    url, port = await serve_mcp(reactor, proxy, plugins)
    try:
        code, answer = await call_list_pages(url, "alice")
    finally:
        await port.stopListening()
        await proxy.stop()
    assert code == 401
    assert "X-Forwarded-User is only accepted from the SSO proxy, not from 127.0.0.1" in json.dumps(answer)
    assert plugins.observers[0].started == {}  # refused before any tool ran
    assert (
        proxy.service.metrics.registry.get_sample_value("mcproxy_http_requests_total", {"route": "/mcp", "code": "401"})
        == 1
    )
