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
    with pytest.raises(
        ToolError, match=r"^Navigation to https://evil\.example/ is blocked by the proxy's browsing policy"
    ):
        everyone.check("https://evil.example/")


def test_schemes_can_be_opened_up_and_bad_rules_are_refused():
    assert book(schemes=("http", "https", "file")).policy_for("a").refusal("file:///tmp/x") is None
    with pytest.raises(ConfigError, match=r"^browsing\.user_rules: "):
        load(None, environ={"MCPROXY_BROWSING_USER_RULES": "alice permit x"})
    # A CIDR typo would match nothing: a silent hole in a deny list, so it is refused.
    for key, value in (("DENY", "10.0.0/8x"), ("ALLOW", "10.0.0.0/33"), ("USER_RULES", "bob deny 10.1/x")):
        with pytest.raises(ConfigError, match=rf"^browsing\.{key.lower()}: .* neither a host pattern nor a CIDR"):
            load(None, environ={f"MCPROXY_BROWSING_{key}": value})
    assert load(None, environ={"MCPROXY_BROWSING_DENY": "10.0.0.0/8,::ffff:10.0.0.0/104,*.corp"}).browsing.deny


def test_hosts_are_read_as_chrome_reads_them():
    """The WHATWG parser decides the host, in canonical form, whatever the URL looks like."""
    policy = book(
        allow=("allowed.corp", "*.bücher.example", "10.0.0.0/8", "::ffff:192.168.0.0/120", "[2001:db8::1]"),
        deny=("127.0.0.0/8", "::1", "secret.allowed.corp", "10.9.9.9"),
    ).policy_for("alice")
    cases = {
        # Chrome loads "evil" (a backslash ends the authority), not allowed.corp.
        "http://evil\\@allowed.corp/": 'the host "evil" is not on the allow list',
        "http://user:pw@allowed.corp/": None,
        "http://allowed.corp\\@evil/": None,  # the host is allowed.corp: "\\@evil" is its path
        "HTTP://ALLOWED.Corp./x": None,
        "http:allowed.corp": None,
        "http://allo\twed.corp\n/": None,
        "http://allowed%2Ecorp/": None,
        "http://SECRET.allowed.corp./": 'the host "secret.allowed.corp." is on the deny list',
        "http://www.BÜCHER.example/": None,
        "http://www.xn--bcher-kva.example/": None,
        "http://2130706433/": 'the host "127.0.0.1" is on the deny list',
        "http://0x7f.1/": 'the host "127.0.0.1" is on the deny list',
        "http://127.1/": 'the host "127.0.0.1" is on the deny list',
        "http://0177.0.0.01/": 'the host "127.0.0.1" is on the deny list',
        "http://[::ffff:127.0.0.1]/": 'the host "[::ffff:7f00:1]" is on the deny list',
        "http://[0:0:0:0:0:0:0:1]/": 'the host "[::1]" is on the deny list',
        "http://012.011.011.011/": 'the host "10.9.9.9" is on the deny list',
        "http://[::ffff:10.9.9.9]/": 'the host "[::ffff:a09:909]" is on the deny list',
        "http://[64:ff9b::a09:909]/": 'the host "[64:ff9b::a09:909]" is on the deny list',  # NAT64
        "http://[2002:a09:909::1]/": 'the host "[2002:a09:909::1]" is on the deny list',  # 6to4
        "http://0xa.1.2.3/": None,
        "http://[::ffff:c0a8:1]/": None,
        "http://192.168.0.1/": None,
        "http://[2001:DB8:0::1]/": None,
        "http://192.168.1.1/": 'the host "192.168.1.1" is not on the allow list',
        "http://1.2.3.4.5/": "it is not a valid absolute URL (such as https://example.com/)",
        "http://256.0.0.1/": "it is not a valid absolute URL (such as https://example.com/)",
        "http://%zz/": "it is not a valid absolute URL (such as https://example.com/)",
        "https://exa mple.com/": "it is not a valid absolute URL (such as https://example.com/)",
    }
    assert {url: policy.refusal(url) for url in cases} == cases


class RecordingSite:
    """A loopback web server that records the paths asked for; ``/start`` serves ``start``
    (where ``%(port)s`` is the server's port)."""

    def __init__(self, reactor, start: bytes = b"<p>start</p>"):
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        site, self.asked = self, []

        class Pages(Resource):
            isLeaf = True

            def render_GET(self, request):
                site.asked.append(request.path.decode())
                request.setHeader(b"Content-Type", b"text/html")
                return start % {b"port": b"%d" % site.port} if request.path == b"/start" else b"<p>here</p>"

        self.listening = reactor.listenTCP(0, Site(Pages()), interface="127.0.0.1")
        self.port = self.listening.getHost().port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The URL of ``path`` on this site, through ``host`` (any name or form of loopback)."""
        return f"http://{host}:{self.port}{path}"


async def guarded_tools(reactor, pool, chromium, policies):
    """The tools of "alice" on the shared Chromium, with ``policies``; (registry, context, browser)."""
    from mcproxy.testing.tool_calls import make_context, make_registry

    browser = pool.browser_for("alice", chromium.browser_url)
    await browser.connected(10)
    return make_registry(reactor, browser, policies=policies), make_context(), browser


async def run_script(tools, context, page_id: int, statement: str) -> None:
    """Run one JavaScript statement in the page, as a user gesture (evaluate_script)."""
    from mcproxy.testing.tool_calls import ok

    await ok(tools, context, "evaluate_script", pageId=page_id, function=f"() => {{ {statement}; }}")


async def close_proxy_pages(browser) -> None:
    """Close the tabs a test opened, popups included (the shared Chromium keeps its first tab)."""
    for page in browser.pages()[1:]:
        if not page.closed:
            await browser.close_page(page.page_id)


@pytest_twisted.ensureDeferred
async def test_interception_stops_links_and_scripts_to_denied_hosts(reactor, chromium, browser_config, http_client):
    """The page itself tries to leave for a denied host, by link and by script: it never gets there."""
    from mcproxy.browser.pool import BrowserPool
    from mcproxy.testing.tool_calls import failed, ok, sleep

    site = RecordingSite(reactor, b'<a id="away" href="http://localhost:%(port)s/secret-by-link">away</a>')
    policies = book(deny=("localhost",), intercept=True)
    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=[policies.guard])
    try:
        tools, context, browser = await guarded_tools(reactor, pool, chromium, policies)
        start = site.url("/start")
        await ok(tools, context, "new_page", url=start)
        page_id = context.session.selected_page_id
        refused = await failed(tools, context, "navigate_page", pageId=page_id, url=site.url("/by-tool", "localhost"))
        assert 'the host "localhost" is on the deny list' in refused
        await run_script(tools, context, page_id, "document.getElementById('away').click()")
        await run_script(tools, context, page_id, f"location.href = '{site.url('/secret-by-script', 'localhost')}'")
        await sleep(reactor, 1.0)
        assert site.asked[0] == "/start"
        assert not any(path.startswith("/secret") or path == "/by-tool" for path in site.asked), site.asked
        # An allowed navigation the page starts itself still goes through.
        await run_script(tools, context, page_id, f"location.href = '{start}?again'")
        await sleep(reactor, 1.0)
        assert site.asked.count("/start") == 2
        await close_proxy_pages(browser)
    finally:
        await pool.close()
        await site.listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_interception_judges_the_url_chrome_requests(reactor, chromium, browser_config, http_client):
    """A page going to a denied network through another spelling of its address is stopped on the
    URL Chrome reports (canonical, IPv4-mapped IPv6 as IPv4), while the proxy's own name for the
    same server stays allowed."""
    from mcproxy.browser.pool import BrowserPool
    from mcproxy.testing.tool_calls import failed, ok, until

    site = RecordingSite(reactor)
    policies = book(deny=("127.0.0.0/8",), intercept=True)
    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=[policies.guard])
    try:
        tools, context, browser = await guarded_tools(reactor, pool, chromium, policies)
        await ok(tools, context, "new_page", url=site.url("/start", "localhost"))
        page_id = context.session.selected_page_id
        page = browser.page(page_id)
        mapped = site.url("/secret-mapped", "[::ffff:127.0.0.1]")
        assert 'the host "[::ffff:7f00:1]" is on the deny list' in await failed(
            tools, context, "navigate_page", pageId=page_id, url=mapped
        )
        spellings = {
            mapped: site.url("/secret-mapped", "[::ffff:7f00:1]"),
            site.url("/secret-hex", "0x7f.1"): site.url("/secret-hex"),
            site.url("/secret-number", "2130706433"): site.url("/secret-number"),
        }
        for secret, canonical in spellings.items():
            await run_script(tools, context, page_id, f"location.href = '{secret}'")
            # Refused, the tab shows Chrome's error page for the URL it meant to load.
            await until(reactor, lambda canonical=canonical: page.url == canonical)
        assert [path for path in site.asked if path != "/favicon.ico"] == ["/start"]
        await close_proxy_pages(browser)
    finally:
        await pool.close()
        await site.listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_popups_are_guarded_before_they_load(reactor, chromium, browser_config, http_client):
    """``window.open`` to a denied host, with or without an opener: the new tab is held until the
    guard is on, so the request never leaves; a popup to an allowed host loads."""
    from mcproxy.browser.pool import BrowserPool
    from mcproxy.testing.tool_calls import ok, until

    site = RecordingSite(reactor)
    policies = book(deny=("localhost",), intercept=True)
    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=[policies.guard])
    try:
        tools, context, browser = await guarded_tools(reactor, pool, chromium, policies)
        await ok(tools, context, "new_page", url=site.url("/start"))
        page_id = context.session.selected_page_id
        opens = [
            (site.url("/secret-popup", "localhost"), ""),
            (site.url("/secret-noopener", "localhost"), "noopener"),
            (site.url("/allowed-popup"), ""),
        ]
        for url, features in opens:
            before = len(browser.pages())
            await run_script(tools, context, page_id, f"window.open('{url}', '_blank', '{features}')")
            popup = await until(reactor, lambda before=before: len(browser.pages()) > before and browser.pages()[-1])
            await until(reactor, lambda popup=popup, url=url: popup.url == url)
        assert "/allowed-popup" in site.asked
        assert not [path for path in site.asked if path.startswith("/secret")], site.asked
        await close_proxy_pages(browser)
    finally:
        await pool.close()
        await site.listening.stopListening()
