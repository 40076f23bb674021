"""Which protocol revision a message speaks, and the per-request envelope of 2026-07-28.

The handshake eras agree on a version once, in ``initialize``; a 2026-07-28 request
instead carries its version, client and capabilities in ``params._meta``, mirrored in
routing headers that must agree with the body.
"""

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import attrs
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    KNOWN_PROTOCOL_VERSIONS,
    MODERN_PROTOCOL_VERSIONS,
)

from mcproxy.mcp.codes import HEADER_MISMATCH, INVALID_PARAMS, UNSUPPORTED_PROTOCOL_VERSION
from mcproxy.mcp.jsonrpc import Message, Reply, Request, RpcError
from mcproxy.mcp.notifications import LOG_LEVELS

NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Methods whose ``Mcp-Name`` header mirrors a body parameter (2026-07-28)."""


@attrs.frozen
class ModernEnvelope:
    """The per-request fields of a 2026-07-28 request."""

    protocol_version: str
    log_level: str | None
    client_info: Any
    client_capabilities: Any


def request_version(message: Message, headers: Mapping[str, str]) -> str | None:
    """The protocol version a session-less message claims: its ``_meta`` envelope's, else the header's."""
    meta = None if isinstance(message, Reply) else (message.params or {}).get("_meta")
    if isinstance(meta, Mapping) and isinstance(meta.get(PROTOCOL_VERSION_META_KEY), str):
        return meta[PROTOCOL_VERSION_META_KEY]
    return headers.get("mcp-protocol-version") or None


def is_stateless(version: str | None) -> bool:
    """Whether a session-less message with this version takes the 2026-07-28 path.

    Unknown versions go there too, so that they are answered with the supported list.
    """
    return version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS


def unsupported_version(requested: Any) -> RpcError:
    """The -32022 error naming every version we speak."""
    return RpcError(
        UNSUPPORTED_PROTOCOL_VERSION,
        f"Unsupported protocol version {requested!r}",
        data={"supported": list(KNOWN_PROTOCOL_VERSIONS), "requested": str(requested)},
    )


def modern_envelope(message: Request, headers: Mapping[str, str] | None) -> ModernEnvelope:
    """Check a 2026-07-28 request's ``_meta`` envelope and its routing headers.

    ``headers`` maps lower-case header names to values (None skips the header checks).
    Raises `RpcError`: -32602 for a missing envelope, -32020 when a header disagrees
    with the body, -32022 for a version we do not serve.
    """
    meta = (message.params or {}).get("_meta")
    if not isinstance(meta, Mapping):
        raise RpcError(
            INVALID_PARAMS,
            f"params._meta must carry {PROTOCOL_VERSION_META_KEY!r} and {CLIENT_CAPABILITIES_META_KEY!r}",
        )
    missing = [k for k in (PROTOCOL_VERSION_META_KEY, CLIENT_CAPABILITIES_META_KEY) if k not in meta]
    if missing:
        raise RpcError(INVALID_PARAMS, f"params._meta is missing {', '.join(missing)}")
    version = meta[PROTOCOL_VERSION_META_KEY]
    if headers is not None:
        if headers.get("mcp-protocol-version") != version:
            raise RpcError(
                HEADER_MISMATCH, "MCP-Protocol-Version header does not match params._meta's protocol version"
            )
        if headers.get("mcp-method") != message.method:
            raise RpcError(HEADER_MISMATCH, "Mcp-Method header does not match the request's method")
        key = NAME_BEARING.get(message.method)
        value = (message.params or {}).get(key) if key else None
        if value is not None and _header_value(headers.get("mcp-name")) != value:
            raise RpcError(HEADER_MISMATCH, f"Mcp-Name header does not match params.{key}")
    if version not in MODERN_PROTOCOL_VERSIONS:
        raise unsupported_version(version)
    level = meta.get(LOG_LEVEL_META_KEY)
    if level is not None and level not in LOG_LEVELS:
        raise RpcError(INVALID_PARAMS, f"{LOG_LEVEL_META_KEY} must be one of {', '.join(LOG_LEVELS)}")
    capabilities, client_info = meta[CLIENT_CAPABILITIES_META_KEY], meta.get(CLIENT_INFO_META_KEY)
    if not isinstance(capabilities, Mapping):
        raise RpcError(INVALID_PARAMS, f"{CLIENT_CAPABILITIES_META_KEY} must be an object")
    if client_info is not None and not (
        isinstance(client_info, Mapping)
        and isinstance(client_info.get("name"), str)
        and isinstance(client_info.get("version"), str)
    ):
        raise RpcError(INVALID_PARAMS, f"{CLIENT_INFO_META_KEY} must be an object with a name and a version")
    return ModernEnvelope(version, level, client_info, capabilities)


def _header_value(raw: str | None) -> str | None:
    """A header value, unwrapping the ``=?base64?...?=`` form clients use for non-ASCII text."""
    if raw is None or not (raw.startswith("=?base64?") and raw.endswith("?=")):
        return raw
    try:
        return base64.b64decode(raw[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
