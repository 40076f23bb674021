"""new_page with isolatedContext: named browser contexts with their own cookies and storage."""

import json

import pytest
import pytest_twisted

from mcproxy.testing.tool_calls import make_context, make_registry, ok, text_of

PAGE = "emulation_page.html"
READ_STORAGE = "() => [document.cookie, localStorage.getItem('who')]"


async def js(tools, context, page, function):
    """What ``function`` returns in ``page``, run by evaluate_script."""
    text = text_of(await ok(tools, context, "evaluate_script", pageId=page.page_id, function=function))
    return json.loads(text.split("```json\n", 1)[1].rsplit("\n```", 1)[0])


async def open_in(tools, context, browser, url, name=None):
    """A page opened through new_page (in context ``name``, if given)."""
    arguments = {"url": url} if name is None else {"url": url, "isolatedContext": name}
    result = await ok(tools, context, "new_page", **arguments)
    page = browser.page(context.session.selected_page_id)
    return page, text_of(result)


@pytest.fixture
def tools(reactor, user_browser):
    return make_registry(reactor, user_browser)


async def dispose_contexts(tools, context, browser):
    """Close the test's isolated pages and contexts: the Chromium is shared by the session."""
    for page in browser.pages():
        if browser.context_name(page) is not None:
            await ok(tools, context, "close_page", pageId=page.page_id)
    for context_id in browser.contexts.values():
        await browser.send("Target.disposeBrowserContext", {"browserContextId": context_id})
    browser.contexts.clear()


@pytest_twisted.ensureDeferred
async def test_contexts_keep_storage_apart(tools, user_browser, fixture_site):
    context = make_context()
    url = fixture_site.page(PAGE)
    try:
        first_a, _ = await open_in(tools, context, user_browser, url, "a")
        write = "() => { document.cookie = 'who=a; path=/'; localStorage.setItem('who', 'a'); return true; }"
        await js(tools, context, first_a, write)
        assert await js(tools, context, first_a, READ_STORAGE) == ["who=a", "a"]

        second_a, _ = await open_in(tools, context, user_browser, url, "a")
        assert await js(tools, context, second_a, READ_STORAGE) == ["who=a", "a"]
        only_b, _ = await open_in(tools, context, user_browser, url, "b")
        assert await js(tools, context, only_b, READ_STORAGE) == ["", None]
        default, _ = await open_in(tools, context, user_browser, url)
        assert await js(tools, context, default, READ_STORAGE) == ["", None]

        assert set(user_browser.contexts) == {"a", "b"}
        assert user_browser.contexts["a"] != user_browser.contexts["b"]
        assert [user_browser.context_name(p) for p in (first_a, second_a, only_b, default)] == ["a", "a", "b", None]

        # A context outlives its pages, as upstream keeps them for the server's lifetime...
        for page in (first_a, second_a):
            await ok(tools, context, "close_page", pageId=page.page_id)
        again_a, _ = await open_in(tools, context, user_browser, url, "a")
        assert await js(tools, context, again_a, READ_STORAGE) == ["who=a", "a"]

        # ...but when Chrome no longer has it (restarted, or closed by someone), a fresh one is made.
        await ok(tools, context, "close_page", pageId=again_a.page_id)
        lost = user_browser.contexts["a"]
        await user_browser.send("Target.disposeBrowserContext", {"browserContextId": lost})
        fresh_a, _ = await open_in(tools, context, user_browser, url, "a")
        assert user_browser.contexts["a"] != lost
        assert await js(tools, context, fresh_a, READ_STORAGE) == ["", None]
    finally:
        await dispose_contexts(tools, context, user_browser)


@pytest_twisted.ensureDeferred
async def test_page_list_names_the_context(tools, user_browser, fixture_site):
    context = make_context()
    url = fixture_site.page(PAGE)
    try:
        page, listing = await open_in(tools, context, user_browser, url, "tenantA")
        assert f"{page.page_id}: Emulation page ({url}) [selected] isolatedContext=tenantA" in listing
        listing = text_of(await ok(tools, context, "list_pages"))
        assert f"{page.page_id}: Emulation page ({url}) [selected] isolatedContext=tenantA" in listing
    finally:
        await dispose_contexts(tools, context, user_browser)
