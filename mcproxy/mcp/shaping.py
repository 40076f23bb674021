"""Results as JSON-RPC ``result`` objects, and which requests are too heavy for the reactor.

A tool result is built in its wire shape already (`mcproxy.tools.call`): shaping it is
adding what the 2026-07-28 revision puts around every result. The rare methods' results
are mcp_types models, which mcp_types shapes for the negotiated version.

Turning a large result into JSON holds the GIL for as long as it takes; `weight` and
`is_heavy` say cheaply when it is worth doing in a thread instead (see
`McpServer.run_blocking`), so that other users' calls go on meanwhile.
"""

from typing import Any

from mcp_types import methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
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


def weight(result: dict | BaseModel) -> int:
    """A cheap estimate of how much work turning a result into JSON is: the characters of the
    text and binary blocks of a tool result's content or a read resource's contents, plus 64
    for each item of its structured lists."""
    if isinstance(result, BaseModel):
        contents = getattr(result, "contents", None) or ()
        return sum(len(getattr(item, "text", None) or getattr(item, "blob", None) or "") for item in contents)
    total = 0
    for block in result["content"]:
        total += len(block.get("text") or block.get("data") or "")
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        total += 64 * sum(len(value) for value in structured.values() if isinstance(value, list))
    return total


def shape_result(method: str, version: str, result: dict | BaseModel, meta: dict | None) -> dict:
    """The result as the JSON-RPC ``result`` of ``method`` for the negotiated version; ``meta``
    goes in its ``_meta`` (the server's identity, which 2026-07-28 answers carry).

    A tool result (a dict, see `mcproxy.tools.call.Response.to_result`) is completed in place."""
    if isinstance(result, dict):
        if version in MODERN_PROTOCOL_VERSIONS:
            result["resultType"] = "complete"
        if meta is not None:
            result["_meta"] = meta
        return result
    dump = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    if meta is not None:
        dump["_meta"] = {**dump.get("_meta", {}), **meta}
    return methods.serialize_server_result(method, version, dump)
