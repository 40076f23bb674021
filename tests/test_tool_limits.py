"""Limits on what one tool call may ask for: input sizes (refused with the limit), long typing
that leaves room for other calls, waits capped by tools.max_timeout, and settling that no page
can stretch (real headless Chromium where a browser is involved)."""

import pytest
import pytest_twisted

from mcproxy.errors import ToolError
from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, sleep, text_of, uid_of, until
from mcproxy.tools import schema as s
from mcproxy.tools.emulation import parse_headers
from mcproxy.tools.keyboard import MAX_KEY_LENGTH, MAX_KEYED_TEXT, key_events
from mcproxy.tools.registry import DEFAULT_TOOLS
from mcproxy.tools.settle import SETTLE_CAP

#: Hang guard for calls that could wait forever before: far above any wait they may do now.
GUARD = 10 * SETTLE_CAP

TOO_LONG = "x" * (s.MAX_TEXT_LENGTH + 1)
TOO_MANY = 101


@pytest.fixture
def tools(reactor, user_browser):
    return make_registry(reactor, user_browser)


async def guarded(reactor, d):
    """``d``'s result; a TimeoutError (a failed test, not a hang) past `GUARD` seconds."""
    d.addTimeout(GUARD, reactor)
    return await d


@pytest.mark.parametrize(
    "tool, arguments, complaint",
    [
        ("type_text", {"text": TOO_LONG}, '"text": 100001 characters, more than the 100000'),
        ("fill", {"uid": "1_1", "value": TOO_LONG}, '"value": 100001 characters, more than the 100000'),
        (
            "fill_form",
            {"elements": [{"uid": "1_1", "value": "a"}] * TOO_MANY},
            '"elements": 101 items, more than the 100',
        ),
        ("fill_form", {"elements": [{"uid": "1_1", "value": TOO_LONG}]}, '"elements"[0].value: 100001 characters'),
        ("upload_file", {"uid": "1_1", "filePaths": ["/tmp/a"] * TOO_MANY}, '"filePaths": 101 items'),
        ("press_key", {"key": "a" * (MAX_KEY_LENGTH + 1)}, '"key": 101 characters, more than the 100'),
        ("type_text", {"text": "a", "submitKey": "a" * (MAX_KEY_LENGTH + 1)}, '"submitKey": 101 characters'),
        ("evaluate_script", {"function": "x" * (s.MAX_SCRIPT_LENGTH + 1)}, '"function": 1000001 characters'),
        ("evaluate_script", {"function": "() => 1", "args": ["1_1"] * TOO_MANY}, '"args": 101 items'),
        ("wait_for", {"text": ["a"] * TOO_MANY}, '"text": 101 items'),
        ("wait_for", {"text": ["a" * (s.MAX_STRING_LENGTH + 1)]}, '"text"[0]: 10001 characters'),
        ("navigate_page", {"url": "data:," + "x" * s.MAX_SCRIPT_LENGTH}, '"url": 1000006 characters'),
        ("take_snapshot", {"filePath": "a/" * 5001}, '"filePath": 10002 characters'),
    ],
)
@pytest_twisted.ensureDeferred
async def test_oversized_inputs_are_refused_with_the_limit_and_what_to_do(reactor, tool, arguments, complaint):
    tools = make_registry(reactor, browser=None)  # refused before any browser is asked for
    text = await failed(tools, make_context(), tool, pageId=1, **arguments)
    assert text.startswith("Invalid argument ") and complaint in text
    assert "this server accepts in one call" in text and ("Split" in text or "shorter" in text)


def test_every_string_and_list_argument_has_a_declared_limit():
    unbounded = []

    def walk(where, schema):
        kind = schema.get("type")
        if kind == "string" and "enum" not in schema and "maxLength" not in schema:
            unbounded.append(where)
        if kind == "array":
            if "maxItems" not in schema:
                unbounded.append(where)
            walk(where + "[]", schema["items"])
        for name, child in schema.get("properties", {}).items():
            walk(f"{where}.{name}", child)

    for tool in DEFAULT_TOOLS:
        walk(tool.name, tool.input_schema)
    assert unbounded == []
    type_text = next(t for t in DEFAULT_TOOLS if t.name == "type_text").input_schema["properties"]
    assert type_text["text"]["maxLength"] == s.MAX_TEXT_LENGTH


def test_key_combinations_and_headers_are_bounded():
    with pytest.raises(ToolError, match='A modifier appears twice in "Control\\+Control\\+a"'):
        key_events("Control+Control+a")
    assert len(key_events("Control+Shift+Alt+Meta+a")) == 10
    headers = "{" + ",".join(f'"X-{n}": "v"' for n in range(TOO_MANY)) + "}"
    with pytest.raises(ToolError, match="101 headers, more than the 100 allowed"):
        parse_headers(headers)


@pytest_twisted.ensureDeferred
async def test_a_max_length_text_is_typed_while_other_calls_are_answered(
    reactor, tools, user_browser, fixture_site, monkeypatch
):
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("limits_text.html"))
    typing_page_id = context.session.selected_page_id
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=typing_page_id))
    await ok(tools, context, "click", pageId=typing_page_id, uid=uid_of(snapshot, 'textbox "Notes"'))
    await ok(tools, context, "new_page", url=fixture_site.page("limits_text.html"))
    other_page_id = context.session.selected_page_id

    page = next(p for p in user_browser.pages() if p.page_id == typing_page_id)
    sent = []  # the input calls made for the typing page, in order
    send = page.send

    def recording_send(method, params=None, **kw):
        if method.startswith("Input."):
            sent.append(method)
        return send(method, params, **kw)

    monkeypatch.setattr(page, "send", recording_send)

    text = ("x" * 9_999 + "\n") * 10
    assert len(text) == s.MAX_TEXT_LENGTH > MAX_KEYED_TEXT
    typing = tools.call_tool("type_text", {"pageId": typing_page_id, "text": text}, context)
    await until(reactor, lambda: sent)
    answer = await ok(
        tools, context, "evaluate_script", pageId=other_page_id, function="() => document.title", waitForStableDom=False
    )
    assert text_of(answer).endswith('"Long Text Page"\n```')
    assert not typing.called, "the other page was answered while the text was still being typed"
    sent_before = len(sent)
    result = await typing
    assert not result["isError"], text_of(result)
    assert len(sent) > sent_before, "typing went on after the other call was answered"
    value = await ok(
        tools,
        context,
        "evaluate_script",
        pageId=typing_page_id,
        function=(
            "() => [notes.value.length, notes.value.split('\\n').length - 1, "
            "notes.value === ('x'.repeat(9999) + '\\n').repeat(10)]"
        ),
    )
    assert text_of(value).endswith("[100000,10,true]\n```")


@pytest_twisted.ensureDeferred
async def test_settling_ignores_the_pages_clock_and_ends_on_a_dom_that_never_rests(reactor, tools, fixture_site):
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("settle_hostile.html"))
    page_id = context.session.selected_page_id
    snapshot = text_of(await ok(tools, context, "take_snapshot", pageId=page_id))

    # The page's performance.now runs backwards: a wait computed from it would last for days.
    once = tools.call_tool("click", {"pageId": page_id, "uid": uid_of(snapshot, 'button "Once"')}, context)
    result = await guarded(reactor, once)
    assert text_of(result) == "Successfully clicked on the element"

    restless = tools.call_tool("click", {"pageId": page_id, "uid": uid_of(snapshot, 'button "Restless"')}, context)
    result = await guarded(reactor, restless)
    assert text_of(result) == "Successfully clicked on the element"
    # The click returned, and the page is free for the next call, while the DOM still changes.
    read = (
        "() => [document.getElementById('out').textContent,"
        " Number(document.getElementById('ticks').textContent.slice(5))]"
    )
    first = text_of(await ok(tools, context, "evaluate_script", pageId=page_id, function=read, waitForStableDom=False))
    assert '["clicked once",' in first
    ticks = int(first.rsplit(",", 1)[1].split("]")[0])
    await sleep(reactor, 0.05)  # the page's timer keeps running meanwhile
    second = text_of(await ok(tools, context, "evaluate_script", pageId=page_id, function=read, waitForStableDom=False))
    assert int(second.rsplit(",", 1)[1].split("]")[0]) > ticks > 0


@pytest_twisted.ensureDeferred
async def test_tool_timeouts_are_lowered_to_the_configured_maximum(reactor, user_browser, fixture_site):
    tools = make_registry(reactor, user_browser, max_timeout=1.0, navigation_timeout=1.0)
    context = make_context()
    await ok(tools, context, "new_page", url=fixture_site.page("limits_text.html"))
    page_id = context.session.selected_page_id
    result = await ok(tools, context, "wait_for", pageId=page_id, text=["other page text"], timeout=10**12)
    assert text_of(result).endswith(
        "Note: the timeout of 1000000000000 ms was lowered to 1000 ms, the longest wait this server allows "
        "(tools.max_timeout)."
    )
    waiting = tools.call_tool("wait_for", {"pageId": page_id, "text": ["never there"], "timeout": 10**12}, context)
    result = await guarded(reactor, waiting)
    assert (
        result["isError"] and text_of(result) == 'Timed out after 1000 ms waiting for any of ["never there"] to appear.'
    )


def test_a_throttled_page_never_stretches_a_wait_past_the_cap():
    """The default wait grows with a page's throttling (Slow 3G: 10x), but never past
    ``tools.max_timeout``, like an explicit ``timeout`` argument."""
    from types import SimpleNamespace

    from mcproxy.browser.emulation import Emulation
    from mcproxy.browser.page import PageState
    from mcproxy.config import ToolsConfig
    from mcproxy.testing.tool_calls import make_context
    from mcproxy.tools.call import ToolCall

    page = SimpleNamespace(state=PageState(emulation=Emulation(cpu_rate=20)))
    config = ToolsConfig(navigation_timeout=10.0, max_timeout=60.0)
    call = ToolCall(args={}, context=make_context(), browser=None, config=config, clock=None, page=page)
    assert call.timeout() == 60.0
    assert (
        ToolCall(args={"timeout": 90_000}, context=make_context(), browser=None, config=config, clock=None).timeout()
        == 60.0
    )
    assert ToolCall(args={}, context=make_context(), browser=None, config=config, clock=None).timeout() == 10.0
