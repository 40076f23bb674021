"""JavaScript dialogs (alert, confirm, prompt, beforeunload) as the tools see them.

A page showing a dialog answers no call that needs its JavaScript (Runtime, DOM,
Accessibility, screenshots) until the dialog is handled, so tools check `require_no_dialog`
first and fail fast with advice instead of running into a CDP timeout, and every response
mentions the pending dialog (`dialog_note`). Which dialog is open is tracked by the
browser (`mcproxy.browser.dialogs`).
"""

from mcproxy.errors import CDPError, ToolError
from mcproxy.tools.call import Response, ToolCall


def pending_dialog(page) -> dict | None:
    """The open dialog's ``type``, ``message``, ``defaultPrompt`` and ``url``, or None."""
    dialog = page.state.dialog.open
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
    state = page.state.dialog
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
    state = page.state.dialog
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
    state = page.state.dialog
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
