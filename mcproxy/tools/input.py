"""Input tools: click, hover, drag, fill, fill_form, upload_file, press_key, type_text, handle_dialog.

Mouse and keys go through ``Input.dispatch*`` directly (no page-side helpers), fills through
DOM focus plus ``Input.insertText`` (or a page-side function for selects and checkboxes);
every action then waits for the page to settle (`mcproxy.tools.settle`). While a dialog
blocks the page, the tools refuse at once (`mcproxy.tools.dialogs`).

Keys and typed text become calls as `mcproxy.tools.keyboard` says; they go to Chrome a batch
at a time, each batch answered before the next is made, so a long text never fills the
connection (or a reactor turn) and other calls to the browser get their turn. The page-side
functions are in `mcproxy.tools.input_scripts`.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.dialogs import describe_dialog, handle_dialog
from mcproxy.tools.dispatch import click_events, element_centers, mouse_event, send_all, send_batched
from mcproxy.tools.input_scripts import DRAG_STARTED, FILL, WATCH_DRAGSTART
from mcproxy.tools.keyboard import MAX_KEY_LENGTH, MAX_KEYED_TEXT, inserting_events, key_events, typing_events
from mcproxy.tools.settle import act_and_settle
from mcproxy.tools.snapshot import resolve_element, resolve_uid, stale_error, take_snapshot
from mcproxy.tools.upload import require_readable, through_chooser, upload_error

_INCLUDE_SNAPSHOT = s.boolean("Also return a fresh snapshot of the page after the action. Default false.")


async def _act(call: ToolCall, action: Callable[[], Awaitable[Any]], done: str, dialog_lead: str) -> Response:
    page = call.page
    dialog = await act_and_settle(page, call.clock, action, navigation_timeout=call.config.navigation_timeout)
    if dialog is not None:
        return Response().add(dialog_lead).add(describe_dialog(dialog))
    response = Response().add(done)
    if call.args.get("includeSnapshot"):
        response.add_snapshot(await take_snapshot(page))
    return response


tools = ToolSet("input")


@tools.page_tool(
    "click",
    title="Click",
    description="Click (or double-click) an element, identified by its uid from the latest snapshot.",
    params={
        "uid": s.uid(),
        "dblClick": s.boolean("Double-click instead of a single click. Default false."),
        "includeSnapshot": _INCLUDE_SNAPSHOT,
    },
    required=("uid",),
)
async def click(call: ToolCall) -> Response:
    """Mouse events at the centre of the element's box, then settle."""
    page = call.page
    [(x, y)] = await element_centers(page, call.args["uid"])
    clicks = 2 if call.args.get("dblClick") else 1
    mouse = click_events(x, y, clicks)
    done = "Successfully double clicked on the element" if clicks == 2 else "Successfully clicked on the element"
    return await _act(call, lambda: send_all(page, mouse), done, "The element was clicked and it opened a dialog.")


async def _fill_element(call: ToolCall, uid: str, value: str) -> None:
    """Set one control's value the way a user would (no settling).

    Text for a password field marks the call's ``value`` arguments as secret for the logs.
    """
    page = call.page
    _, object_id = await resolve_element(page, uid)
    result = await page.send(
        "Runtime.callFunctionOn",
        {
            "objectId": object_id,
            "functionDeclaration": FILL,
            "arguments": [{"value": value}],
            "returnByValue": True,
        },
    )
    outcome = result.get("result", {}).get("value") or {}
    kind = outcome.get("kind")
    if kind == "stale":
        raise stale_error(page, uid)
    if kind == "error":
        raise ToolError(outcome["message"])
    if kind == "type":
        if outcome.get("secret"):
            call.sensitive.add("value")
        await page.send("Input.insertText", {"text": value})


@tools.page_tool(
    "fill",
    title="Fill",
    description=(
        "Set the value of a form control identified by uid: types into text fields and text areas, "
        'picks a <select> option by its text or value, and sets checkboxes or radio buttons with "true"/"false".'
    ),
    params={
        "uid": s.uid(),
        "value": s.string(
            'The value: text, an option\'s text or value, or "true"/"false" for checkboxes.',
            max_length=s.MAX_TEXT_LENGTH,
        ),
        "includeSnapshot": _INCLUDE_SNAPSHOT,
    },
    required=("uid", "value"),
)
async def fill(call: ToolCall) -> Response:
    """Set a control's value the way a user would, then settle."""
    uid, value = call.args["uid"], call.args["value"]
    return await _act(
        call,
        lambda: _fill_element(call, uid, value),
        "Successfully filled out the element",
        "The element was filled and it opened a dialog.",
    )


@tools.page_tool(
    "press_key",
    title="Press key",
    description=(
        'Press a key or a key combination on the focused element, e.g. "Enter", "Escape", "Control+A", '
        '"Control+Shift+R" or "Control++". Modifiers: Control, Shift, Alt, Meta.'
    ),
    params={
        "key": s.string('The key or combination, such as "Enter" or "Control+A".', max_length=MAX_KEY_LENGTH),
        "includeSnapshot": _INCLUDE_SNAPSHOT,
    },
    required=("key",),
)
async def press_key(call: ToolCall) -> Response:
    """Press a key or combination on the focused element, then settle."""
    page = call.page
    key = call.args["key"]
    events = key_events(key)
    return await _act(
        call,
        lambda: send_all(page, events),
        f"Successfully pressed key: {key}",
        "The key was pressed and it opened a dialog.",
    )


@tools.page_tool(
    "type_text",
    title="Type text",
    description=(
        "Type text with the keyboard into the element that has focus (click or fill it first). "
        f"A text longer than {MAX_KEYED_TEXT} characters is inserted in chunks as text input (with a key "
        "press for each line break) rather than key by key."
    ),
    params={
        "text": s.string("The text to type.", max_length=s.MAX_TEXT_LENGTH),
        "submitKey": s.string('A key to press after the text, such as "Enter" or "Tab".', max_length=MAX_KEY_LENGTH),
    },
    required=("text",),
)
async def type_text(call: ToolCall) -> Response:
    """Type characters as key events (others as text input), then settle."""
    page = call.page
    text = call.args["text"]
    focused = await page.send(
        "Runtime.evaluate",
        {"expression": "document.activeElement?.type === 'password'", "returnByValue": True},
    )
    if focused.get("result", {}).get("value") is True:
        call.sensitive.add("text")
    submit = call.args.get("submitKey")
    submit_events = key_events(submit) if submit else []

    async def action() -> None:
        if len(text) <= MAX_KEYED_TEXT:
            await send_batched(page, typing_events(text))
        else:
            await send_batched(page, inserting_events(text), size=2)
        await send_all(page, submit_events)

    done = f'Typed text "{text}"' + (f" and pressed {submit}" if submit else "")
    return await _act(call, action, done, "The text was typed and it opened a dialog.")


@tools.page_tool(
    "hover",
    title="Hover",
    description="Move the mouse over an element, identified by its uid from the latest snapshot.",
    params={
        "uid": s.uid(),
        "includeSnapshot": _INCLUDE_SNAPSHOT,
    },
    required=("uid",),
)
async def hover(call: ToolCall) -> Response:
    """Move the mouse to the centre of the element's box, then settle."""
    page = call.page
    [(x, y)] = await element_centers(page, call.args["uid"])
    move = [mouse_event("mouseMoved", x, y)]
    return await _act(
        call,
        lambda: send_all(page, move),
        "Successfully hovered over the element",
        "The mouse moved over the element and it opened a dialog.",
    )


_DRAG_STEPS = 5


@tools.page_tool(
    "drag",
    title="Drag",
    description=(
        "Drag one element and drop it onto another (both uids from the latest snapshot); "
        "works with HTML5 drag and drop and with pages that follow the mouse."
    ),
    params={
        "from_uid": s.uid("The uid of the element to drag."),
        "to_uid": s.uid("The uid of the element to drop it onto."),
        "includeSnapshot": _INCLUDE_SNAPSHOT,
    },
    required=("from_uid", "to_uid"),
)
async def drag(call: ToolCall) -> Response:
    """Press on one element, move in steps onto the other, release; then settle.

    With ``Input.setInterceptDrags`` Chrome hands an HTML5 drag (``draggable``, ``dragstart``)
    back to us instead of running its own drag loop; we then deliver dragenter, dragover and
    drop at the target. Pages that drag with plain mouse events just see the mouse.
    """
    page = call.page
    (x0, y0), (x1, y1) = await element_centers(page, call.args["from_uid"], call.args["to_uid"])

    held = {"button": "left", "buttons": 1}
    press = [mouse_event("mouseMoved", x0, y0), mouse_event("mousePressed", x0, y0, clickCount=1, **held)]
    steps = [
        mouse_event("mouseMoved", x0 + (x1 - x0) * i / _DRAG_STEPS, y0 + (y1 - y0) * i / _DRAG_STEPS, **held)
        for i in range(1, _DRAG_STEPS + 1)
    ]

    async def action() -> None:
        intercepted = page.wait_for_event("Input.dragIntercepted")
        try:
            watch = await page.send("Runtime.evaluate", {"expression": WATCH_DRAGSTART, "objectGroup": "mcproxy-drag"})
            await send_all(page, [("Input.setInterceptDrags", {"enabled": True}), *press])
            # One at a time: moves sent back to back reach the page coalesced into one.
            for method, params in steps:
                await page.send(method, params)
            started = await page.send(
                "Runtime.callFunctionOn",
                {"objectId": watch["result"]["objectId"], "functionDeclaration": DRAG_STARTED, "returnByValue": True},
            )
            if started["result"].get("value"):
                data = (await intercepted)["data"]
                await send_all(
                    page,
                    [
                        ("Input.dispatchDragEvent", {"type": kind, "x": x1, "y": y1, "data": data})
                        for kind in ("dragEnter", "dragOver", "drop")
                    ],
                )
            await page.send(*mouse_event("mouseReleased", x1, y1, button="left", clickCount=1))
        finally:
            intercepted.cancel()
            intercepted.addErrback(lambda _: None)
            for method, params in (
                ("Input.setInterceptDrags", {"enabled": False}),
                ("Runtime.releaseObjectGroup", {"objectGroup": "mcproxy-drag"}),
            ):
                page.send(method, params).addErrback(lambda _: None)

    return await _act(
        call, action, "Successfully dragged an element", "The element was dragged and it opened a dialog."
    )


@tools.page_tool(
    "fill_form",
    title="Fill form",
    description=(
        "Fill several form controls in one call (text fields, lists, checkboxes, radio buttons), in order. "
        "Prefer it to separate fill or click calls for forms: one call, one wait for the page. "
        'Example: a user name, a password and "true" for a "remember me" checkbox.'
    ),
    params={
        "elements": s.array(
            "The controls to fill, from the latest snapshot, in order.",
            {
                "type": "object",
                "description": "One control to fill.",
                "properties": {
                    "uid": s.uid("The uid of the control."),
                    "value": s.string(
                        'Its value: text, an option\'s text or value, "true"/"false" for checkboxes, '
                        '"true" for a radio button.',
                        max_length=s.MAX_TEXT_LENGTH,
                    ),
                },
                "required": ["uid", "value"],
            },
        ),
        "includeSnapshot": _INCLUDE_SNAPSHOT,
    },
    required=("elements",),
)
async def fill_form(call: ToolCall) -> Response:
    """Fill several controls one after the other, then settle once."""
    page = call.page
    elements = call.args["elements"]
    for index, element in enumerate(elements):
        if not (isinstance(element.get("uid"), str) and isinstance(element.get("value"), str)):
            raise s.InvalidArguments(
                f'Invalid argument "elements"[{index}]: needs a "uid" string and a "value" string.'
            )
    # Every uid must be known before anything changes, so a typo does not leave half a form.
    for element in elements:
        resolve_uid(page, element["uid"])

    async def action() -> None:
        filled: list[str] = []
        for element in elements:
            uid = element["uid"]
            try:
                await _fill_element(call, uid, element["value"])
            except ToolError as e:
                before = ", ".join(f'"{u}"' for u in filled) if filled else "none"
                raise ToolError(
                    f'Could not fill element uid "{uid}": {e.message} '
                    f"Filled before it: {before}; the elements after it were not filled."
                ) from None
            filled.append(uid)

    return await _act(
        call, action, "Successfully filled out the form", "The form was being filled and it opened a dialog."
    )


@tools.page_tool(
    "upload_file",
    title="Upload file",
    description=(
        "Choose files for a file input, or for the file chooser that clicking the element opens. "
        "The paths are on the machine the browser runs on, not on this server; the server never reads them."
    ),
    params={
        "uid": s.uid("The uid of the file input, or of an element that opens a file chooser when clicked."),
        "filePaths": s.array("One or more paths of files on the browser's machine.", s.string("A path."), min_items=1),
        "includeSnapshot": _INCLUDE_SNAPSHOT,
    },
    required=("uid", "filePaths"),
)
async def upload_file(call: ToolCall) -> Response:
    """Put files (paths on the browser's machine) into a file input, or into the file chooser
    that clicking the element opens; then settle."""
    page = call.page
    uid, paths = call.args["uid"], call.args["filePaths"]
    backend = resolve_uid(page, uid)

    async def action() -> None:
        target = backend
        try:
            await page.send("DOM.setFileInputFiles", {"files": paths, "backendNodeId": backend})
        except CDPError as e:
            if "not a file input" not in str(e):
                raise await upload_error(page, uid, paths, e) from None
            target = await through_chooser(page, uid, paths)
        await require_readable(page, uid, target, paths)

    shown = ", ".join(paths)
    done = f"File uploaded from {shown}." if len(paths) == 1 else f"Files uploaded from {shown}."
    return await _act(call, action, done, "The files were chosen and it opened a dialog.")


tools.page_tool(
    "handle_dialog",
    title="Handle dialog",
    description=(
        "Accept or dismiss the JavaScript dialog (alert, confirm, prompt, leave-page) that blocks a page; "
        'responses show such a dialog under "# Open dialog".'
    ),
    params={
        "action": s.string("Accept or dismiss the dialog.", enum=("accept", "dismiss")),
        "promptText": s.string(
            "Text to answer a prompt dialog with when accepting it; default: the prompt's default text."
        ),
    },
    required=("action",),
    # Never queued behind a call the dialog itself holds up.
    exclusive=False,
    dialog_safe=True,
    # The answer to a prompt may be a password.
    secret=("promptText",),
)(handle_dialog)
