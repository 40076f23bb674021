"""emulate, resize_page and get_css_styles against a real headless Chromium."""

import pytest
import pytest_twisted

from mcproxy.browser.emulation import Viewport, emulation_listener, timeout_factor
from mcproxy.errors import ToolError
from mcproxy.testing.tool_calls import failed, make_context, ok, sleep, text_of, uid_of
from mcproxy.tools import emulation, styles
from mcproxy.tools.emulation import parse_geolocation, parse_headers, parse_viewport

PAGE = "emulation_page.html"


def make_tools(reactor, browser):
    """Every default tool plus the emulation and style tools, on ``browser`` for alice."""
    from mcproxy.config import ToolsConfig
    from mcproxy.tools.registry import DEFAULT_TOOLS, ToolRegistry

    async def get_browser(user_id):
        assert user_id == "alice"
        return browser

    return ToolRegistry(get_browser, ToolsConfig(), reactor, tools=(*DEFAULT_TOOLS, *emulation.tools, *styles.tools))


@pytest.fixture
def tools(reactor, user_browser):
    return make_tools(reactor, user_browser)


async def js(page, expression):
    """The value of ``expression`` (awaited) in ``page``."""
    reply = await page.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
    assert "exceptionDetails" not in reply, reply
    return reply["result"].get("value")


async def eventually(reactor, page, expression, expected):
    """Assert ``expression`` reaches ``expected`` soon: Chrome applies a cleared viewport
    override to the renderer asynchronously."""
    for _ in range(40):
        if await js(page, expression) == expected:
            return
        await sleep(reactor, 0.05)
    assert await js(page, expression) == expected


async def open_page(tools, context, browser, url):
    await ok(tools, context, "new_page", url=url)
    page_id = context.session.selected_page_id
    return page_id, browser.page(page_id)


# -- parsing ---------------------------------------------------------------------------


def test_parse_viewport():
    assert parse_viewport("390x844x3,mobile,touch") == Viewport(390, 844, 3, mobile=True, touch=True)
    assert parse_viewport("1280x720") == Viewport(1280, 720, 1)
    assert parse_viewport("800x600x1.5,landscape") == Viewport(800, 600, 1.5, landscape=True)
    assert parse_viewport("390x844x3").describe() == (
        '{"deviceScaleFactor":3,"isMobile":false,"hasTouch":false,"isLandscape":false,"width":390,"height":844}'
    )
    for bad in ("", "big", "390x", "390x844x3,tablet", "0x10x1", "10x10x0", "-1x10"):
        with pytest.raises(ToolError, match="<width>x<height>x<devicePixelRatio>"):
            parse_viewport(bad)


def test_parse_geolocation_and_headers():
    assert parse_geolocation("48.8584,2.2945") == (48.8584, 2.2945)
    for bad in ("north", "1,2,3", "91,0", "0,-181"):
        with pytest.raises(ToolError, match="geolocation"):
            parse_geolocation(bad)
    assert parse_headers('{"X-A": "1"}') == {"X-A": "1"}
    assert parse_headers("") == {}
    for bad in ("[1]", '{"X": 1}', "{"):
        with pytest.raises(ToolError, match="extraHttpHeaders"):
            parse_headers(bad)


# -- emulate ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_emulate_and_reset(reactor, tools, user_browser, fixture_site):
    context = make_context()
    page_id, page = await open_page(tools, context, user_browser, fixture_site.page(PAGE))
    original_ua = await js(page, "navigator.userAgent")
    original_width = await js(page, "window.innerWidth")
    assert timeout_factor(page) == 1

    result = await ok(
        tools,
        context,
        "emulate",
        pageId=page_id,
        viewport="390x844x3,mobile,touch",
        colorScheme="dark",
        prefersReducedMotion="reduce",
        networkConditions="Slow 3G",
        cpuThrottlingRate=4,
        userAgent="mcproxy-test-agent",
    )
    assert text_of(result).splitlines() == [
        "Emulation configured successfully",
        "Emulating network conditions: Slow 3G",
        "Emulating CPU throttling: 4x slowdown",
        "Default navigation timeout set to 100000 ms",
        (
            'Emulating viewport: {"deviceScaleFactor":3,"isMobile":true,"hasTouch":true,"isLandscape":false,'
            '"width":390,"height":844}'
        ),
        "Emulating user agent: mcproxy-test-agent",
        "Emulating color scheme: dark",
        "Emulating prefers-reduced-motion: reduce",
    ]
    assert timeout_factor(page) == 10
    assert await js(page, "navigator.userAgent") == "mcproxy-test-agent"
    assert await js(page, "matchMedia('(prefers-color-scheme: dark)').matches") is True
    assert await js(page, "matchMedia('(prefers-reduced-motion: reduce)').matches") is True
    assert await js(page, "[innerWidth, devicePixelRatio, navigator.maxTouchPoints > 0]") == [390, 3, True]

    # A call without those options resets every one of them.
    result = await ok(tools, context, "emulate", pageId=page_id, forcedColors="active")
    assert text_of(result) == "Emulation configured successfully\nEmulating forced-colors: active"
    assert timeout_factor(page) == 1
    assert await js(page, "navigator.userAgent") == original_ua
    assert await js(page, "matchMedia('(prefers-color-scheme: dark)').matches") is False
    assert await js(page, "matchMedia('(prefers-reduced-motion: reduce)').matches") is False
    assert await js(page, "matchMedia('(forced-colors: active)').matches") is True
    await eventually(reactor, page, "[innerWidth, devicePixelRatio]", [original_width, 1])

    result = await ok(tools, context, "emulate", pageId=page_id)
    assert text_of(result) == "Emulation configured successfully"
    assert await js(page, "matchMedia('(forced-colors: active)').matches") is False


@pytest_twisted.ensureDeferred
async def test_emulate_offline(tools, user_browser, fixture_site):
    context = make_context()
    page_id, page = await open_page(tools, context, user_browser, fixture_site.page(PAGE))
    await ok(tools, context, "emulate", pageId=page_id, networkConditions="Offline")
    assert await js(page, "navigator.onLine") is False
    fetched = "fetch(location.href + '?' + Math.random()).then(() => 'loaded', () => 'failed')"
    assert await js(page, fetched) == "failed"
    await ok(tools, context, "emulate", pageId=page_id)
    assert await js(page, "navigator.onLine") is True
    assert await js(page, fetched) == "loaded"


@pytest_twisted.ensureDeferred
async def test_emulate_geolocation(tools, user_browser, fixture_site):
    context = make_context()
    page_id, page = await open_page(tools, context, user_browser, fixture_site.page(PAGE))
    result = await ok(tools, context, "emulate", pageId=page_id, geolocation="48.8584,2.2945")
    assert "Emulating geolocation: latitude 48.8584, longitude 2.2945" in text_of(result)
    position = await js(
        page,
        """new Promise(resolve => navigator.geolocation.getCurrentPosition(
             p => resolve([p.coords.latitude, p.coords.longitude]),
             e => resolve('error ' + e.code), {timeout: 5000}))""",
    )
    assert position == [48.8584, 2.2945]


@pytest_twisted.ensureDeferred
async def test_emulate_extra_headers(reactor, tools, user_browser):
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    seen: list[dict] = []

    class Recorder(Resource):
        isLeaf = True

        def render_GET(self, request):
            seen.append({k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()})
            request.setHeader(b"Content-Type", b"text/html")
            return b"<title>headers</title>ok"

    port = reactor.listenTCP(0, Site(Recorder()), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/"
        context = make_context()
        page_id, _page = await open_page(tools, context, user_browser, url)
        assert "x-mcproxy" not in seen[-1]
        await ok(tools, context, "emulate", pageId=page_id, extraHttpHeaders='{"X-Mcproxy": "one"}')
        await ok(tools, context, "navigate_page", pageId=page_id, type="reload")
        assert seen[-1]["x-mcproxy"] == "one"
        # Headers survive an emulate call that does not mention them...
        await ok(tools, context, "emulate", pageId=page_id, colorScheme="dark")
        await ok(tools, context, "navigate_page", pageId=page_id, type="reload")
        assert seen[-1]["x-mcproxy"] == "one"
        # ...and an empty string clears them.
        await ok(tools, context, "emulate", pageId=page_id, extraHttpHeaders="")
        await ok(tools, context, "navigate_page", pageId=page_id, type="reload")
        assert "x-mcproxy" not in seen[-1]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_emulate_bad_input(tools, user_browser, fixture_site):
    context = make_context()
    page_id, page = await open_page(tools, context, user_browser, fixture_site.page(PAGE))
    await ok(tools, context, "emulate", pageId=page_id, colorScheme="dark")
    message = await failed(tools, context, "emulate", pageId=page_id, viewport="phone")
    assert "Invalid viewport 'phone'" in message and "'390x844x3,mobile,touch'" in message
    message = await failed(tools, context, "emulate", pageId=page_id, networkConditions="5G")
    assert '"networkConditions"' in message and '"Slow 3G"' in message
    assert "Invalid extraHttpHeaders" in await failed(
        tools, context, "emulate", pageId=page_id, extraHttpHeaders="nope"
    )
    # A refused call leaves the previous emulation in force.
    assert await js(page, "matchMedia('(prefers-color-scheme: dark)').matches") is True


# -- resize_page -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_resize_page(reactor, tools, user_browser, fixture_site):
    context = make_context()
    page_id, page = await open_page(tools, context, user_browser, fixture_site.page(PAGE))
    result = await ok(tools, context, "resize_page", pageId=page_id, width=1024, height=700)
    assert text_of(result).startswith("The page is now 1024x700 pixels.\n## Pages\n")
    assert await js(page, "[innerWidth, innerHeight]") == [1024, 700]
    await ok(tools, context, "resize_page", pageId=page_id, width=640, height=480)
    assert await js(page, "[innerWidth, innerHeight]") == [640, 480]
    assert "width" in await failed(tools, context, "resize_page", pageId=page_id, width=0, height=480)
    # With an emulated viewport in force, that viewport is what gets resized.
    await ok(tools, context, "emulate", pageId=page_id, viewport="390x844x2,mobile")
    result = await ok(tools, context, "resize_page", pageId=page_id, width=400, height=300)
    assert text_of(result).startswith(
        "The emulated viewport is now 400x300 pixels "
        '({"deviceScaleFactor":2,"isMobile":true,"hasTouch":false,"isLandscape":false,"width":400,"height":300}).'
    )
    assert await js(page, "[innerWidth, innerHeight, devicePixelRatio]") == [400, 300, 2]
    await ok(tools, context, "emulate", pageId=page_id)
    await eventually(reactor, page, "[innerWidth, innerHeight, devicePixelRatio]", [640, 480, 1])


class _NoWindows:
    """The user's browser, except that Chrome refuses every window call (as some embedders do)."""

    def __init__(self, browser):
        self._browser = browser

    def __getattr__(self, name):
        return getattr(self._browser, name)

    def send(self, method, params=None, **kw):
        from twisted.internet import defer

        from mcproxy.errors import CDPError

        if method.startswith("Browser.") and "Window" in method:
            return defer.fail(CDPError("Browser window not found"))
        return self._browser.send(method, params, **kw)


@pytest_twisted.ensureDeferred
async def test_resize_page_falls_back_to_emulation(reactor, user_browser, fixture_site):
    tools = make_tools(reactor, _NoWindows(user_browser))
    context = make_context()
    page_id, page = await open_page(tools, context, user_browser, fixture_site.page(PAGE))
    result = await ok(tools, context, "resize_page", pageId=page_id, width=500, height=400)
    assert text_of(result).startswith(
        "Chrome could not resize this page's window, so its viewport is emulated at 500x400"
    )
    assert await js(page, "[innerWidth, innerHeight]") == [500, 400]
    # The override is part of the page's emulation: emulate without a viewport removes it.
    await ok(tools, context, "emulate", pageId=page_id)
    await eventually(reactor, page, "innerWidth != 500", True)


# -- get_css_styles --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_css_styles(tools, user_browser, fixture_site):
    context = make_context()
    page_id, page = await open_page(tools, context, user_browser, fixture_site.page(PAGE))
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    target = uid_of(snapshot, 'button "Target"')
    text = text_of(await ok(tools, context, "get_css_styles", pageId=page_id, uid=target, pageSize=5))
    sections = text.split("\n### ")
    assert (
        sections[0]
        == f"## CSS styles of uid={target} (button#target.box)\nShowing 1-5 of 11 (Page 1 of 3).\nNext page: 1"
    )
    # Highest precedence first; the inline color wins, the rules' colors lose.
    assert sections[1:] == [
        "element.style\n  color: red;",
        f"#target.box ({PAGE}:11)\n  [overloaded] color: purple;\n  margin: 2px 3px;",
        f".box ({PAGE}:13)\n@media (min-width: 1px)\n  border: 1px solid black;",
        f".box ({PAGE}:10)\n  [overloaded] color: green;\n  padding: 4px;",
        f"button ({PAGE}:18)\n@layer base\n  letter-spacing: 1px;",
        (
            "Computed values of these properties\n  color: rgb(255, 0, 0);\n  margin-top: 2px;\n  margin-right: 3px;\n"
            "  margin-bottom: 2px;\n  margin-left: 3px;\n  border-top-width: 1px;\n  border-right-width: 1px;\n"
            "  border-bottom-width: 1px;\n  border-left-width: 1px;\n  border-top-style: solid;\n"
            "  border-right-style: solid;\n  border-bottom-style: solid;\n  border-left-style: solid;\n"
            "  border-top-color: rgb(0, 0, 0);\n  border-right-color: rgb(0, 0, 0);\n"
            "  border-bottom-color: rgb(0, 0, 0);\n"
            "  border-left-color: rgb(0, 0, 0);\n  border-image-source: none;\n  border-image-slice: 100%;\n"
            "  border-image-width: 1;\n  border-image-outset: 0;\n  border-image-repeat: stretch;\n"
            "  padding-top: 4px;\n  padding-right: 4px;\n  padding-bottom: 4px;\n  padding-left: 4px;\n"
            "  letter-spacing: 1px;"
        ),
    ]

    text = text_of(await ok(tools, context, "get_css_styles", pageId=page_id, uid=target, pageSize=5, pageIdx=2))
    assert text.startswith(
        f"## CSS styles of uid={target} (button#target.box)\nShowing 11-11 of 11 (Page 3 of 3).\nPrevious page: 1\n"
    )
    # Only inherited properties of ancestors count; the button's own font (from the user
    # agent's font shorthand) beats the inherited font-family.
    assert "### Inherited from body: body (emulation_page.html:8)\n  [overloaded] font-family: sans-serif;\n" in text
    middle = text_of(await ok(tools, context, "get_css_styles", pageId=page_id, uid=target, pageSize=5, pageIdx=1))
    assert (
        "### Inherited from div#wrap: #wrap (emulation_page.html:9)\n  [overloaded] color: navy;\n"
        "  [overloaded] font-size: 20px;\n  --accent: orange;\n" in middle
    )
    assert "(user agent stylesheet)\n" in middle and "  [overloaded] padding-block-start: 1px;\n" in middle
    assert "  font-size: 13.3333px;" in middle

    assert "past the end" in await failed(tools, context, "get_css_styles", pageId=page_id, uid=target, pageIdx=5)
    assert "not found" in await failed(tools, context, "get_css_styles", pageId=page_id, uid="99_99")
    # After a reload the new document's stylesheets are known (and the old ones forgotten).
    await ok(tools, context, "navigate_page", pageId=page_id, type="reload")
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    target = uid_of(snapshot, 'button "Target"')
    text = text_of(await ok(tools, context, "get_css_styles", pageId=page_id, uid=target, pageSize=2))
    assert f"### #target.box ({PAGE}:11)\n" in text
    assert len(page.state.tools.styles.headers) == 2
    await js(page, "document.getElementById('target').remove()")
    assert "no longer exists" in await failed(tools, context, "get_css_styles", pageId=page_id, uid=target)


@pytest_twisted.ensureDeferred
async def test_emulation_restored_after_reconnect(reactor, chromium, browser_config, http_client, fixture_site):
    from mcproxy.browser.pool import BrowserPool

    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=[emulation_listener])
    try:
        browser = pool.browser_for("alice", chromium.browser_url)
        await browser.connected(10)
        tools = make_tools(reactor, browser)
        context = make_context()
        page_id, page = await open_page(tools, context, browser, fixture_site.page(PAGE))
        await ok(tools, context, "emulate", pageId=page_id, colorScheme="dark", userAgent="agent-before-reconnect")
        old_session = page.session_id
        browser.cdp.abort()  # Chrome drops the session and its overrides with it
        for _ in range(100):
            if page.session_id not in (None, old_session):
                break
            await sleep(reactor, 0.05)
        await browser.connected(10)
        # The listener re-applies the emulation in the background after the attach.
        await eventually(
            reactor,
            page,
            "[matchMedia('(prefers-color-scheme: dark)').matches, navigator.userAgent]",
            [True, "agent-before-reconnect"],
        )
        await browser.close_page(page_id)
    finally:
        await pool.close()
