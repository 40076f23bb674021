"""Input tools: click, hover, drag, fill, fill_form, upload_file, press_key, type_text, handle_dialog.

Mouse and keys go through ``Input.dispatch*`` directly (no page-side helpers), fills through
DOM focus plus ``Input.insertText`` (or a page-side function for selects and checkboxes);
every action then waits for the page to settle (`mcproxy.tools.settle`). While a dialog
blocks the page, the tools refuse at once (`mcproxy.tools.dialogs`).

Typed text up to `MAX_KEYED_TEXT` characters becomes key events, a key press a character, as
upstream types it; a longer text (up to ``schema.MAX_TEXT_LENGTH``) is inserted `TEXT_CHUNK`
characters at a time as text input, with a key press for each line break: Chrome takes time
growing with the field's length for every key event, which makes a long text typed key by key
last for minutes. Either way the calls go to Chrome a batch at a time, each batch answered
before the next is made, so a long text never fills the connection (or a reactor turn) and
other calls to the browser get their turn.
"""

from itertools import islice
from typing import Any, Awaitable, Callable, Iterable, Iterator

from twisted.internet.defer import FirstError, gatherResults

from mcproxy.browser.page import EventTimeout
from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.dialogs import describe_dialog, handle_dialog
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.settle import act_and_settle
from mcproxy.tools.snapshot import element_error, resolve_element, resolve_uid, stale_error, take_snapshot

_INCLUDE_SNAPSHOT = s.boolean("Also return a fresh snapshot of the page after the action. Default false.")


def _schema(properties: dict[str, dict], required: tuple[str, ...], *, snapshot: bool = True) -> dict:
    """An input tool's schema: ``pageId`` (required) first, then ``properties``, then
    ``includeSnapshot`` when the tool answers with a snapshot on request."""
    last = {"includeSnapshot": _INCLUDE_SNAPSHOT} if snapshot else {}
    return s.obj({"pageId": s.page_id(), **properties, **last}, ("pageId", *required))

_MODIFIER_BITS = {"Alt": 1, "Control": 2, "Meta": 4, "Shift": 8}
# Non-character keys: name -> (code, windowsVirtualKeyCode, text typed).
_NAMED_KEYS: dict[str, tuple[str, int, str]] = {
    "Enter": ("Enter", 13, "\r"),
    "Tab": ("Tab", 9, ""),
    "Escape": ("Escape", 27, ""),
    "Backspace": ("Backspace", 8, ""),
    "Delete": ("Delete", 46, ""),
    "Insert": ("Insert", 45, ""),
    "Home": ("Home", 36, ""),
    "End": ("End", 35, ""),
    "PageUp": ("PageUp", 33, ""),
    "PageDown": ("PageDown", 34, ""),
    "ArrowLeft": ("ArrowLeft", 37, ""),
    "ArrowUp": ("ArrowUp", 38, ""),
    "ArrowRight": ("ArrowRight", 39, ""),
    "ArrowDown": ("ArrowDown", 40, ""),
    "Space": ("Space", 32, " "),
    "Alt": ("AltLeft", 18, ""),
    "Control": ("ControlLeft", 17, ""),
    "Meta": ("MetaLeft", 91, ""),
    "Shift": ("ShiftLeft", 16, ""),
    **{f"F{n}": (f"F{n}", 111 + n, "") for n in range(1, 13)},
}
_PUNCTUATION: dict[str, tuple[str, int]] = {
    " ": ("Space", 32),
    "-": ("Minus", 189),
    "_": ("Minus", 189),
    "=": ("Equal", 187),
    "+": ("Equal", 187),
    ",": ("Comma", 188),
    "<": ("Comma", 188),
    ".": ("Period", 190),
    ">": ("Period", 190),
    "/": ("Slash", 191),
    "?": ("Slash", 191),
    ";": ("Semicolon", 186),
    ":": ("Semicolon", 186),
    "'": ("Quote", 222),
    '"': ("Quote", 222),
    "[": ("BracketLeft", 219),
    "{": ("BracketLeft", 219),
    "]": ("BracketRight", 221),
    "}": ("BracketRight", 221),
    "\\": ("Backslash", 220),
    "|": ("Backslash", 220),
    "`": ("Backquote", 192),
    "~": ("Backquote", 192),
}
_COMMAND_MODIFIERS = _MODIFIER_BITS["Alt"] | _MODIFIER_BITS["Control"] | _MODIFIER_BITS["Meta"]
#: Characters of a key or key combination ("Control+Shift+ArrowDown" has 23).
MAX_KEY_LENGTH = 100
#: CDP input events sent before waiting for Chrome's answers.
KEY_BATCH = 200
#: Longest text type_text sends as key events; longer texts are inserted in chunks.
MAX_KEYED_TEXT = 1000
#: Characters of one ``Input.insertText`` call when a long text is typed.
TEXT_CHUNK = 1000

_FILL = """function (value) {
  const el = this;
  if (!el.isConnected) return {kind: 'stale'};
  const tag = el.localName;
  const changed = () => {
    el.dispatchEvent(new Event('input', {bubbles: true}));
    el.dispatchEvent(new Event('change', {bubbles: true}));
  };
  if (tag === 'select') {
    const options = Array.from(el.options);
    const match = options.find(o => o.value === value) || options.find(o => o.text.trim() === value.trim());
    if (!match) {
      return {kind: 'error', message: 'No option "' + value + '" in this list; its options are: ' +
        options.map(o => '"' + o.text.trim() + '"').join(', ') + '.'};
    }
    options.forEach(o => { o.selected = o === match; });
    changed();
    return {kind: 'done'};
  }
  const role = el.getAttribute('role');
  const toggle = tag === 'input' && (el.type === 'checkbox' || el.type === 'radio');
  if (toggle || role === 'checkbox' || role === 'switch' || role === 'radio') {
    if (value !== 'true' && value !== 'false') {
      return {kind: 'error', message: 'Fill a checkbox, switch or radio button with "true" or "false".'};
    }
    const want = value === 'true';
    const now = toggle ? el.checked : el.getAttribute('aria-checked') === 'true';
    if (now !== want) {
      if (!want && (el.type === 'radio' || role === 'radio')) {
        return {kind: 'error', message: 'A radio button cannot be unchecked; fill another one of its group with "true".'};
      }
      el.click();
    }
    return {kind: 'done'};
  }
  const direct = ['date', 'time', 'datetime-local', 'month', 'week', 'range', 'color'];
  const notText = ['button', 'submit', 'reset', 'file', 'image', 'hidden'];
  if (tag === 'input' && direct.includes(el.type)) {
    el.value = value;
    changed();
    return {kind: 'done'};
  }
  if (!(tag === 'textarea' || el.isContentEditable || (tag === 'input' && !notText.includes(el.type)))) {
    return {kind: 'error', message: 'This <' + tag + '> element cannot be filled; fill works on text fields, ' +
      'text areas, lists (select) and checkboxes. Use click for buttons and links.'};
  }
  el.focus();
  if (el.isContentEditable) {
    const range = document.createRange();
    range.selectNodeContents(el);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  } else {
    try { el.select(); } catch (e) { /* inputs without a text selection */ }
  }
  if (value === '') {
    if (el.isContentEditable) el.textContent = ''; else el.value = '';
    el.dispatchEvent(new Event('input', {bubbles: true}));
    return {kind: 'done'};
  }
  return {kind: 'type', secret: tag === 'input' && el.type === 'password'};
}"""


async def send_all(page, calls: list[tuple[str, dict]]) -> list[dict]:
    """Send CDP calls back to back (Chrome runs a session's calls in order), await them all."""
    try:
        return await gatherResults([page.send(method, params) for method, params in calls], consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()


async def send_batched(page, calls: Iterable[tuple[str, dict]], size: int = KEY_BATCH) -> None:
    """Send any number of CDP calls in order, ``size`` at a time: each batch is built and
    answered before the next, so one call never holds the reactor or the connection for long."""
    pending: Iterator[tuple[str, dict]] = iter(calls)
    while batch := list(islice(pending, size)):
        await send_all(page, batch)


async def element_centers(page, *uids: str) -> list[tuple[float, float]]:
    """Scroll each element into view (in order); the centre of each one's first visible box,
    in viewport pixels, measured after all the scrolling."""
    backends = [resolve_uid(page, uid) for uid in uids]
    calls = [("DOM.scrollIntoViewIfNeeded", {"backendNodeId": backend}) for backend in backends]
    calls += [("DOM.getContentQuads", {"backendNodeId": backend}) for backend in backends]
    try:
        replies = await gatherResults([page.send(method, params) for method, params in calls], consumeErrors=True)
    except FirstError as e:
        if not e.subFailure.check(CDPError):
            e.subFailure.raiseException()
        raise element_error(page, uids[e.index % len(uids)], e.subFailure.value) from None
    return [_center(page, uid, reply) for uid, reply in zip(uids, replies[len(uids):])]


def _center(page, uid: str, quads: dict) -> tuple[float, float]:
    for quad in quads.get("quads", []):
        xs, ys = quad[0::2], quad[1::2]
        if max(xs) - min(xs) >= 1 and max(ys) - min(ys) >= 1:
            return sum(xs) / 4, sum(ys) / 4
    raise ToolError(f'Element uid "{uid}" has no visible box on page {page.page_id}, so the mouse cannot reach it.')


def _key_events(combo: str) -> list[tuple[str, dict]]:
    """The ``Input.dispatchKeyEvent`` calls for a key or a combination like ``Control+Shift+R``."""
    if combo == "+" or combo.endswith("++"):
        names, key = combo[:-2].split("+"), "+"
    else:
        *names, key = combo.split("+")
    names = [n for n in names if n]
    for name in names:
        if name not in _MODIFIER_BITS:
            raise ToolError(f'Unknown modifier "{name}" in "{combo}"; modifiers are Control, Shift, Alt and Meta.')
    if len(set(names)) < len(names):
        raise ToolError(f'A modifier appears twice in "{combo}"; name each of Control, Shift, Alt and Meta once.')
    if not key:
        raise ToolError(f'No key in "{combo}". Name a key such as "Enter", "Tab", "a" or "Control+A".')
    events: list[tuple[str, dict]] = []
    bits = 0
    for name in names:
        bits |= _MODIFIER_BITS[name]
        events.append(("Input.dispatchKeyEvent", _key_params("rawKeyDown", name, bits)))
    down, up = _key_pair(key, bits)
    events += [down, up]
    for name in reversed(names):
        bits &= ~_MODIFIER_BITS[name]
        events.append(("Input.dispatchKeyEvent", _key_params("keyUp", name, bits)))
    return events


def _key_params(kind: str, key: str, modifiers: int, text: str = "") -> dict:
    code, key_code, _ = _describe(key)
    params: dict[str, Any] = {
        "type": kind,
        "key": key,
        "code": code,
        "windowsVirtualKeyCode": key_code,
        "modifiers": modifiers,
    }
    if text:
        params["text"] = text
        params["unmodifiedText"] = text
    return params


def _describe(key: str) -> tuple[str, int, str]:
    """``(code, keyCode, text)`` of a key name or a single character."""
    if key in _NAMED_KEYS:
        return _NAMED_KEYS[key]
    if len(key) != 1:
        raise ToolError(
            f'Unknown key "{key}". Use a key name such as Enter, Tab, Escape, Backspace, ArrowDown, '
            "PageUp, F5 or a single character, optionally with modifiers (Control+A)."
        )
    if key.isascii() and key.isalpha():
        return f"Key{key.upper()}", ord(key.upper()), key
    if key.isdigit() and key.isascii():
        return f"Digit{key}", ord(key), key
    code, key_code = _PUNCTUATION.get(key, ("", 0))
    return code, key_code, key


def _key_pair(key: str, modifiers: int) -> tuple[tuple[str, dict], tuple[str, dict]]:
    _, _, text = _describe(key)
    if modifiers & _MODIFIER_BITS["Shift"] and len(key) == 1:
        key = text = key.upper()
    if modifiers & _COMMAND_MODIFIERS:
        text = ""
    down = _key_params("keyDown" if text else "rawKeyDown", key, modifiers, text)
    return ("Input.dispatchKeyEvent", down), ("Input.dispatchKeyEvent", _key_params("keyUp", key, modifiers))


def _inserting_events(text: str) -> Iterator[tuple[str, dict]]:
    """The calls that type a long ``text``: runs of at most `TEXT_CHUNK` characters as text
    input, line breaks as Enter presses (as typing them would)."""
    for index, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")):
        if index:
            yield from _key_pair("Enter", 0)
        for start in range(0, len(line), TEXT_CHUNK):
            yield "Input.insertText", {"text": line[start : start + TEXT_CHUNK]}


def _typing_events(text: str) -> Iterator[tuple[str, dict]]:
    """The calls that type ``text`` key by key, made as they are sent."""
    for char in text:
        key = "Enter" if char in "\r\n" else char
        if key == "Enter" or (key.isascii() and (key.isalnum() or key in _PUNCTUATION)):
            yield from _key_pair(key, 0)
        else:
            yield "Input.insertText", {"text": char}


async def _act(call: ToolCall, action: Callable[[], Awaitable[Any]], done: str, dialog_lead: str) -> Response:
    page = call.page
    dialog = await act_and_settle(page, call.clock, action, navigation_timeout=call.config.navigation_timeout)
    if dialog is not None:
        return Response().add(dialog_lead).add(describe_dialog(dialog))
    response = Response().add(done)
    if call.args.get("includeSnapshot"):
        response.add_snapshot(await take_snapshot(page))
    return response


def _mouse(kind: str, x: float, y: float, **extra) -> tuple[str, dict]:
    return "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra}


def _click_events(x: float, y: float, clicks: int = 1) -> list[tuple[str, dict]]:
    events = [_mouse("mouseMoved", x, y)]
    for count in range(1, clicks + 1):
        for kind in ("mousePressed", "mouseReleased"):
            events.append(_mouse(kind, x, y, button="left", clickCount=count))
    return events


async def click(call: ToolCall) -> Response:
    """Mouse events at the centre of the element's box, then settle."""
    page = call.page
    [(x, y)] = await element_centers(page, call.args["uid"])
    clicks = 2 if call.args.get("dblClick") else 1
    mouse = _click_events(x, y, clicks)
    done = "Successfully double clicked on the element" if clicks == 2 else "Successfully clicked on the element"
    return await _act(call, lambda: send_all(page, mouse), done, "The element was clicked and it opened a dialog.")


async def hover(call: ToolCall) -> Response:
    """Move the mouse to the centre of the element's box, then settle."""
    page = call.page
    [(x, y)] = await element_centers(page, call.args["uid"])
    move = [_mouse("mouseMoved", x, y)]
    return await _act(
        call, lambda: send_all(page, move), "Successfully hovered over the element",
        "The mouse moved over the element and it opened a dialog.",
    )


# Notes whether the page started an HTML5 drag (a ``dragstart`` it did not cancel).
_WATCH_DRAGSTART = """(() => {
  const watch = {event: null};
  watch.listener = e => { watch.event = e; };
  document.addEventListener('dragstart', watch.listener, true);
  return watch;
})()"""
_DRAG_STARTED = """function () {
  document.removeEventListener('dragstart', this.listener, true);
  return this.event !== null && !this.event.defaultPrevented;
}"""
_DRAG_STEPS = 5


async def drag(call: ToolCall) -> Response:
    """Press on one element, move in steps onto the other, release; then settle.

    With ``Input.setInterceptDrags`` Chrome hands an HTML5 drag (``draggable``, ``dragstart``)
    back to us instead of running its own drag loop; we then deliver dragenter, dragover and
    drop at the target. Pages that drag with plain mouse events just see the mouse.
    """
    page = call.page
    (x0, y0), (x1, y1) = await element_centers(page, call.args["from_uid"], call.args["to_uid"])

    held = {"button": "left", "buttons": 1}
    press = [_mouse("mouseMoved", x0, y0), _mouse("mousePressed", x0, y0, clickCount=1, **held)]
    steps = [
        _mouse("mouseMoved", x0 + (x1 - x0) * i / _DRAG_STEPS, y0 + (y1 - y0) * i / _DRAG_STEPS, **held)
        for i in range(1, _DRAG_STEPS + 1)
    ]

    async def action() -> None:
        intercepted = page.wait_for_event("Input.dragIntercepted")
        try:
            watch = await page.send("Runtime.evaluate", {"expression": _WATCH_DRAGSTART, "objectGroup": "mcproxy-drag"})
            await send_all(page, [("Input.setInterceptDrags", {"enabled": True}), *press])
            # One at a time: moves sent back to back reach the page coalesced into one.
            for method, params in steps:
                await page.send(method, params)
            started = await page.send(
                "Runtime.callFunctionOn",
                {"objectId": watch["result"]["objectId"], "functionDeclaration": _DRAG_STARTED, "returnByValue": True},
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
            await page.send(*_mouse("mouseReleased", x1, y1, button="left", clickCount=1))
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
            "functionDeclaration": _FILL,
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


async def fill(call: ToolCall) -> Response:
    """Set a control's value the way a user would, then settle."""
    uid, value = call.args["uid"], call.args["value"]
    return await _act(
        call, lambda: _fill_element(call, uid, value), "Successfully filled out the element",
        "The element was filled and it opened a dialog.",
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


CHOOSER_WAIT = 3.0


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
                raise await _upload_error(page, uid, paths, e) from None
            target = await _upload_through_chooser(page, uid, paths)
        await _require_readable(page, uid, target, paths)

    shown = ", ".join(paths)
    done = f"File uploaded from {shown}." if len(paths) == 1 else f"Files uploaded from {shown}."
    return await _act(call, action, done, "The files were chosen and it opened a dialog.")


async def _upload_through_chooser(page, uid: str, paths: list[str]) -> int:
    """Click the element, catch the file chooser it opens, answer it; the file input's backend id."""
    [(x, y)] = await element_centers(page, uid)
    chooser = page.wait_for_event("Page.fileChooserOpened", timeout=CHOOSER_WAIT)
    try:
        await page.send("Page.setInterceptFileChooserDialog", {"enabled": True})
        await send_all(page, _click_events(x, y))
        try:
            opened = await chooser
        except EventTimeout:
            raise ToolError(
                f'Failed to upload: element uid "{uid}" is not a file input, and clicking it did not open a '
                f"file chooser within {CHOOSER_WAIT:g} s. Use the uid of the file input or of the button that opens it."
            ) from None
        if opened.get("mode") == "selectSingle" and len(paths) > 1:
            raise ToolError(
                f'The file chooser opened by uid "{uid}" takes a single file; pass one path in filePaths.'
            )
        try:
            await page.send("DOM.setFileInputFiles", {"files": paths, "backendNodeId": opened["backendNodeId"]})
        except CDPError as e:
            raise await _upload_error(page, uid, paths, e) from None
        return opened["backendNodeId"]
    finally:
        chooser.cancel()
        chooser.addErrback(lambda _: None)
        page.send("Page.setInterceptFileChooserDialog", {"enabled": False}).addErrback(lambda _: None)


# Chrome takes any path and hands the page a File that fails when read: try one byte (a
# missing file claims size 0, and an empty slice is never read, so read those whole).
# Chrome also sets files on an input removed from the page; that uid is stale.
_UNREADABLE_FILES = """async function () {
  if (!this.isConnected) return null;
  const bad = [];
  for (const [index, file] of Array.from(this.files).entries()) {
    try { await (file.size ? file.slice(0, 1) : file).arrayBuffer(); } catch (e) { bad.push(index); }
  }
  if (bad.length) {
    this.value = '';
    this.dispatchEvent(new Event('input', {bubbles: true}));
    this.dispatchEvent(new Event('change', {bubbles: true}));
  }
  return bad;
}"""


async def _require_readable(page, uid: str, backend: int, paths: list[str]) -> None:
    """ToolError when the input left the page, or (the input emptied again) when the browser
    cannot read a chosen file."""
    node = await page.send("DOM.resolveNode", {"backendNodeId": backend, "objectGroup": "mcproxy-upload"})
    try:
        result = await page.send(
            "Runtime.callFunctionOn",
            {
                "objectId": node["object"]["objectId"],
                "functionDeclaration": _UNREADABLE_FILES,
                "awaitPromise": True,
                "returnByValue": True,
            },
        )
    finally:
        page.send("Runtime.releaseObjectGroup", {"objectGroup": "mcproxy-upload"}).addErrback(lambda _: None)
    unreadable = result["result"].get("value")
    if unreadable is None:
        raise stale_error(page, uid)
    bad = [paths[index] for index in unreadable if index < len(paths)]
    if bad:
        raise ToolError(
            f"The browser cannot read {', '.join(bad)}: no such readable file on the machine the browser runs on "
            "(paths are on the browser's machine, not on this server). Nothing was uploaded."
        )


async def _upload_error(page, uid: str, paths: list[str], error: CDPError) -> ToolError:
    """Why Chrome refused the files: the element is gone (stale uid), or the paths."""
    await resolve_element(page, uid)
    return ToolError(
        f"Chrome refused the files {', '.join(paths)} ({error}). The paths must name readable files on the "
        "machine the browser runs on (not on this server)."
    )


async def press_key(call: ToolCall) -> Response:
    """Press a key or combination on the focused element, then settle."""
    page = call.page
    key = call.args["key"]
    events = _key_events(key)
    return await _act(
        call, lambda: send_all(page, events), f"Successfully pressed key: {key}", "The key was pressed and it opened a dialog."
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
    submit_events = _key_events(submit) if submit else []

    async def action() -> None:
        if len(text) <= MAX_KEYED_TEXT:
            await send_batched(page, _typing_events(text))
        else:
            await send_batched(page, _inserting_events(text), size=2)
        await send_all(page, submit_events)

    done = f'Typed text "{text}"' + (f" and pressed {submit}" if submit else "")
    return await _act(call, action, done, "The text was typed and it opened a dialog.")


TOOLS = [
    s.ToolSpec(
        name="click",
        category="input",
        title="Click",
        description="Click (or double-click) an element, identified by its uid from the latest snapshot.",
        input_schema=_schema(
            {"uid": s.uid(), "dblClick": s.boolean("Double-click instead of a single click. Default false.")},
            ("uid",),
        ),
        run=click,
    ),
    s.ToolSpec(
        name="fill",
        category="input",
        title="Fill",
        description=(
            "Set the value of a form control identified by uid: types into text fields and text areas, "
            'picks a <select> option by its text or value, and sets checkboxes or radio buttons with "true"/"false".'
        ),
        input_schema=_schema(
            {
                "uid": s.uid(),
                "value": s.string(
                    'The value: text, an option\'s text or value, or "true"/"false" for checkboxes.',
                    max_length=s.MAX_TEXT_LENGTH,
                ),
            },
            ("uid", "value"),
        ),
        run=fill,
    ),
    s.ToolSpec(
        name="press_key",
        category="input",
        title="Press key",
        description=(
            "Press a key or a key combination on the focused element, e.g. \"Enter\", \"Escape\", \"Control+A\", "
            "\"Control+Shift+R\" or \"Control++\". Modifiers: Control, Shift, Alt, Meta."
        ),
        input_schema=_schema(
            {"key": s.string('The key or combination, such as "Enter" or "Control+A".', max_length=MAX_KEY_LENGTH)},
            ("key",),
        ),
        run=press_key,
    ),
    s.ToolSpec(
        name="type_text",
        category="input",
        title="Type text",
        description=(
            "Type text with the keyboard into the element that has focus (click or fill it first). "
            f"A text longer than {MAX_KEYED_TEXT} characters is inserted in chunks as text input (with a key "
            "press for each line break) rather than key by key."
        ),
        input_schema=_schema(
            {
                "text": s.string("The text to type.", max_length=s.MAX_TEXT_LENGTH),
                "submitKey": s.string(
                    'A key to press after the text, such as "Enter" or "Tab".', max_length=MAX_KEY_LENGTH
                ),
            },
            ("text",),
            snapshot=False,
        ),
        run=type_text,
    ),
    s.ToolSpec(
        name="hover",
        category="input",
        title="Hover",
        description="Move the mouse over an element, identified by its uid from the latest snapshot.",
        input_schema=_schema({"uid": s.uid()}, ("uid",)),
        run=hover,
    ),
    s.ToolSpec(
        name="drag",
        category="input",
        title="Drag",
        description=(
            "Drag one element and drop it onto another (both uids from the latest snapshot); "
            "works with HTML5 drag and drop and with pages that follow the mouse."
        ),
        input_schema=_schema(
            {
                "from_uid": s.uid("The uid of the element to drag."),
                "to_uid": s.uid("The uid of the element to drop it onto."),
            },
            ("from_uid", "to_uid"),
        ),
        run=drag,
    ),
    s.ToolSpec(
        name="fill_form",
        category="input",
        title="Fill form",
        description=(
            "Fill several form controls in one call (text fields, lists, checkboxes, radio buttons), in order. "
            "Prefer it to separate fill or click calls for forms: one call, one wait for the page. "
            'Example: a user name, a password and "true" for a "remember me" checkbox.'
        ),
        input_schema=_schema(
            {
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
            },
            ("elements",),
        ),
        run=fill_form,
    ),
    s.ToolSpec(
        name="upload_file",
        category="input",
        title="Upload file",
        description=(
            "Choose files for a file input, or for the file chooser that clicking the element opens. "
            "The paths are on the machine the browser runs on, not on this server; the server never reads them."
        ),
        input_schema=_schema(
            {
                "uid": s.uid("The uid of the file input, or of an element that opens a file chooser when clicked."),
                "filePaths": s.array(
                    "One or more paths of files on the browser's machine.", s.string("A path."), min_items=1
                ),
            },
            ("uid", "filePaths"),
        ),
        run=upload_file,
    ),
    s.ToolSpec(
        name="handle_dialog",
        category="input",
        title="Handle dialog",
        description=(
            "Accept or dismiss the JavaScript dialog (alert, confirm, prompt, leave-page) that blocks a page; "
            "responses show such a dialog under \"# Open dialog\"."
        ),
        input_schema=_schema(
            {
                "action": s.string("Accept or dismiss the dialog.", enum=("accept", "dismiss")),
                "promptText": s.string(
                    "Text to answer a prompt dialog with when accepting it; default: the prompt's default text."
                ),
            },
            ("action",),
            snapshot=False,
        ),
        run=handle_dialog,
        # Never queued behind a call the dialog itself holds up.
        exclusive=False,
        dialog_safe=True,
        # The answer to a prompt may be a password.
        secret_args=frozenset({"promptText"}),
    ),
]
