"""The core tools driven through ToolRegistry against a real headless Chromium."""

import base64
import re
import time

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError

from mcproxy.testing.tool_calls import make_context, make_registry, ok, sleep, text_of, uid_of

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"


@pytest.fixture
def tools(reactor, user_browser):
    return make_registry(reactor, user_browser)


async def open_form(tools, context, fixture_site, name="tools_form.html"):
    result = await ok(tools, context, "new_page", url=fixture_site.page(name))
    page_id = context.session.selected_page_id
    assert page_id is not None
    return page_id, text_of(result)


@pytest_twisted.ensureDeferred
async def test_form_flow(tools, fixture_site):
    context = make_context()
    page_id, pages = await open_form(tools, context, fixture_site)
    url = fixture_site.page("tools_form.html")
    assert pages.startswith("## Pages\n")
    assert f"{page_id}: Tools Test Page ({url}) [selected]" in pages

    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    assert snapshot.startswith("## Latest page snapshot\n")
    assert re.search(r'uid=\d+_0 RootWebArea "Tools Test Page" url="' + re.escape(url), snapshot)
    name = uid_of(snapshot, 'textbox "Name"')
    agree = uid_of(snapshot, 'checkbox "Agree"')
    color = uid_of(snapshot, 'combobox "Color"')
    submit = uid_of(snapshot, 'button "Submit"')

    result = await ok(tools, context, "fill", pageId=page_id, uid=name, value="Alice")
    assert text_of(result) == "Successfully filled out the element"
    await ok(tools, context, "fill", pageId=page_id, uid=agree, value="true")
    await ok(tools, context, "fill", pageId=page_id, uid=color, value="blue")

    result = await ok(tools, context, "click", pageId=page_id, uid=submit, includeSnapshot=True)
    after = text_of(result)
    assert after.startswith("Successfully clicked on the element\n## Latest page snapshot\n")
    # Known elements keep their uids; the new text node gets one from the new snapshot.
    assert f'uid={name} textbox "Name" value="Alice"' in after
    assert f'uid={agree} checkbox "Agree" checked' in after
    assert f'uid={color} combobox "Color" expandable haspopup="menu" value="blue"' in after
    assert f'uid={submit} button "Submit" focusable focused' in after
    new_text = uid_of(after, '"clicked Alice"')
    assert new_text.split("_")[0] != name.split("_")[0]

    result = await ok(tools, context, "wait_for", pageId=page_id, text=["nowhere", "clicked Alice"])
    assert text_of(result).startswith(
        'Element matching one of ["nowhere","clicked Alice"] found.\n## Latest page snapshot\n'
    )

    script = (
        "() => ({out: document.getElementById('out').textContent, color: document.getElementById('color').value,"
        " agree: document.getElementById('agree').checked})"
    )
    result = await ok(tools, context, "evaluate_script", pageId=page_id, function=script)
    assert (
        text_of(result)
        == 'Script ran on page and returned:\n```json\n{"out":"clicked Alice","color":"b","agree":true}\n```'
    )
    result = await ok(
        tools, context, "evaluate_script", pageId=page_id, function="(a, b) => [a.id, b.value]", args=[submit, name]
    )
    assert text_of(result).endswith('```json\n["btn","Alice"]\n```')

    result = await ok(tools, context, "take_screenshot", pageId=page_id)
    assert text_of(result) == "Took a screenshot of the current page's viewport."
    image = result["content"][1]
    assert image["mimeType"] == "image/png" and base64.b64decode(image["data"]).startswith(PNG_SIGNATURE)
    result = await ok(tools, context, "take_screenshot", pageId=page_id, format="jpeg", quality=60, fullPage=True)
    assert text_of(result) == "Took a screenshot of the full current page."
    assert result["content"][1]["mimeType"] == "image/jpeg"
    assert base64.b64decode(result["content"][1]["data"]).startswith(JPEG_SOI)
    result = await ok(tools, context, "take_screenshot", pageId=page_id, uid=submit)
    assert text_of(result) == f'Took a screenshot of node with uid "{submit}".'
    element_png = base64.b64decode(result["content"][1]["data"])
    assert element_png.startswith(PNG_SIGNATURE) and len(element_png) < len(base64.b64decode(image["data"]))


@pytest_twisted.ensureDeferred
async def test_keyboard(tools, fixture_site):
    context = make_context()
    page_id, _ = await open_form(tools, context, fixture_site)
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    await ok(tools, context, "click", pageId=page_id, uid=uid_of(snapshot, 'textbox "Name"'))
    result = await ok(tools, context, "type_text", pageId=page_id, text="xyz")
    assert text_of(result) == 'Typed text "xyz"'
    result = await ok(tools, context, "press_key", pageId=page_id, key="Control+A")
    assert text_of(result) == "Successfully pressed key: Control+A"
    await ok(tools, context, "type_text", pageId=page_id, text="Q-1", submitKey="Tab")
    result = await ok(
        tools,
        context,
        "evaluate_script",
        pageId=page_id,
        function=(
            "() => [document.getElementById('name').value, document.getElementById('keys').textContent,"
            " document.activeElement.id]"
        ),
    )
    assert '["Q-1","[x][y][z][C-Control][C-A][Q][-][1][Tab]","agree"]' in text_of(result)
    result = await tools.call_tool("press_key", {"pageId": page_id, "key": "Hyper+x"}, context)
    assert result["isError"] and 'Unknown modifier "Hyper"' in text_of(result)


@pytest_twisted.ensureDeferred
async def test_navigate_back_forward_reload(tools, fixture_site):
    context = make_context()
    page_id, _ = await open_form(tools, context, fixture_site)
    second = fixture_site.page("tools_second.html")
    result = await ok(tools, context, "navigate_page", pageId=page_id, type="url", url=second)
    assert text_of(result).startswith(f"Successfully navigated to {second}.\n## Pages\n")
    assert f"{page_id}: Second Tools Page ({second}) [selected]" in text_of(result)
    result = await ok(tools, context, "navigate_page", pageId=page_id, type="back")
    assert text_of(result).startswith(
        f"Successfully navigated back to {fixture_site.page('tools_form.html')}.\n## Pages\n"
    )
    result = await ok(tools, context, "navigate_page", pageId=page_id, type="forward")
    assert text_of(result).startswith(f"Successfully navigated forward to {second}.")
    result = await ok(tools, context, "navigate_page", pageId=page_id, type="reload", ignoreCache=True)
    assert text_of(result).startswith("Successfully reloaded the page.\n## Pages\n")
    result = await tools.call_tool("navigate_page", {"pageId": page_id, "type": "forward"}, context)
    assert result["isError"] and "no next page" in text_of(result)
    result = await tools.call_tool("navigate_page", {"pageId": page_id, "url": "http://127.0.0.1:9/"}, context)
    assert result["isError"] and text_of(result) == "Navigation failed: net::ERR_UNSAFE_PORT."
    result = await ok(
        tools,
        context,
        "navigate_page",
        pageId=page_id,
        url=fixture_site.page("tools_form.html"),
        initScript="window.fromInit = 42",
    )
    result = await ok(tools, context, "evaluate_script", pageId=page_id, function="() => window.fromInit")
    assert text_of(result).endswith("```json\n42\n```")


@pytest_twisted.ensureDeferred
async def test_stale_and_unknown_uids(tools, fixture_site):
    context = make_context()
    page_id, _ = await open_form(tools, context, fixture_site)
    result = await tools.call_tool("click", {"pageId": page_id, "uid": "1_1"}, context)
    assert result["isError"] and "take_snapshot first" in text_of(result)
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    submit = uid_of(snapshot, 'button "Submit"')
    result = await tools.call_tool("click", {"pageId": page_id, "uid": "9_99"}, context)
    assert result["isError"] and 'Element uid "9_99" not found' in text_of(result)
    assert "take a new snapshot" in text_of(result).lower()
    await ok(
        tools, context, "evaluate_script", pageId=page_id, function="() => document.getElementById('btn').remove()"
    )
    for name, extra in (("click", {}), ("fill", {"value": "x"}), ("take_screenshot", {})):
        result = await tools.call_tool(name, {"pageId": page_id, "uid": submit, **extra}, context)
        assert result["isError"], name
        assert "no longer exists" in text_of(result) and "take a new snapshot" in text_of(result).lower(), name
    await ok(tools, context, "navigate_page", pageId=page_id, url=fixture_site.page("tools_second.html"))
    result = await tools.call_tool("click", {"pageId": page_id, "uid": uid_of(snapshot, 'button "Alert"')}, context)
    assert result["isError"] and "take a new snapshot" in text_of(result).lower()


@pytest_twisted.ensureDeferred
async def test_settling_waits_for_dom_and_navigation(tools, fixture_site):
    context = make_context()
    page_id, _ = await open_form(tools, context, fixture_site)
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    await ok(tools, context, "click", pageId=page_id, uid=uid_of(snapshot, 'button "Busy"'))
    result = await ok(
        tools,
        context,
        "evaluate_script",
        pageId=page_id,
        function="() => document.getElementById('ticks').textContent",
        waitForStableDom=False,
    )
    assert text_of(result).endswith('"tick 6"\n```')
    result = await ok(
        tools, context, "click", pageId=page_id, uid=uid_of(snapshot, 'button "Go"'), includeSnapshot=True
    )
    assert 'RootWebArea "Second Tools Page"' in text_of(result)


@pytest_twisted.ensureDeferred
async def test_dialog_does_not_hang(tools, fixture_site, user_browser):
    context = make_context()
    page_id, _ = await open_form(tools, context, fixture_site)
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    started = time.monotonic()
    result = await ok(tools, context, "click", pageId=page_id, uid=uid_of(snapshot, 'button "Alert"'))
    assert time.monotonic() - started < 2
    assert text_of(result) == (
        "The element was clicked and it opened a dialog.\n# Open dialog\nalert: hello dialog.\n"
        "Call handle_dialog to handle it before continuing."
    )
    await user_browser.page(page_id).send("Page.handleJavaScriptDialog", {"accept": True})
    result = await ok(tools, context, "evaluate_script", pageId=page_id, function="() => { alert('again'); return 1; }")
    assert text_of(result).endswith("```json\n1\n```")


@pytest_twisted.ensureDeferred
async def test_unknown_page_and_scope(reactor, user_browser, fixture_site):
    tools = make_registry(reactor, user_browser)
    alice_a, alice_b = make_context("A"), make_context("B")
    page_id, _ = await open_form(tools, alice_a, fixture_site)
    result = await tools.call_tool("take_snapshot", {"pageId": 999}, alice_a)
    assert result["isError"]
    assert text_of(result) == "No page with id 999. Call list_pages to see the pages you can use."
    listed = await ok(tools, alice_b, "list_pages")
    assert listed["structuredContent"] == {"pages": []}
    result = await tools.call_tool("take_snapshot", {"pageId": page_id}, alice_b)
    assert text_of(result) == f"No page with id {page_id}. Call list_pages to see the pages you can use."
    mine = await ok(tools, alice_a, "list_pages")
    assert {
        "id": page_id,
        "url": fixture_site.page("tools_form.html"),
        "title": "Tools Test Page",
        "selected": True,
    } in mine["structuredContent"]["pages"]

    for scope, session in (("user", "B"), ("session", None)):
        wider = make_registry(reactor, user_browser, tab_scope=scope)
        context = make_context(session)
        listed = await ok(wider, context, "list_pages")
        assert page_id in [p["id"] for p in listed["structuredContent"]["pages"]]
        await ok(wider, context, "take_snapshot", pageId=page_id)
    # Tabs the proxy did not open are only visible under "browser".
    foreign = [p.page_id for p in user_browser.pages() if not p.via_proxy]
    assert foreign
    result = await make_registry(reactor, user_browser, tab_scope="user").call_tool(
        "take_snapshot", {"pageId": foreign[0]}, alice_a
    )
    assert result["isError"]
    await ok(make_registry(reactor, user_browser, tab_scope="browser"), alice_a, "take_snapshot", pageId=foreign[0])


@pytest_twisted.ensureDeferred
async def test_cancel_wait_for(reactor, tools, fixture_site, user_browser):
    context = make_context()
    page_id, _ = await open_form(tools, context, fixture_site)
    page = user_browser.page(page_id)
    waiting = tools.call_tool("wait_for", {"pageId": page_id, "text": ["never shown"], "timeout": 20000}, context)
    await sleep(reactor, 0.2)
    assert not waiting.called and page.busy
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    assert not page.busy
    started = time.monotonic()
    await ok(tools, context, "take_snapshot", pageId=page_id)
    assert time.monotonic() - started < 1
    await sleep(reactor, 0.2)
    assert user_browser.cdp.pending_count == 0
    result = await ok(tools, context, "wait_for", pageId=page_id, text=["not clicked"], timeout=300)
    assert text_of(result).startswith('Element matching one of ["not clicked"] found.')


@pytest_twisted.ensureDeferred
async def test_wait_for_timeout_and_navigation(reactor, tools, fixture_site):
    context = make_context()
    page_id, _ = await open_form(tools, context, fixture_site)
    started = time.monotonic()
    result = await tools.call_tool("wait_for", {"pageId": page_id, "text": ["never shown"], "timeout": 300}, context)
    assert result["isError"]
    assert text_of(result) == 'Timed out after 300 ms waiting for any of ["never shown"] to appear.'
    assert 0.25 < time.monotonic() - started < 2
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    await ok(tools, context, "click", pageId=page_id, uid=uid_of(snapshot, 'button "Later"'))
    result = await ok(tools, context, "wait_for", pageId=page_id, text=["late text"], timeout=3000)
    assert '"late text"' in text_of(result)
    # The text shows up on another document after a navigation.
    await ok(
        tools,
        context,
        "evaluate_script",
        pageId=page_id,
        function="() => { setTimeout(() => { location.href = 'tools_second.html'; }, 100); }",
    )
    result = await ok(tools, context, "wait_for", pageId=page_id, text=["You arrived."], timeout=5000)
    assert "You arrived." in text_of(result)


@pytest_twisted.ensureDeferred
async def test_argument_and_permission_errors(tools, fixture_site):
    context = make_context()
    cases = [
        ("take_snapshot", {}, 'Missing required argument "pageId".'),
        ("take_snapshot", {"pageId": "1"}, 'Invalid argument "pageId": expected a number, got a string.'),
        (
            "navigate_page",
            {"pageId": 1, "type": "sideways"},
            'Invalid argument "type": must be one of "url", "back", "forward", "reload", got \'sideways\'.',
        ),
        ("wait_for", {"pageId": 1, "text": []}, 'Invalid argument "text": must have at least 1 item(s).'),
        ("wait_for", {"pageId": 1, "text": ["a", 2]}, 'Invalid argument "text"[1]: expected a string, got an integer.'),
        ("take_screenshot", {"pageId": 1, "quality": 101}, 'Invalid argument "quality": must be at most 100, got 101.'),
        ("click", {"pageId": 1, "uid": "1_1", "button": "left"}, 'Unknown argument "button"'),
        ("evaluate_script", {"function": "() => 1"}, 'Missing required argument "pageId".'),
        ("no_such_tool", {}, 'Unknown tool "no_such_tool". Call tools/list to see the tools you can use.'),
    ]
    for name, arguments, expected in cases:
        result = await tools.call_tool(name, arguments, context)
        assert result["isError"], name
        assert text_of(result).startswith(expected), text_of(result)
    limited = make_context(permissions=("tools:category:navigation",))
    result = await tools.call_tool("click", {"pageId": 1, "uid": "1_1"}, limited)
    assert result["isError"] and '"tools:click", "tools:category:input" or "tools:*"' in text_of(result)
    assert [t.name for t in tools.list_tools(limited.principal)] == [
        "list_pages",
        "select_page",
        "new_page",
        "close_page",
        "navigate_page",
        "wait_for",
    ]


@pytest_twisted.ensureDeferred
async def test_select_and_close_pages(tools, fixture_site, user_browser):
    context = make_context()
    first_id, _ = await open_form(tools, context, fixture_site)
    second_id, pages = await open_form(tools, context, fixture_site, "tools_second.html")
    assert f"{first_id}: Tools Test Page (" in pages and f"{second_id}: Second Tools Page (" in pages
    assert pages.endswith("[selected]") and pages.count("[selected]") == 1
    result = await ok(tools, context, "select_page", pageId=first_id, bringToFront=True)
    assert f"{first_id}: Tools Test Page ({fixture_site.page('tools_form.html')}) [selected]" in text_of(result)
    assert context.session.selected_page_id == first_id
    result = await ok(tools, context, "close_page", pageId=second_id)
    assert (
        text_of(result) == f"## Pages\n{first_id}: Tools Test Page ({fixture_site.page('tools_form.html')}) [selected]"
    )
    assert second_id not in [p.page_id for p in user_browser.pages()]
    result = await tools.call_tool("close_page", {"pageId": second_id}, context)
    assert result["isError"] and text_of(result).startswith(f"No page with id {second_id}.")


@pytest_twisted.ensureDeferred
async def test_list_pages_asks_chrome_for_its_targets_once(tools, user_browser, fixture_site, monkeypatch):
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("tools_second.html"))
    sent = []
    real = user_browser.send
    monkeypatch.setattr(user_browser, "send", lambda method, *a, **k: sent.append(method) or real(method, *a, **k))
    result = await ok(tools, context, "list_pages")
    assert sent.count("Target.getTargets") == 1
    assert [page["id"] for page in result["structuredContent"]["pages"]] == [context.session.selected_page_id]
