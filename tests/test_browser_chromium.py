"""Against a real headless Chromium: discovery, pages, serialization, crash and restart."""

import pytest
import pytest_twisted


@pytest_twisted.ensureDeferred
async def test_connect_and_list_pages(user_browser):
    assert user_browser.status == "connected"
    pages = user_browser.pages()
    assert pages, "Chromium starts with about:blank"
    assert all(p.session_id for p in pages)
    version = await user_browser.send("Browser.getVersion")
    assert "Chrome" in version["product"]


@pytest_twisted.ensureDeferred
async def test_new_page_loads_and_closes(user_browser, fixture_site):
    page = await user_browser.new_page(fixture_site.page(), opener="s1")
    assert page.via_proxy and page.opener == "s1"
    result = await page.send(
        "Runtime.evaluate", {"expression": "document.querySelector('h1').textContent", "returnByValue": True}
    )
    assert result["result"]["value"] == "mcproxy test page"
    assert page in user_browser.pages()
    await user_browser.close_page(page.page_id)
    assert page.closed and page not in user_browser.pages()


async def eventually(reactor, condition, timeout=15.0):
    """Poll ``condition`` until true (real time), failing after ``timeout`` seconds."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "condition not met in time"
        await deferLater(reactor, 0.05)


SLOW = {"expression": "new Promise(r => setTimeout(r, 300))", "awaitPromise": True}


@pytest_twisted.ensureDeferred
async def test_calls_on_one_page_queue_and_pages_run_concurrently(reactor, user_browser, fixture_site):
    from twisted.internet import defer

    one = await user_browser.new_page(fixture_site.page())
    two = await user_browser.new_page(fixture_site.page("second.html"))
    log = []

    async def slow(page, name):
        log.append(("start", name, reactor.seconds()))
        await page.send("Runtime.evaluate", SLOW)
        log.append(("end", name, reactor.seconds()))

    began = reactor.seconds()
    await defer.gatherResults(
        [one.run_exclusive(slow, one, "a"), one.run_exclusive(slow, one, "b"), two.run_exclusive(slow, two, "c")]
    )
    elapsed = reactor.seconds() - began
    at = {(kind, name): when for kind, name, when in log}
    assert at[("end", "a")] <= at[("start", "b")], "calls on one page must not overlap"
    assert at[("start", "c")] < at[("end", "a")], "another page must not wait"
    assert elapsed >= 0.55, "a and b ran one after the other"


@pytest_twisted.ensureDeferred
async def test_popups_a_page_opens_are_attached_once_and_run(reactor, user_browser, fixture_site):
    """Chrome holds new tabs for the pool (auto-attach); with no listener to wait for, a popup
    runs at once and becomes a page."""
    opener = await user_browser.new_page(fixture_site.page())
    before = {p.target_id for p in user_browser.pages()}
    await opener.send(
        "Runtime.evaluate", {"expression": f"window.open('{fixture_site.page('second.html')}'); 1", "userGesture": True}
    )
    await eventually(reactor, lambda: len(user_browser.pages()) > len(before))
    [popup] = [p for p in user_browser.pages() if p.target_id not in before]
    await eventually(reactor, lambda: popup.url == fixture_site.page("second.html"))
    title = await popup.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True})
    assert title["result"]["value"] == "Second page"
    await user_browser.close_page(popup.page_id)


@pytest_twisted.ensureDeferred
async def test_dropped_link_reconnects_and_keeps_page_ids(reactor, user_browser, fixture_site):
    page = await user_browser.new_page(fixture_site.page(), opener="s1")
    ids = [p.page_id for p in user_browser.pages()]
    old_session = page.session_id
    events = []
    user_browser.add_page_listener(lambda p, e: events.append((p.page_id, e)))
    user_browser.cdp.abort()
    await eventually(reactor, lambda: user_browser.status == "reconnecting")
    await eventually(reactor, lambda: user_browser.status == "connected")
    assert [p.page_id for p in user_browser.pages()] == ids
    assert user_browser.page(page.page_id) is page and page.opener == "s1"
    assert page.session_id and page.session_id != old_session
    assert (page.page_id, "reattached") in events
    result = await page.send("Runtime.evaluate", {"expression": "location.pathname", "returnByValue": True})
    assert result["result"]["value"] == "/index.html"


@pytest_twisted.ensureDeferred
async def test_chrome_killed_mid_call_then_restarted_on_the_same_port(
    reactor, private_chromium, browser_config, http_client, fixture_site
):
    import attrs

    from mcproxy.browser.pool import BrowserPool
    from mcproxy.errors import BrowserUnavailable

    pool = BrowserPool(reactor, attrs.evolve(browser_config, backoff_max=1.0), http_client)
    try:
        browser = pool.browser_for("bob", private_chromium.browser_url)
        await browser.connected(10)
        page = await browser.new_page(fixture_site.page())
        hanging = page.send(
            "Runtime.evaluate", {"expression": "new Promise(() => {})", "awaitPromise": True}, timeout=30
        )
        killed_at = reactor.seconds()
        await private_chromium.kill()
        with pytest.raises(BrowserUnavailable, match=r"lost during Runtime\.evaluate"):
            await hanging
        assert reactor.seconds() - killed_at < 2
        assert browser.status == "reconnecting"
        with pytest.raises(BrowserUnavailable, match="reconnecting in the background"):
            await browser.connected(5)
        with pytest.raises(BrowserUnavailable):
            await page.send("Runtime.evaluate", {"expression": "1"})
        await private_chromium.restart()
        await eventually(reactor, lambda: browser.status == "connected", timeout=20)
        assert page.closed, "the old tab died with the old browser"
        assert all(p.page_id > page.page_id for p in browser.pages()), "page ids are never reused"
        fresh = await browser.new_page(fixture_site.page("second.html"))
        result = await fresh.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True})
        assert result["result"]["value"] == "Second page"
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_bad_browser_urls(reactor, browser_pool, fixture_site):
    from twisted.internet.protocol import Factory

    from mcproxy.errors import BrowserUnavailable, InvalidBrowserURL

    with pytest.raises(InvalidBrowserURL, match="scheme"):
        browser_pool.browser_for("u1", "gopher://127.0.0.1:70")
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    free = port.getHost().port
    await port.stopListening()
    cases = [
        (f"http://127.0.0.1:{free}", f"nothing listens at http://127.0.0.1:{free}"),
        (fixture_site.origin, "is not a Chrome DevTools endpoint"),
        ("http://169.254.169.254:80", "link-local"),
        ("http://8.8.8.8:9222", "outside browser.allowed_networks"),
    ]
    for number, (url, message) in enumerate(cases):
        browser = browser_pool.browser_for(f"user{number}", url)
        with pytest.raises(BrowserUnavailable, match=message):
            await browser.connected(5)
        assert browser.status == "reconnecting"
        assert message in browser.last_error


@pytest_twisted.ensureDeferred
async def test_chrome_never_answers_websocket_pings(reactor, chromium, http_client):
    """Why the CDP connection does not use autobahn's auto-ping (the health check does that job)."""
    from twisted.internet.task import deferLater

    from mcproxy.browser.cdp.discovery import discover
    from mcproxy.browser.cdp.websocket import open_websocket

    ws_url = await discover(http_client, chromium.browser_url, timeout=5, clock=reactor)
    quiet = await open_websocket(reactor, ws_url, address="127.0.0.1", port=chromium.port)
    pinging = await open_websocket(reactor, ws_url, address="127.0.0.1", port=chromium.port, ping_interval=0.3)
    try:
        await deferLater(reactor, 1.5)
        assert "ping timeout" in (pinging.cdp.close_reason or "")
        assert (await quiet.cdp.send("Browser.getVersion"))["product"]
    finally:
        quiet.cdp.abort()
        pinging.cdp.abort()


@pytest_twisted.ensureDeferred
async def test_probe_browser_for_registration(reactor, chromium, browser_config, http_client, fixture_site):
    from mcproxy.browser.connect import probe_browser
    from mcproxy.errors import InvalidBrowserURL

    identity = await probe_browser(reactor, browser_config, chromium.browser_url, http_client)
    assert identity.product.startswith(("Chrome/", "HeadlessChrome/"))
    assert identity.endpoint == ("loopback", chromium.port) and identity.browser_id
    by_name = await probe_browser(reactor, browser_config, f"http://localhost:{chromium.port}")
    assert (by_name.product, by_name.browser_id, by_name.endpoint) == (
        identity.product,
        identity.browser_id,
        identity.endpoint,
    )
    with pytest.raises(InvalidBrowserURL, match="not a Chrome DevTools endpoint"):
        await probe_browser(reactor, browser_config, fixture_site.origin, http_client)
    with pytest.raises(InvalidBrowserURL, match="link-local"):
        await probe_browser(reactor, browser_config, "http://169.254.169.254:80", http_client)


@pytest_twisted.ensureDeferred
async def test_a_page_showing_a_dialog_does_not_block_reconnecting(reactor, user_browser, fixture_site):
    """Chrome answers Page.enable only after a dialog closes; the attach must not wait for it."""
    stuck = await user_browser.new_page(fixture_site.page())
    other = await user_browser.new_page(fixture_site.page("second.html"))
    opened = stuck.wait_for_event("Page.javascriptDialogOpening", timeout=5)
    await stuck.send("Runtime.evaluate", {"expression": "setTimeout(() => alert('hi'), 0); 1"})
    assert (await opened)["message"] == "hi"
    user_browser.cdp.abort()
    await eventually(reactor, lambda: user_browser.status == "reconnecting")
    began = reactor.seconds()
    await eventually(reactor, lambda: user_browser.status == "connected", timeout=5)
    assert reactor.seconds() - began < 3
    result = await other.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True})
    assert result["result"]["value"] == "Second page"
    await user_browser.close_page(stuck.page_id)
