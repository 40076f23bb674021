"""Results as JSON-RPC ``result`` objects, and which requests are too heavy for the reactor.

Turning a large result into JSON holds the GIL for as long as it takes; `weight` and
`is_heavy` say cheaply when it is worth doing in a thread instead (see
`McpServer.run_blocking`), so that other users' calls go on meanwhile.
"""

from typing import Any

import mcp_types as types
from mcp_types import SERVER_INFO_META_KEY, methods
from pydantic import BaseModel

#: Results at least this heavy (see `weight`) are turned into JSON off the reactor.
OFF_REACTOR_WEIGHT = 256 * 1024


def is_heavy(value: Any, limit: int = OFF_REACTOR_WEIGHT) -> bool:
    """Whether JSON ``value`` holds at least ``limit`` characters of strings, or so many items
    that walking it is work in itself (it stops looking as soon as it knows)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if isinstance(item, str):
            limit -= len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        if limit <= 0 or seen > 10_000:
            return True
    return False


def weight(result: BaseModel) -> int:
    """A cheap estimate of how much work turning a result into JSON is: the characters of the
    text and binary blocks of a tool result's content or a read resource's contents, plus 64
    for each item of its structured lists."""
    total = 0
    for block in getattr(result, "content", None) or getattr(result, "contents", None) or ():
        total += len(getattr(block, "text", "") or getattr(block, "data", "") or getattr(block, "blob", "") or "")
    structured = getattr(result, "structured_content", None) or {}
    for value in structured.values():
        if isinstance(value, list):
            total += 64 * len(value)
    return total


def shape_result(method: str, version: str, result: BaseModel, server_info: types.Implementation | None) -> dict:
    """The result as the JSON-RPC ``result`` of ``method`` for the negotiated version;
    ``server_info`` goes in its ``_meta`` (2026-07-28 answers carry it, others do not).

    A tool's structured content is plain JSON the tool built: it skips pydantic (which
    would walk thousands of console messages holding the GIL) and is put back as it is."""
    structured = getattr(result, "structured_content", None)
    if structured:
        result = result.model_copy(update={"structured_content": {}})
    dump = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    if server_info is not None:
        dump.setdefault("_meta", {})[SERVER_INFO_META_KEY] = server_info.model_dump(
            by_alias=True, mode="json", exclude_none=True
        )
    shaped = methods.serialize_server_result(method, version, dump)
    if structured and "structuredContent" in shaped:
        shaped["structuredContent"] = structured
    return shaped
