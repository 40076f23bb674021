"""The browsing policy: schemes, host allow/deny lists, per-user rules, and interception."""

import pytest
import pytest_twisted

from mcproxy.browser.policy import PolicyBook
from mcproxy.config import BrowsingConfig, ConfigError, load
from mcproxy.errors import ToolError


def book(**settings) -> PolicyBook:
    return PolicyBook(BrowsingConfig(**settings))


@pytest.mark.parametrize(
    "url, why",
    [
        ("https://example.com/a", None),
        ("about:blank", None),
        ("data:text/html,hi", None),
        ("file:///etc/passwd", 'the scheme "file:" is not allowed'),
        ("chrome://settings", 'the scheme "chrome:" is not allowed'),
        ("javascript:alert(1)", 'the scheme "javascript:" is not allowed'),
        ("JavaScript:alert(1)", 'the scheme "javascript:" is not allowed'),
        ("view-source:https://example.com", 'the scheme "view-source:" is not allowed'),
        ("no-scheme-at-all", "it is not a valid absolute URL"),
        ("http://[::1", "it is not a valid absolute URL"),
    ],
)
def test_schemes_by_default(url, why):
    refusal = book().policy_for("alice").refusal(url)
    assert refusal == why or (why is not None and refusal.startswith(why))


def test_host_lists_globs_cidrs_and_per_user_rules():
    policies = book(
        allow=("*.corp.example", "corp.example", "10.0.0.0/8"),
        deny=("secret.corp.example",),
        user_rules=("alice allow *.staging.example", "bob deny wiki.corp.example"),
    )
    everyone = policies.policy_for("carol")
    assert everyone.refusal("https://app.corp.example/x") is None
    assert everyone.refusal("https://corp.example") is None
    assert everyone.refusal("http://10.1.2.3:8080/") is None
    assert everyone.refusal("https://SECRET.corp.example/") == 'the host "secret.corp.example" is on the deny list'
    assert everyone.refusal("https://evil.example/") == 'the host "evil.example" is not on the allow list'
    assert everyone.refusal("https://corp.example.evil.example/") is not None
    assert everyone.refusal("https://app.staging.example/") is not None
    assert policies.policy_for("alice").refusal("https://app.staging.example/") is None
    assert policies.policy_for("bob").refusal("https://wiki.corp.example/") is not None
    assert everyone.refusal("https://wiki.corp.example/") is None
    with pytest.raises(ToolError, match=r"^Navigation to https://evil\.example/ is blocked by the proxy's browsing policy"):
        everyone.check("https://evil.example/")


def test_schemes_can_be_opened_up_and_bad_rules_are_refused():
    assert book(schemes=("http", "https", "file")).policy_for("a").refusal("file:///tmp/x") is None
    with pytest.raises(ConfigError, match=r"^browsing\.user_rules: "):
        load(None, environ={"MCPROXY_BROWSING_USER_RULES": "alice permit x"})


@pytest_twisted.ensureDeferred
async def test_interception_stops_links_and_scripts_to_denied_hosts(reactor, chromium, browser_config, http_client):
    """The page itself tries to leave for a denied host, by link and by script: it never gets there."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from mcproxy.browser.pool import BrowserPool
    from mcproxy.testing.tool_calls import make_context, make_registry, ok, sleep, text_of

    asked = []

    class Pages(Resource):
        isLeaf = True

        def render_GET(self, request):
            asked.append((request.getHeader(b"host").decode(), request.path.decode()))
            request.setHeader(b"Content-Type", b"text/html")
            return (
                b'<a id="away" href="http://localhost:%d/secret-by-link">away</a>' % port.getHost().port
                if request.path == b"/start"
                else b"<p>here</p>"
            )

    port = reactor.listenTCP(0, Site(Pages()), interface="127.0.0.1")
    policies = book(deny=("localhost",), intercept=True)
    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=[policies.guard])
    try:
        browser = pool.browser_for("alice", chromium.browser_url)
        await browser.connected(10)
        tools = make_registry(reactor, browser, policies=policies)
        context = make_context()
        start = f"http://127.0.0.1:{port.getHost().port}/start"
        await ok(tools, context, "new_page", url=start)
        page_id = context.session.selected_page_id
        refused = await tools.call_tool(
            "navigate_page", {"pageId": page_id, "url": f"http://localhost:{port.getHost().port}/by-tool"}, context
        )
        assert refused.is_error and 'the host "localhost" is on the deny list' in text_of(refused)
        await ok(tools, context, "evaluate_script", pageId=page_id, function="() => document.getElementById('away').click()")
        await ok(
            tools,
            context,
            "evaluate_script",
            pageId=page_id,
            function=f"() => {{ location.href = 'http://localhost:{port.getHost().port}/secret-by-script'; }}",
        )
        await sleep(reactor, 1.0)
        paths = [path for _, path in asked]
        assert paths[0] == "/start"
        assert not any(path.startswith("/secret") or path == "/by-tool" for path in paths), asked
        # An allowed navigation the page starts itself still goes through.
        await ok(tools, context, "evaluate_script", pageId=page_id, function=f"() => {{ location.href = '{start}?again'; }}")
        await sleep(reactor, 1.0)
        assert [path for _, path in asked].count("/start") == 2
        for page in browser.pages():
            if page.via_proxy:
                await browser.close_page(page.page_id)
    finally:
        await pool.close()
        await port.stopListening()
