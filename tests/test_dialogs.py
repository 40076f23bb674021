"""Dialog tracking (track_dialogs), handle_dialog, and tools failing fast while a dialog is open."""

import time

import pytest
import pytest_twisted

from mcproxy.browser.dialogs import PROBE_WINDOW, track_dialogs
from mcproxy.browser.pool import BrowserPool
from mcproxy.errors import ToolError
from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, sleep, text_of, uid_of
from mcproxy.tools.call import Response
from mcproxy.tools.dialogs import add_dialog_note, dialog_note, pending_dialog, require_no_dialog

READ_OUTPUT = "() => document.getElementById('output').textContent"


async def _tracked(reactor, browser_config, http_client, chromium, user_id):
    pool = BrowserPool(reactor, browser_config, http_client, page_listeners=[track_dialogs])
    browser = pool.browser_for(user_id, chromium.browser_url)
    await browser.connected(10)
    return pool, browser


@pytest_twisted.async_yield_fixture()
async def tracked(reactor, browser_config, http_client, chromium):
    """Alice's browser in a pool that tracks dialogs; the pages it opened are closed afterwards."""
    pool, browser = await _tracked(reactor, browser_config, http_client, chromium, "alice")
    before = {page.target_id for page in browser.pages()}
    yield browser
    for page in browser.pages():
        if page.target_id not in before:
            await browser.close_page(page.page_id)
    await pool.close()


@pytest.fixture
def tools(reactor, tracked):
    return make_registry(reactor, tracked)


async def open_form(tools, fixture_site):
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("input_form.html"))
    page_id = context.session.selected_page_id
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))
    return context, page_id, snapshot


async def output(tools, context, page_id) -> str:
    return text_of(await ok(tools, context, "evaluate_script", pageId=page_id, function=READ_OUTPUT)).split(
        "```json\n"
    )[1][:-4]


@pytest_twisted.ensureDeferred
async def test_alert_blocks_until_handled(tools, tracked, fixture_site):
    context, page_id, snapshot = await open_form(tools, fixture_site)
    page = tracked.page(page_id)
    assert pending_dialog(page) is None and dialog_note(page) is None
    result = await ok(tools, context, "click", pageId=page_id, uid=uid_of(snapshot, 'button "Alert"'))
    note = "# Open dialog\nalert: just so you know.\nCall handle_dialog to handle it before continuing."
    assert text_of(result) == "The element was clicked and it opened a dialog.\n" + note
    assert pending_dialog(page) == {
        "type": "alert",
        "message": "just so you know",
        "defaultPrompt": "",
        "url": fixture_site.page("input_form.html"),
    }
    assert dialog_note(page) == note

    # Every input tool refuses at once instead of timing out.
    first = uid_of(snapshot, 'textbox "First name"')
    calls = [
        ("click", {"uid": uid_of(snapshot, 'button "Plain button"')}),
        ("fill", {"uid": first, "value": "x"}),
        ("fill_form", {"elements": [{"uid": first, "value": "x"}]}),
        ("hover", {"uid": first}),
        ("drag", {"from_uid": first, "to_uid": first}),
        ("upload_file", {"uid": uid_of(snapshot, 'button "Upload"'), "filePaths": ["/etc/hostname"]}),
        ("press_key", {"key": "Enter"}),
        ("type_text", {"text": "x"}),
    ]
    for name, arguments in calls:
        started = time.monotonic()
        text = await failed(tools, context, name, pageId=page_id, **arguments)
        assert time.monotonic() - started < 0.5, name
        assert text == (
            f'Page {page_id} shows a alert dialog ("just so you know"), which blocks it. '
            'Call handle_dialog with action "accept" or "dismiss" first, then try again.'
        ), name

    result = await ok(tools, context, "handle_dialog", pageId=page_id, action="accept")
    assert text_of(result).startswith("Successfully accepted the dialog\n## Pages\n")
    assert f"{page_id}: Input Form Page ({fixture_site.page('input_form.html')}) [selected]" in text_of(result)
    assert pending_dialog(page) is None and dialog_note(page) is None
    assert await output(tools, context, page_id) == '"alert closed"'
    text = await failed(tools, context, "handle_dialog", pageId=page_id, action="accept")
    assert text.startswith(f"No open dialog found on page {page_id}.")


@pytest_twisted.ensureDeferred
async def test_confirm_and_prompt_answers_reach_the_page(tools, tracked, fixture_site):
    context, page_id, snapshot = await open_form(tools, fixture_site)
    page = tracked.page(page_id)
    confirm, prompt = uid_of(snapshot, 'button "Confirm"'), uid_of(snapshot, 'button "Prompt"')
    for action, shown in (("dismiss", '"confirm false"'), ("accept", '"confirm true"')):
        result = await ok(tools, context, "click", pageId=page_id, uid=confirm)
        assert text_of(result).endswith(
            "# Open dialog\nconfirm: Delete it?.\nCall handle_dialog to handle it before continuing."
        )
        result = await ok(tools, context, "handle_dialog", pageId=page_id, action=action)
        assert text_of(result).startswith(f"Successfully {action}ed the dialog\n## Pages\n")
        assert await output(tools, context, page_id) == shown

    result = await ok(tools, context, "click", pageId=page_id, uid=prompt)
    assert '# Open dialog\nprompt: Your name? (default value: "nobody").\n' in text_of(result)
    assert pending_dialog(page)["defaultPrompt"] == "nobody"
    await ok(tools, context, "handle_dialog", pageId=page_id, action="accept", promptText="Zed")
    assert await output(tools, context, page_id) == '"prompt Zed"'
    await ok(tools, context, "click", pageId=page_id, uid=prompt)
    await ok(tools, context, "handle_dialog", pageId=page_id, action="accept")
    assert await output(tools, context, page_id) == '"prompt nobody"'
    await ok(tools, context, "click", pageId=page_id, uid=prompt)
    result = await ok(tools, context, "handle_dialog", pageId=page_id, action="dismiss", promptText="ignored")
    assert text_of(result).startswith("Successfully dismissed the dialog\n")
    assert await output(tools, context, page_id) == '"prompt null"'


@pytest_twisted.ensureDeferred
async def test_dialog_opened_by_the_page_is_noted(reactor, tools, tracked, fixture_site):
    context, page_id, _ = await open_form(tools, fixture_site)
    page = tracked.page(page_id)
    await ok(
        tools,
        context,
        "evaluate_script",
        pageId=page_id,
        function="() => { setTimeout(() => { output.textContent = 'confirmed ' + confirm('Later?'); }, 400); }",
    )
    await sleep(reactor, 0.8)
    note = "# Open dialog\nconfirm: Later?.\nCall handle_dialog to handle it before continuing."
    assert dialog_note(page) == note
    # What the registry appends to every response on the page, once.
    response = add_dialog_note(page, Response().add("Some result"))
    assert response.lines == ["Some result", note]
    assert add_dialog_note(page, response).lines == ["Some result", note]
    with pytest.raises(ToolError, match=r'shows a confirm dialog \("Later\?"\)'):
        require_no_dialog(page)
    await ok(tools, context, "handle_dialog", pageId=page_id, action="accept")
    assert await output(tools, context, page_id) == '"confirmed true"'
    assert add_dialog_note(page, Response().add("Some result")).lines == ["Some result"]


@pytest_twisted.ensureDeferred
async def test_dialog_open_before_the_proxy_attached(
    reactor, tools, tracked, fixture_site, browser_config, http_client, chromium
):
    """Chrome does not repeat Page.javascriptDialogOpening to a session attached later, and that
    session cannot answer the dialog; the probe marks the page as blocked instead."""
    context, page_id, _ = await open_form(tools, fixture_site)
    await ok(
        tools, context, "evaluate_script", pageId=page_id, function="() => { setTimeout(() => alert('early'), 400); }"
    )
    await sleep(reactor, 0.8)
    assert pending_dialog(tracked.page(page_id))["message"] == "early"

    pool, bob_browser = await _tracked(reactor, browser_config, http_client, chromium, "bob")
    try:
        target = tracked.page(page_id).target_id
        [page] = [p for p in bob_browser.pages() if p.target_id == target]
        assert pending_dialog(page) is None
        await sleep(reactor, PROBE_WINDOW + 0.3)
        assert pending_dialog(page) is None  # no event came
        note = dialog_note(page)
        assert note.startswith(
            f"# Open dialog\nPage {page.page_id} does not respond: it most likely shows a JavaScript dialog"
        )
        bob = make_registry(reactor, bob_browser, user_id="bob", tab_scope="browser")
        bob_context = make_context(user_id="bob")
        text = await failed(bob, bob_context, "click", pageId=page.page_id, uid="1_1")
        assert "does not respond" in text and 'navigate_page with type "reload"' in text
        text = await failed(bob, bob_context, "handle_dialog", pageId=page.page_id, action="accept")
        assert "DevTools cannot answer from here" in text
        # Reloading closes the dialog; Chrome reports that even to this session.
        result = await ok(bob, bob_context, "navigate_page", pageId=page.page_id, type="reload")
        assert text_of(result).startswith("Successfully reloaded the page.")
        assert dialog_note(page) is None
        require_no_dialog(page)
        result = await ok(bob, bob_context, "evaluate_script", pageId=page.page_id, function=READ_OUTPUT)
        assert '"nothing yet"' in text_of(result)
        # Alice's session saw the dialog close too.
        assert dialog_note(tracked.page(page_id)) is None
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_responsive_pages_are_not_marked(reactor, tracked, fixture_site):
    page = await tracked.new_page(fixture_site.page("input_form.html"))
    await sleep(reactor, PROBE_WINDOW + 0.2)
    state = page.state.dialog
    assert not state.blind and state.probe is None and dialog_note(page) is None
