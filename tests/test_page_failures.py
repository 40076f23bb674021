"""Pages misbehaving under a running tool, against real Chromium: a tab closed by the human,
a page navigating away mid-action, a crashed renderer, and dialogs opening during tools
that are not input tools. None of them may leave a tool hanging until the CDP timeout."""

import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from mcproxy.browser.pool import BrowserPool
from mcproxy.testing import tool_calls
from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, sleep, text_of, uid_of

#: A tool cut short by the event under test must answer well within this (the tools'
#: own timeouts are 8 s or more).
QUICK = 2.5


@pytest.fixture
def tools(reactor, user_browser):
    return make_registry(reactor, user_browser)


@pytest_twisted.async_yield_fixture()
async def human(reactor, browser_config, http_client, chromium):
    """Another DevTools client on the same Chromium, standing in for the person at the keyboard."""
    pool = BrowserPool(reactor, browser_config, http_client)
    browser = pool.browser_for("human", chromium.browser_url)
    await browser.connected(10)
    yield browser
    await pool.close()


async def open_page(tools, fixture_site):
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("pf_page.html"))
    return context, context.session.selected_page_id


def soon(reactor, seconds, fn) -> Deferred:
    """Run ``fn`` (a coroutine function) after ``seconds``, while the test awaits a tool."""

    async def run():
        await sleep(reactor, seconds)
        return await fn()

    return Deferred.fromCoroutine(run())


async def until(reactor, condition):
    """Wait (up to 5 s) for ``condition()`` to hold; assert it does."""
    await tool_calls.until(reactor, condition, timeout=5.0)


def listed(text: str, page_id: int) -> bool:
    return any(line.startswith(f"{page_id}: ") for line in text.split("## Pages\n", 1)[-1].splitlines())


def crashed_text(page_id: int) -> str:
    return f"Page {page_id} crashed; reload it with navigate_page type=reload or close it."


async def crash(page):
    """Crash the page's renderer (Chrome never answers Page.crash itself)."""
    page.send("Page.crash").addErrback(lambda _: None)


async def timed_failure(tools, context, name, **arguments):
    started = time.monotonic()
    text = await failed(tools, context, name, **arguments)
    assert time.monotonic() - started < QUICK, text
    return text


# -- a tab closed by the human ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tab_closed_by_human_during_wait_for(reactor, tools, user_browser, human, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    target = user_browser.page(page_id).target_id
    closing = soon(reactor, 0.3, lambda: human.send("Target.closeTarget", {"targetId": target}))
    text = await timed_failure(tools, context, "wait_for", pageId=page_id, text=["never there"], timeout=8000)
    await closing
    assert text.startswith(f"page {page_id} was closed (in the browser or by a script)"), text
    assert not listed(text_of(await ok(tools, context, "list_pages")), page_id)


@pytest_twisted.ensureDeferred
async def test_tab_closed_by_human_during_click(reactor, tools, user_browser, human, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    target = user_browser.page(page_id).target_id
    # The button's handler keeps the page busy for seconds, so the close lands while click runs.
    busy = (
        "() => { document.getElementById('later').onclick ="
        " () => { const end = Date.now() + 4000; while (Date.now() < end); }; }"
    )
    await ok(tools, context, "evaluate_script", pageId=page_id, function=busy)
    closing = soon(reactor, 0.3, lambda: human.send("Target.closeTarget", {"targetId": target}))
    text = await timed_failure(tools, context, "click", pageId=page_id, uid=uid_of(snapshot, 'button "Alert later"'))
    await closing
    assert f"page {page_id} was closed" in text
    assert not listed(text_of(await ok(tools, context, "list_pages")), page_id)


# -- a page that navigates away mid-action -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_click_on_a_link_that_navigates(tools, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    uid = uid_of(snapshot, 'link "Go away"')
    result = await ok(tools, context, "click", pageId=page_id, uid=uid, includeSnapshot=True)
    assert 'heading "Second page"' in text_of(result)
    assert fixture_site.page("second.html") in text_of(await ok(tools, context, "list_pages"))


@pytest_twisted.ensureDeferred
async def test_fill_that_makes_the_page_navigate(tools, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    uid = uid_of(snapshot, 'textbox "Name"')  # its input handler loads second.html
    result = await ok(tools, context, "fill", pageId=page_id, uid=uid, value="abc", includeSnapshot=True)
    assert 'heading "Second page"' in text_of(result), text_of(result)
    assert fixture_site.page("second.html") in text_of(await ok(tools, context, "list_pages"))


# -- a crashed renderer ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_crash_before_a_tool_then_reload_recovers(reactor, tools, user_browser, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    page = user_browser.page(page_id)
    await crash(page)
    await until(reactor, lambda: page.crashed)
    for name, arguments in (
        ("take_snapshot", {}),
        ("evaluate_script", {"function": "() => 1"}),
        ("wait_for", {"text": ["x"]}),
    ):
        text = await timed_failure(tools, context, name, pageId=page_id, **arguments)
        assert text == crashed_text(page_id), (name, text)
    result = await ok(tools, context, "navigate_page", pageId=page_id, type="reload")
    assert "Successfully reloaded the page." in text_of(result)
    assert not page.crashed
    assert 'heading "Failures page"' in text_of(await ok(tools, context, "take_snapshot", pageId=page_id))


@pytest_twisted.ensureDeferred
async def test_crash_during_a_tool(reactor, tools, user_browser, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    crashing = soon(reactor, 0.3, lambda: crash(user_browser.page(page_id)))
    text = await timed_failure(tools, context, "wait_for", pageId=page_id, text=["never there"], timeout=8000)
    await crashing
    assert text == crashed_text(page_id)
    # The crashed tab stays open, marked, until it is reloaded or closed.
    pages = text_of(await ok(tools, context, "list_pages"))
    assert listed(pages, page_id) and f"{page_id}: " in pages and "[crashed]" in pages
    await ok(tools, context, "close_page", pageId=page_id)
    assert not listed(text_of(await ok(tools, context, "list_pages")), page_id)


@pytest_twisted.ensureDeferred
async def test_crashed_tab_seen_by_a_later_session_and_reloaded_elsewhere(reactor, tools, user_browser, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    page = user_browser.page(page_id)
    await crash(page)
    await until(reactor, lambda: page.crashed)
    # A DevTools client attaching after the crash learns of it from Inspector.enable.
    late_pool = BrowserPool(reactor, user_browser.config, user_browser.http_client)
    try:
        late = late_pool.browser_for("late", user_browser.browser_url)
        await late.connected(10)
        twin = next(p for p in late.pages() if p.target_id == page.target_id)
        await until(reactor, lambda: twin.crashed)
        # Someone else reloads the tab: every session learns that the renderer is back.
        await twin.send("Page.reload")
        await until(reactor, lambda: not page.crashed and not twin.crashed)
    finally:
        await late_pool.close()
    found = await ok(tools, context, "wait_for", pageId=page_id, text=["Failures page"])
    assert 'heading "Failures page"' in text_of(found)


@pytest_twisted.ensureDeferred
async def test_tab_reloaded_while_the_proxy_was_away(reactor, tools, user_browser, human, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    page = user_browser.page(page_id)
    await crash(page)
    await until(reactor, lambda: page.crashed)
    user_browser.cdp.abort()  # the proxy loses its link and reconnects after its backoff
    twin = next(p for p in human.pages() if p.target_id == page.target_id)
    await twin.send("Page.reload")
    await until(reactor, lambda: user_browser.status == "connected" and page.session_id is not None)
    assert user_browser.page(page_id) is page and not page.crashed
    found = await ok(tools, context, "wait_for", pageId=page_id, text=["Failures page"])
    assert 'heading "Failures page"' in text_of(found)


# -- dialogs during tools that are not input tools ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_dialog_during_evaluate_script(tools, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    started = time.monotonic()
    ask = "() => confirm('sure?') ? 'yes' : 'no'"
    result = await ok(tools, context, "evaluate_script", pageId=page_id, function=ask, dialogAction="dismiss")
    assert '"no"' in text_of(result)
    assert time.monotonic() - started < QUICK


@pytest_twisted.ensureDeferred
async def test_dialog_during_wait_for(tools, fixture_site):
    context, page_id = await open_page(tools, fixture_site)
    await ok(
        tools,
        context,
        "evaluate_script",
        pageId=page_id,
        function="() => { setTimeout(() => alert('late alert'), 300); }",
    )
    text = await timed_failure(tools, context, "wait_for", pageId=page_id, text=["never there"], timeout=8000)
    assert text == (
        f'Page {page_id} opened an alert dialog ("late alert") while the tool ran, and it blocks the page. '
        'Call handle_dialog with action "accept" or "dismiss", then try again.'
    )
    await ok(tools, context, "handle_dialog", pageId=page_id, action="accept")
    assert 'heading "Failures page"' in text_of(await ok(tools, context, "take_snapshot", pageId=page_id))


@pytest.mark.parametrize("tool", ["take_snapshot", "take_screenshot"])
@pytest_twisted.ensureDeferred
async def test_dialog_during_a_reading_tool(tools, fixture_site, tool):
    context, page_id = await open_page(tools, fixture_site)
    # The page is busy when the tool asks, and opens a dialog before it can answer.
    opener = (
        "() => { setTimeout(() => { const end = Date.now() + 400; while (Date.now() < end);"
        " prompt('snap prompt'); }, 0); }"
    )
    await ok(tools, context, "evaluate_script", pageId=page_id, function=opener, waitForStableDom=False)
    text = await timed_failure(tools, context, tool, pageId=page_id)
    assert f'Page {page_id} opened a prompt dialog ("snap prompt")' in text
    await ok(tools, context, "handle_dialog", pageId=page_id, action="dismiss")
    assert 'heading "Failures page"' in text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
