"""The keyboard model: key names and combinations as the ``Input.dispatchKeyEvent`` calls
Chrome needs, and text as key presses or chunks of text input.

Typed text up to `MAX_KEYED_TEXT` characters becomes key events, a key press a character, as
upstream types it; a longer one is inserted `TEXT_CHUNK` characters at a time, with a key
press for each line break, because Chrome takes time growing with the field's length for
every key event.
"""

from collections.abc import Iterator
from typing import Any

from mcproxy.errors import ToolError

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

#: Longest text type_text sends as key events; longer texts are inserted in chunks.
MAX_KEYED_TEXT = 1000
#: Characters of one ``Input.insertText`` call when a long text is typed.
TEXT_CHUNK = 1000


def key_events(combo: str) -> list[tuple[str, dict]]:
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


def inserting_events(text: str) -> Iterator[tuple[str, dict]]:
    """The calls that type a long ``text``: runs of at most `TEXT_CHUNK` characters as text
    input, line breaks as Enter presses (as typing them would)."""
    for index, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")):
        if index:
            yield from _key_pair("Enter", 0)
        for start in range(0, len(line), TEXT_CHUNK):
            yield "Input.insertText", {"text": line[start : start + TEXT_CHUNK]}


def typing_events(text: str) -> Iterator[tuple[str, dict]]:
    """The calls that type ``text`` key by key, made as they are sent."""
    for char in text:
        key = "Enter" if char in "\r\n" else char
        if key == "Enter" or (key.isascii() and (key.isalnum() or key in _PUNCTUATION)):
            yield from _key_pair(key, 0)
        else:
            yield "Input.insertText", {"text": char}
