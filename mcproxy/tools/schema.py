"""Tool input schemas: building them, and checking arguments against them.

The schemas keep chrome-devtools-mcp 1.11's parameter names, types and required lists so
that clients and prompts built for it work unchanged. The validator covers the subset of
JSON Schema those schemas use (type, required, enum, minimum/maximum, minItems/maxItems,
maxLength, items, properties, additionalProperties: false) and names the offending parameter in
every message.

Every string and list a tool takes has a size limit (``maxLength`` / ``maxItems``, the
constants below), so that no single call makes the proxy or the browser do unbounded work:
upstream declares none, and for normal inputs these change nothing.
"""

from typing import Any

from mcproxy.errors import ToolError

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_SAFE_INTEGER = 9007199254740991

#: Characters of text one call may type or fill (type_text, fill, fill_form values).
MAX_TEXT_LENGTH = 100_000
#: Characters of JavaScript (evaluate_script's function, navigate_page's initScript) and of URLs.
MAX_SCRIPT_LENGTH = 1_000_000
#: Characters of any other string argument (uids, keys, names, paths, JSON options).
MAX_STRING_LENGTH = 10_000
#: Items of any list argument (fill_form elements, upload_file paths, wait_for texts, script args).
MAX_ITEMS = 100


class InvalidArguments(ToolError):
    """The arguments do not match the tool's input schema."""


def string(
    description: str,
    *,
    enum: tuple[str, ...] | None = None,
    default: str | None = None,
    max_length: int = MAX_STRING_LENGTH,
) -> dict:
    """A string parameter of at most ``max_length`` characters, optionally restricted to ``enum``."""
    schema: dict[str, Any] = {"type": "string", "description": description}
    if enum is not None:
        schema["enum"] = list(enum)
    else:
        schema["maxLength"] = max_length
    if default is not None:
        schema["default"] = default
    return schema


def boolean(description: str, *, default: bool | None = None) -> dict:
    """A boolean flag parameter."""
    schema: dict[str, Any] = {"type": "boolean", "description": description}
    if default is not None:
        schema["default"] = default
    return schema


def number(description: str, *, minimum: float | None = None, maximum: float | None = None) -> dict:
    """A number parameter with optional bounds."""
    schema: dict[str, Any] = {"type": "number", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def timeout_ms(description: str) -> dict:
    """The integer ``timeout`` parameter in milliseconds, bounded like upstream's."""
    return {
        "type": "integer",
        "description": description,
        "minimum": -MAX_SAFE_INTEGER,
        "maximum": MAX_SAFE_INTEGER,
    }


def array(description: str, items: dict, *, min_items: int | None = None, max_items: int = MAX_ITEMS) -> dict:
    """A list parameter of at most ``max_items`` items that follow ``items``."""
    schema: dict[str, Any] = {"type": "array", "description": description, "items": items}
    if min_items is not None:
        schema["minItems"] = min_items
    schema["maxItems"] = max_items
    return schema


def page_id(description: str = "The id of the page to act on (from list_pages).") -> dict:
    """The ``pageId`` parameter (a JSON number, as upstream declares it)."""
    return {"type": "number", "description": description}


def uid(description: str = "The uid of an element, from the latest take_snapshot of the page.") -> dict:
    """An element uid parameter."""
    return string(description)


def obj(properties: dict[str, dict], required: tuple[str, ...] = ()) -> dict:
    """An input schema: a closed object with these properties."""
    schema: dict[str, Any] = {
        "type": "object",
        "$schema": SCHEMA_DIALECT,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


_TYPE_NAMES = {
    "string": "a string",
    "boolean": "a boolean",
    "number": "a number",
    "integer": "an integer",
    "array": "an array",
    "object": "an object",
}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(f"unsupported schema type {kind!r}")


def _check(schema: dict, value: Any, where: str) -> None:
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        raise InvalidArguments(f"Invalid argument {where}: expected {_TYPE_NAMES[kind]}, got {_json_type(value)}.")
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(f'"{choice}"' for choice in schema["enum"])
        raise InvalidArguments(f"Invalid argument {where}: must be one of {choices}, got {value!r}.")
    if "minimum" in schema and value < schema["minimum"]:
        raise InvalidArguments(f"Invalid argument {where}: must be at least {schema['minimum']}, got {value}.")
    if "maximum" in schema and value > schema["maximum"]:
        raise InvalidArguments(f"Invalid argument {where}: must be at most {schema['maximum']}, got {value}.")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise InvalidArguments(
            f"Invalid argument {where}: {len(value)} characters, more than the {schema['maxLength']} this server "
            "accepts in one call. Send a shorter value (split long text over several calls)."
        )
    if kind == "array":
        if len(value) < schema.get("minItems", 0):
            raise InvalidArguments(f"Invalid argument {where}: must have at least {schema['minItems']} item(s).")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise InvalidArguments(
                f"Invalid argument {where}: {len(value)} items, more than the {schema['maxItems']} this server "
                "accepts in one call. Split them over several calls."
            )
        for index, item in enumerate(value):
            _check(schema["items"], item, f"{where}[{index}]")
    if kind == "object":
        for name, item in value.items():
            if name in schema.get("properties", {}) and item is not None:
                _check(schema["properties"][name], item, f"{where}.{name}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind in ("boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, kind):
            return _TYPE_NAMES[kind]
    return type(value).__name__


def validate(schema: dict, arguments: dict | None) -> dict:
    """Check ``arguments`` against an `obj` schema; return them (a fresh dict).

    Raise `InvalidArguments` naming the first offending parameter.
    """
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict):
        raise InvalidArguments("Invalid arguments: expected an object of named parameters.")
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in arguments or arguments[name] is None:
            raise InvalidArguments(f'Missing required argument "{name}".')
    for name, value in arguments.items():
        if name not in properties:
            known = ", ".join(f'"{key}"' for key in properties) or "none"
            raise InvalidArguments(f'Unknown argument "{name}" (this tool takes: {known}).')
        if value is None:
            continue
        _check(properties[name], value, f'"{name}"')
    return {name: value for name, value in arguments.items() if value is not None}
