"""JavaScript dialogs (alert, confirm, prompt, beforeunload), tracked per page.

A page showing a dialog answers no call that needs its JavaScript (Runtime, DOM,
Accessibility, screenshots) until the dialog is handled, so tools check `require_no_dialog`
first and fail fast with advice instead of running into a CDP timeout, and every response
mentions the pending dialog (`dialog_note`).

`track_dialogs` is a pool page listener: it sees each page from the moment the proxy
attaches. Chrome sends ``Page.javascriptDialogOpening`` only to sessions that were attached
when the dialog opened; a session attached later (a dialog already open when the proxy
connected, or after a reconnect) gets no event, cannot answer the dialog ("No dialog is
showing") and finds the page silent. So each fresh session also sends a probe: when the
page does not answer it within `PROBE_WINDOW`, the page counts as blocked by a dialog the
proxy cannot see, until the probe is answered or Chrome reports the dialog closed
(navigating or reloading the page closes it).
"""

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mcproxy.errors import CDPError, ToolError
from mcproxy.tools.call import Response, ToolCall

STATE_KEY = "mcproxy.dialog"
#: How long a freshly attached page may take to answer before it counts as blocked.
PROBE_WINDOW = 1.0
#: The probe stays pending this long at most (a dialog can stay open for hours).
PROBE_LIMIT = 24 * 3600.0


@attrs.define
class DialogState:
    """A page's dialog: the ``Page.javascriptDialogOpening`` parameters of the open one,
    or ``blind`` when the page went silent before the proxy could see a dialog open."""

    open: dict | None = None
    blind: bool = False
    probe: Deferred | None = None


def dialog_state(page) -> DialogState:
    """The page's dialog state (empty for a page no listener has seen)."""
    state = page.state.get(STATE_KEY)
    if state is None:
        state = page.state[STATE_KEY] = DialogState()
    return state


def track_dialogs(page, event: str) -> None:
    """Page listener (``BrowserPool(page_listeners=[track_dialogs])``): follow the page's dialogs."""
    state = dialog_state(page)
    if event == "closed":
        _stop_probe(state)
        return
    if event == "attached":
        page.subscribe("Page.javascriptDialogOpening", lambda _, params: _opened(state, params))
        page.subscribe("Page.javascriptDialogClosed", lambda _, params: _closed(state))
    # A new session cannot answer a dialog it did not see open: find out whether one is.
    state.open = None
    state.blind = False
    _probe(page, state)


def _opened(state: DialogState, params: dict) -> None:
    state.open = params
    state.blind = False


def _closed(state: DialogState) -> None:
    state.open = None
    state.blind = False


def _stop_probe(state: DialogState) -> None:
    if state.probe is not None and not state.probe.called:
        state.probe.cancel()
    state.probe = None


def _probe(page, state: DialogState) -> None:
    """Ask the page for a trivial evaluation; no answer within `PROBE_WINDOW` means blocked."""
    _stop_probe(state)
    probe = state.probe = page.send("Runtime.evaluate", {"expression": "0"}, timeout=PROBE_LIMIT)

    def suspect() -> None:
        if state.probe is probe and state.open is None:
            state.blind = True

    timer = page.browser.clock.callLater(PROBE_WINDOW, suspect)

    def answered(result):
        if timer.active():
            timer.cancel()
        if state.probe is probe:
            state.probe = None
            # Any answer, even an error about a replaced document, means the page is responsive.
            if not isinstance(result, Failure) or result.check(CDPError):
                state.blind = False
        return None

    probe.addBoth(answered)


def pending_dialog(page) -> dict | None:
    """The open dialog's ``type``, ``message``, ``defaultPrompt`` and ``url``, or None."""
    state = page.state.get(STATE_KEY)
    dialog = state.open if state is not None else None
    if dialog is None:
        return None
    return {key: dialog.get(key, "") for key in ("type", "message", "defaultPrompt", "url")}


def describe_dialog(params: dict) -> str:
    """The "# Open dialog" section for a dialog's ``Page.javascriptDialogOpening`` parameters."""
    kind = params.get("type") or "alert"
    default = params.get("defaultPrompt")
    shown = f' (default value: "{default}")' if kind == "prompt" and default else ""
    return (
        f"# Open dialog\n{kind}: {params.get('message', '')}{shown}.\n"
        "Call handle_dialog to handle it before continuing."
    )


def _blind_advice(page) -> str:
    return (
        f"Page {page.page_id} does not respond: it most likely shows a JavaScript dialog that opened "
        "before the proxy connected to it, which DevTools cannot answer from here. Close the dialog in "
        'the browser window, or reload the page (navigate_page with type "reload"), which closes it.'
    )


def dialog_note(page) -> str | None:
    """The section every tool response on ``page`` appends while a dialog blocks it, else None."""
    state = page.state.get(STATE_KEY)
    if state is None:
        return None
    if state.open is not None:
        return describe_dialog(state.open)
    if state.blind:
        return "# Open dialog\n" + _blind_advice(page)
    return None


def add_dialog_note(page, response: Response) -> Response:
    """Append `dialog_note` to a tool's `Response` unless the response already says it."""
    note = dialog_note(page)
    if note is not None and note not in response.lines:
        response.add(note)
    return response


def require_no_dialog(page) -> None:
    """Fail fast (ToolError) when a dialog blocks ``page``: the call would only time out."""
    state = page.state.get(STATE_KEY)
    if state is None:
        return
    if state.open is not None:
        kind = state.open.get("type") or "alert"
        raise ToolError(
            f'Page {page.page_id} shows a {kind} dialog ("{state.open.get("message", "")}"), which blocks it. '
            'Call handle_dialog with action "accept" or "dismiss" first, then try again.'
        )
    if state.blind:
        raise ToolError(_blind_advice(page))


async def handle_dialog(call: ToolCall) -> Response:
    """Accept or dismiss the page's open dialog (with text for a prompt)."""
    page = call.page
    state = dialog_state(page)
    if state.open is None and not state.blind:
        raise ToolError(
            f"No open dialog found on page {page.page_id}. "
            'handle_dialog is only needed while responses show "# Open dialog".'
        )
    accept = call.args["action"] == "accept"
    reply: dict = {"accept": accept}
    if accept and state.open is not None and state.open.get("type") == "prompt":
        # Like pressing OK on the prompt as it stands: its default text unless told otherwise.
        reply["promptText"] = call.args.get("promptText", state.open.get("defaultPrompt", ""))
    elif accept and "promptText" in call.args:
        reply["promptText"] = call.args["promptText"]
    try:
        await page.send("Page.handleJavaScriptDialog", reply)
    except CDPError as e:
        if "No dialog" not in str(e):
            raise
        if state.blind:
            raise ToolError(_blind_advice(page)) from None
        state.open = None
        raise ToolError(f"No open dialog found on page {page.page_id}: it was closed already.") from None
    state.open = None
    done = "Successfully accepted the dialog" if accept else "Successfully dismissed the dialog"
    return await Response().add(done).add_pages(call)
