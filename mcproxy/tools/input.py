"""Input tools: click, fill, press_key, type_text.

Clicks and keys go through ``Input.dispatch*`` directly (no page-side helpers), fills through
DOM focus plus ``Input.insertText`` (or a page-side function for selects and checkboxes);
every action then waits for the page to settle (`mcproxy.tools.settle`).
"""

from typing import Any, Awaitable, Callable

from twisted.internet.defer import FirstError, gatherResults

from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.pages import Response, ToolCall
from mcproxy.tools.settle import act_and_settle, dialog_message
from mcproxy.tools.snapshot import element_error, resolve_element, resolve_uid, stale_error, take_snapshot

_INCLUDE_SNAPSHOT = s.boolean("Also return a fresh snapshot of the page after the action. Default false.")

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
  return {kind: 'type'};
}"""


async def send_all(page, calls: list[tuple[str, dict]]) -> list[dict]:
    """Send CDP calls back to back (Chrome runs a session's calls in order), await them all."""
    try:
        return await gatherResults([page.send(method, params) for method, params in calls], consumeErrors=True)
    except FirstError as e:
        e.subFailure.raiseException()


async def element_center(page, uid: str) -> tuple[float, float]:
    """Scroll the element into view; the centre of its first visible box, in viewport pixels."""
    backend = resolve_uid(page, uid)
    try:
        _, quads = await send_all(
            page,
            [
                ("DOM.scrollIntoViewIfNeeded", {"backendNodeId": backend}),
                ("DOM.getContentQuads", {"backendNodeId": backend}),
            ],
        )
    except CDPError as e:
        raise element_error(page, uid, e) from None
    for quad in quads.get("quads", []):
        xs, ys = quad[0::2], quad[1::2]
        if max(xs) - min(xs) >= 1 and max(ys) - min(ys) >= 1:
            return sum(xs) / 4, sum(ys) / 4
    raise ToolError(f'Element uid "{uid}" has no visible box on page {page.page_id}, so it cannot be clicked.')


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


def _typing_events(text: str) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    for char in text:
        key = "Enter" if char in "\r\n" else char
        if key == "Enter" or (key.isascii() and (key.isalnum() or key in _PUNCTUATION)):
            events += _key_pair(key, 0)
        else:
            events.append(("Input.insertText", {"text": char}))
    return events


async def _act(call: ToolCall, action: Callable[[], Awaitable[Any]], done: str, dialog_lead: str) -> Response:
    page = call.page
    dialog = await act_and_settle(page, call.clock, action, navigation_timeout=call.config.navigation_timeout)
    if dialog is not None:
        return Response().add(dialog_message(dialog_lead, dialog))
    response = Response().add(done)
    if call.args.get("includeSnapshot"):
        response.add_snapshot(await take_snapshot(page))
    return response


async def click(call: ToolCall) -> Response:
    """Mouse events at the centre of the element's box, then settle."""
    page = call.page
    x, y = await element_center(page, call.args["uid"])
    clicks = 2 if call.args.get("dblClick") else 1
    mouse = [("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})]
    for count in range(1, clicks + 1):
        for kind in ("mousePressed", "mouseReleased"):
            mouse.append(
                ("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": count})
            )
    done = "Successfully double clicked on the element" if clicks == 2 else "Successfully clicked on the element"
    return await _act(call, lambda: send_all(page, mouse), done, "The element was clicked and it opened a dialog.")


async def fill(call: ToolCall) -> Response:
    """Set a control's value the way a user would, then settle."""
    page = call.page
    uid, value = call.args["uid"], call.args["value"]
    _, object_id = await resolve_element(page, uid)

    async def action() -> None:
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
            await page.send("Input.insertText", {"text": value})

    return await _act(call, action, "Successfully filled out the element", "The element was filled and it opened a dialog.")


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
    events = _typing_events(text)
    submit = call.args.get("submitKey")
    if submit:
        events += _key_events(submit)
    done = f'Typed text "{text}"' + (f" and pressed {submit}" if submit else "")
    return await _act(call, lambda: send_all(page, events), done, "The text was typed and it opened a dialog.")


TOOLS = [
    s.ToolSpec(
        name="click",
        category="input",
        title="Click",
        description="Click (or double-click) an element, identified by its uid from the latest snapshot.",
        input_schema=s.obj(
            {
                "pageId": s.page_id(),
                "uid": s.uid(),
                "dblClick": s.boolean("Double-click instead of a single click. Default false."),
                "includeSnapshot": _INCLUDE_SNAPSHOT,
            },
            ("pageId", "uid"),
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
        input_schema=s.obj(
            {
                "pageId": s.page_id(),
                "uid": s.uid(),
                "value": s.string('The value: text, an option\'s text or value, or "true"/"false" for checkboxes.'),
                "includeSnapshot": _INCLUDE_SNAPSHOT,
            },
            ("pageId", "uid", "value"),
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
        input_schema=s.obj(
            {
                "pageId": s.page_id(),
                "key": s.string('The key or combination, such as "Enter" or "Control+A".'),
                "includeSnapshot": _INCLUDE_SNAPSHOT,
            },
            ("pageId", "key"),
        ),
        run=press_key,
    ),
    s.ToolSpec(
        name="type_text",
        category="input",
        title="Type text",
        description="Type text with the keyboard into the element that has focus (click or fill it first).",
        input_schema=s.obj(
            {
                "pageId": s.page_id(),
                "text": s.string("The text to type."),
                "submitKey": s.string('A key to press after the text, such as "Enter" or "Tab".'),
            },
            ("pageId", "text"),
        ),
        run=type_text,
    ),
]
