"""The admin dashboard at /admin: headers, static files, the overview API, and the page
itself in real headless Chromium driven by the project's own CDP client."""

import base64
import json
import re
import struct

import attrs
import pytest_twisted
import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from mcproxy.storage.records import UserRecord
from mcproxy.testing.daemon import RunningProxy, start_proxy

USER = "dash-user"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@attrs.define
class Dashboard:
    """A running proxy and the dashboard over its parts, served on a port of its own."""

    proxy: RunningProxy
    url: str
    overview_requests: list

    async def get(self, path: str, token: str | None = None, method: str = "GET"):
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        response = await treq.request(method, self.url + path, headers=headers, persistent=False)
        return response, await response.content()


@pytest_twisted.async_yield_fixture
async def dashboard(reactor, tmp_path):
    from mcproxy.auth.admission import Admission
    from mcproxy.auth.chain import AuthenticationChain
    from mcproxy.auth.tokens import TokenAuthenticator
    from mcproxy.web.dashboard import Dashboard as DashboardPages
    from mcproxy.web.dashboard import Overview
    from mcproxy.web.front import build_router
    from mcproxy.web.origins import OriginPolicy
    from mcproxy.web.site import ProxySite

    proxy = await start_proxy(reactor, tmp_path / "var")
    service = proxy.service
    chain = AuthenticationChain([TokenAuthenticator(service.store, reactor)], "tokens", reactor)
    requests = []

    async def authenticate(request):
        requests.append(reactor.seconds())
        return await chain.authenticate(request)

    overview = Overview(
        clock=reactor,
        store=service.store,
        pool=service.pool,
        sessions=service.sessions,
        activity=service.activity,
        started_at=reactor.seconds() - 5,
    )
    root = build_router(
        origins=OriginPolicy(service.config), admission=Admission(authenticate), dashboard=DashboardPages(overview)
    )
    site = ProxySite(root, max_body_bytes=service.config.server.max_body_bytes)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield Dashboard(proxy, f"http://127.0.0.1:{port.getHost().port}", requests)
    await port.stopListening()
    await proxy.stop()


async def _traffic(dashboard, chromium) -> str:
    """A registered user with an open MCP session, a good and two failed tool calls; their token."""
    proxy = dashboard.proxy
    token = await proxy.token_for(USER)
    await proxy.register(USER, chromium.browser_url, token)
    listed = await proxy.call_tool(token, "list_pages")
    assert not listed["result"].get("isError"), listed
    made_up = await proxy.call_tool(token, "made_up_tool", rid=2)
    assert made_up["result"]["isError"]
    secret = await proxy.call_tool(
        token, "evaluate_script", {"pageId": 999, "function": "() => 'SECRET-ARG-4711'"}, rid=3
    )
    assert secret["result"]["isError"]
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    response = await treq.post(
        proxy.base_url + "/mcp",
        json.dumps(init).encode(),
        headers={
            "Authorization": [f"Bearer {token}"],
            "Content-Type": ["application/json"],
            "Accept": ["application/json, text/event-stream"],
        },
        persistent=False,
    )
    await response.content()
    assert response.code == 200 and response.headers.getRawHeaders(b"mcp-session-id")
    return token


# -- the page shell and static files --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_page_shell_is_served_with_a_strict_policy(dashboard):
    for path in ("/admin", "/admin/"):
        response, body = await dashboard.get(path)
        assert response.code == 200
        headers = response.headers

        def header(name, headers=headers):
            return headers.getRawHeaders(name)[0]

        assert header("content-type") == "text/html; charset=utf-8"
        csp = header("content-security-policy")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp
        assert header("x-frame-options") == "DENY"
        assert header("cache-control") == "no-store"
        assert header("x-content-type-options") == "nosniff"
        assert header("x-request-id")
    html = body.decode()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all('src="/admin/static/' in tag for tag in scripts)
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), "no inline script bodies"
    assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)
    assert '<label for="token">' in html


@pytest_twisted.ensureDeferred
async def test_static_files_have_their_types_and_nothing_else_is_served(dashboard):
    for name, content_type in (
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
    ):
        response, body = await dashboard.get(f"/admin/static/{name}")
        assert response.code == 200 and body
        assert response.headers.getRawHeaders("content-type") == [content_type]
        assert response.headers.getRawHeaders("content-security-policy")
    head, body = await dashboard.get("/admin/static/dashboard.js", method="HEAD")
    assert head.code == 200 and body == b""
    for path in (
        "/admin/static/nope.js",
        "/admin/static/",
        "/admin/static/../dashboard.py",
        "/admin/static/%2e%2e/dashboard.py",
        "/admin/static/..%2fdashboard.py",
        "/admin/static/static/dashboard.js",
        "/admin/static/__init__.py",
        "/admin/nothing",
        "/admin/api",
        "/admin/api/nothing",
        "/admin/api/overview/more",
    ):
        response, body = await dashboard.get(path)
        assert response.code == 404, path
        assert json.loads(body)["error"]["code"] == "not_found", path
    response, body = await dashboard.get("/admin", method="POST")
    assert response.code == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"
    assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]


# -- the overview API ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_overview_needs_an_admin_credential(dashboard):
    response, body = await dashboard.get("/admin/api/overview")
    assert response.code == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    assert response.headers.getRawHeaders("www-authenticate")
    response, body = await dashboard.get("/admin/api/overview", "mcpx_not-a-real-token")
    assert response.code == 401
    user_token = await dashboard.proxy.token_for("someone", "tools:*", "register", "metrics")
    response, body = await dashboard.get("/admin/api/overview", user_token)
    assert response.code == 403
    error = json.loads(body)["error"]
    assert error["code"] == "forbidden" and "not an admin token" in error["message"]
    response, body = await dashboard.get("/admin/api/overview", dashboard.proxy.admin_token, method="POST")
    assert response.code == 405


@pytest_twisted.ensureDeferred
async def test_overview_shows_users_sessions_calls_and_errors(dashboard, chromium):
    await _traffic(dashboard, chromium)
    response, raw = await dashboard.get("/admin/api/overview", dashboard.proxy.admin_token)
    assert response.code == 200
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]
    assert b"SECRET-ARG-4711" not in raw and b'"arguments"' not in raw
    body = json.loads(raw)
    assert set(body) == {"generatedAt", "process", "users", "sessions", "recentCalls", "recentErrors", "browserChanges"}

    [user] = body["users"]
    assert user["userId"] == USER
    assert user["browserURL"] == chromium.browser_url
    assert user["browserStatus"] == "connected" and user["lastError"] is None
    assert user["activeSessions"] == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", user["lastActivity"])

    assert body["sessions"]["total"] == 1
    assert body["sessions"]["byTransport"] == {"streamable": 1}
    assert body["sessions"]["byRevision"] == [{"transport": "streamable", "protocolVersion": "2025-11-25", "count": 1}]
    assert body["sessions"]["byUser"] == {USER: 1}

    calls = body["recentCalls"]
    assert [(c["tool"], c["outcome"]) for c in calls] == [
        ("evaluate_script", "error"),
        ("made_up_tool", "unknown_tool"),
        ("list_pages", "ok"),
    ]
    assert all(c["userId"] == USER and c["durationMs"] >= 0 and c["time"].endswith("Z") for c in calls)
    assert set(calls[0]) == {"time", "userId", "tool", "outcome", "durationMs"}
    assert [(e["kind"], e["subject"]) for e in body["recentErrors"]] == [
        ("tool", "evaluate_script"),
        ("tool", "made_up_tool"),
    ]
    assert body["browserChanges"][0]["status"] == "connected" and body["browserChanges"][0]["previous"] is None

    process = body["process"]
    assert process["uptime"] >= 5
    assert process["registeredUsers"] == 1 and process["browserConnections"] == 1
    assert process["activeSessions"] == 1 and process["toolCalls"] == 3 and process["inFlightCalls"] == 0
    assert process["peakMemoryBytes"] > 10 * 2**20


@pytest_twisted.ensureDeferred
async def test_a_browser_that_goes_away_shows_its_error(dashboard, private_chromium):
    proxy = dashboard.proxy
    token = await proxy.token_for(USER)
    await proxy.register(USER, private_chromium.browser_url, token)
    await proxy.service.pool.existing(USER).connected(10)
    _response, raw = await dashboard.get("/admin/api/overview", proxy.admin_token)
    assert json.loads(raw)["users"][0]["browserStatus"] == "connected"
    await private_chromium.kill()
    browser = proxy.service.pool.existing(USER)
    for _ in range(100):
        if browser.status != "connected":
            break
        await deferLater(proxy.service.reactor, 0.05)
    body = json.loads((await dashboard.get("/admin/api/overview", proxy.admin_token))[1])
    [user] = body["users"]
    assert user["browserStatus"] in ("reconnecting", "failed")
    assert user["lastError"]
    change = body["browserChanges"][0]
    assert (change["previous"], change["status"]) == ("connected", user["browserStatus"])
    [error] = body["recentErrors"]
    assert error["kind"] == "browser" and error["subject"] == private_chromium.browser_url
    assert user["lastError"] in error["message"]


# -- the page in real Chromium ---------------------------------------------------------------


class Tab:
    """One tab of a fresh browser context (its own sessionStorage), over our CDP client."""

    def __init__(self, reactor, link, context_id: str, target_id: str, session_id: str):
        self.reactor = reactor
        self.link = link
        self.context_id = context_id
        self.target_id = target_id
        self.session_id = session_id
        #: Errors the page logged (CSP violations, failed loads) and exceptions it threw.
        self.problems: list[str] = []

    @classmethod
    async def open(cls, reactor, chromium, width: int = 1280, height: int = 900, mobile: bool = False) -> "Tab":
        from mcproxy.browser.connect import connect_browser, default_http_client
        from mcproxy.config import BrowserConfig

        link = await connect_browser(reactor, BrowserConfig(), default_http_client(reactor), chromium.browser_url)
        context = (await link.send("Target.createBrowserContext"))["browserContextId"]
        created = await link.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})
        target = created["targetId"]
        session = (await link.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        tab = cls(reactor, link, context, target, session)
        link.subscribe("Log.entryAdded", tab._logged, session_id=session)
        link.subscribe("Runtime.exceptionThrown", tab._threw, session_id=session)
        await tab.send("Log.enable")
        await tab.send("Runtime.enable")
        await tab.send("Page.enable")
        await tab.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 3 if mobile else 1, "mobile": mobile},
        )
        if mobile:
            await tab.send("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
        return tab

    def _logged(self, method: str, params: dict) -> None:
        entry = params["entry"]
        if entry["level"] == "error":
            self.problems.append(f"{entry['source']}: {entry['text']}")

    def _threw(self, method: str, params: dict) -> None:
        self.problems.append(json.dumps(params["exceptionDetails"])[:500])

    def send(self, method: str, params: dict | None = None) -> Deferred:
        return self.link.send(method, params, session_id=self.session_id, timeout=10)

    async def navigate(self, url: str) -> None:
        loaded: Deferred = Deferred()
        stop = self.link.subscribe(
            "Page.loadEventFired", lambda *_: loaded.called or loaded.callback(None), session_id=self.session_id
        )
        try:
            await self.send("Page.navigate", {"url": url})
            await loaded.addTimeout(10, self.reactor)
        finally:
            stop()

    async def evaluate(self, expression: str):
        reply = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    async def wait_until(self, expression: str, timeout: float = 10.0):
        for _ in range(int(timeout / 0.1)):
            value = await self.evaluate(expression)
            if value:
                return value
            await deferLater(self.reactor, 0.1)
        raise AssertionError(f"never true: {expression}")

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        x, y = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            )

    async def sign_in(self, token: str) -> None:
        await self.evaluate("document.getElementById('token').focus()")
        await self.send("Input.insertText", {"text": token})
        await self.click("#sign-in-button")

    async def screenshot(self, path) -> bytes:
        data = base64.b64decode((await self.send("Page.captureScreenshot", {"format": "png"}))["data"])
        path.write_bytes(data)
        return data

    async def close(self) -> None:
        await self.link.send("Target.closeTarget", {"targetId": self.target_id})
        await self.link.send("Target.disposeBrowserContext", {"browserContextId": self.context_id})
        self.link.abort()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest_twisted.async_yield_fixture
async def tab(reactor, chromium):
    opened = await Tab.open(reactor, chromium)
    yield opened
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_sign_in_shows_live_tables_and_sign_out_forgets_the_token(dashboard, chromium, tab, tmp_path):
    await _traffic(dashboard, chromium)
    await tab.navigate(dashboard.url + "/admin")
    assert await tab.evaluate("document.getElementById('board').hidden")
    await tab.sign_in(dashboard.proxy.admin_token)
    await tab.wait_until(f"document.querySelector('#users tbody').textContent.includes({json.dumps(USER)})")
    users_row = await tab.evaluate("Array.from(document.querySelectorAll('#users tbody td'), td => td.textContent)")
    assert users_row[0] == USER and users_row[1] == chromium.browser_url and users_row[2] == "connected"
    assert await tab.evaluate("document.querySelector('#users .badge').className") == "badge good"
    calls = await tab.evaluate("document.querySelector('#calls tbody').textContent")
    assert "list_pages" in calls and "made_up_tool" in calls and "SECRET" not in calls
    assert "no such tool" in await tab.evaluate("document.querySelector('#errors tbody').textContent")
    assert "2025-11-25" in await tab.evaluate("document.querySelector('#sessions tbody').textContent")
    assert await tab.evaluate("document.getElementById('sign-in').hidden")
    assert await tab.evaluate("sessionStorage.getItem('mcproxy.adminToken')") == dashboard.proxy.admin_token

    # Live: a new call shows up without touching the page.
    token = await dashboard.proxy.token_for(USER)
    await dashboard.proxy.call_tool(token, "list_pages", rid=9)
    await tab.wait_until("document.querySelector('#fig-calls').textContent === '4'", timeout=6)

    shot = await tab.screenshot(tmp_path / "dashboard.png")
    assert _png_size(shot) == (1280, 900) and len(shot) > 20_000

    # Data is text, never markup: a user id with markup characters is shown as typed.
    await dashboard.proxy.service.store.save_user(
        UserRecord(user_id="<img src=x onerror=alert(1)>", browser_url="http://127.0.0.1:1")
    )
    await tab.wait_until("document.querySelector('#users tbody').textContent.includes('<img src=x')", timeout=6)
    assert await tab.evaluate("document.querySelectorAll('#users img').length") == 0

    # A reload in the same tab stays signed in (the token is in sessionStorage).
    await tab.navigate(dashboard.url + "/admin")
    await tab.wait_until(f"document.querySelector('#users tbody').textContent.includes({json.dumps(USER)})")
    assert await tab.evaluate("document.getElementById('sign-in').hidden")

    await tab.click("#sign-out")
    assert tab.problems == []
    assert await tab.evaluate("sessionStorage.getItem('mcproxy.adminToken')") is None
    assert await tab.evaluate("document.getElementById('board').hidden")
    assert not await tab.evaluate("document.getElementById('sign-in').hidden")
    assert await tab.evaluate("document.querySelector('#users tbody').children.length") == 0


@pytest_twisted.ensureDeferred
async def test_sign_in_with_a_non_admin_or_wrong_token_says_so(dashboard, tab):
    await tab.navigate(dashboard.url + "/admin")
    user_token = await dashboard.proxy.token_for("someone", "tools:*", "register")
    await tab.sign_in(user_token)
    message = await tab.wait_until(
        "!document.getElementById('sign-in-error').hidden && document.getElementById('sign-in-error').textContent"
    )
    assert "not an admin token" in message
    assert await tab.evaluate("document.getElementById('board').hidden")
    assert await tab.evaluate("sessionStorage.getItem('mcproxy.adminToken')") is None
    assert await tab.evaluate("document.getElementById('token').getAttribute('aria-invalid')") == "true"

    await tab.evaluate("document.getElementById('token').value = ''")
    await tab.sign_in("mcpx_wrong")
    await tab.wait_until("document.getElementById('sign-in-error').textContent.includes('not accepted')")
    message = await tab.evaluate("document.getElementById('sign-in-error').textContent")
    assert "wrong, expired or revoked" in message and "admin" not in message
    assert await tab.evaluate("document.getElementById('board').hidden")


@pytest_twisted.ensureDeferred
async def test_phone_sized_viewport_has_no_horizontal_overflow(dashboard, reactor, chromium, tmp_path):
    await _traffic(dashboard, chromium)
    long_url = "http://127.0.0.1:1/" + "a-very-long-devtools-path-segment/" * 8
    await dashboard.proxy.service.store.save_user(UserRecord(user_id="x" * 100, browser_url=long_url))
    phone = await Tab.open(reactor, chromium, width=390, height=844, mobile=True)
    try:
        await phone.navigate(dashboard.url + "/admin")
        assert await phone.evaluate("innerWidth") == 390
        await phone.sign_in(dashboard.proxy.admin_token)
        await phone.wait_until(f"document.querySelector('#users tbody').textContent.includes({json.dumps(USER)})")
        widths = await phone.evaluate("[document.documentElement.scrollWidth, innerWidth, document.body.scrollWidth]")
        # A page wider than the screen would also widen the mobile layout viewport: compare with 390.
        assert widths[1] == 390 and widths[0] <= 390 and widths[2] <= 390, widths
        # Each cell carries its column name for the stacked phone layout.
        assert await phone.evaluate("document.querySelector('#users tbody td').dataset.label") == "User"
        shot = await phone.screenshot(tmp_path / "dashboard-phone.png")
        assert _png_size(shot) == (390 * 3, 844 * 3)
    finally:
        await phone.close()


@pytest_twisted.ensureDeferred
async def test_polling_pauses_while_the_tab_is_hidden(dashboard, tab, reactor):
    await tab.navigate(dashboard.url + "/admin")
    await tab.sign_in(dashboard.proxy.admin_token)
    await tab.wait_until("!document.getElementById('board').hidden")
    await deferLater(reactor, 3)
    assert len(dashboard.overview_requests) >= 2, "polls every 2 s while visible"
    await tab.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await deferLater(reactor, 0.5)  # a poll already on its way may still arrive
    before = len(dashboard.overview_requests)
    await deferLater(reactor, 4.5)
    assert len(dashboard.overview_requests) == before
    assert "Paused" in await tab.evaluate("document.getElementById('status').textContent")
    await tab.evaluate(
        "Object.defineProperty(document, 'hidden', {value: false, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await tab.wait_until("document.getElementById('status').textContent.startsWith('Updated')", timeout=3)
    assert len(dashboard.overview_requests) > before


def test_only_plain_files_of_known_types_are_loaded(tmp_path):
    from mcproxy.web.dashboard import load_static

    (tmp_path / "dashboard.html").write_text("<!doctype html>")
    (tmp_path / "app.js").write_text("1")
    (tmp_path / "notes.txt").write_text("not served")
    (tmp_path / ".hidden.js").write_text("not served")
    (tmp_path / "sub.css").mkdir()
    secret = tmp_path.parent / "secret.css"
    secret.write_text("outside")
    (tmp_path / "link.css").symlink_to(secret)
    files = load_static(str(tmp_path))
    assert files == {
        "dashboard.html": (b"<!doctype html>", b"text/html; charset=utf-8"),
        "app.js": (b"1", b"text/javascript; charset=utf-8"),
    }
