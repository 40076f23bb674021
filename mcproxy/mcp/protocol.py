"""The MCP session layer, sans-IO: handshake eras and the stateless 2026-07-28 revision.

A transport hands each decoded JSON-RPC message to `McpSession.handle` together with a
``notify`` callable that carries notifications related to that request (progress, log
messages) to wherever the request's answer goes. ``handle`` returns a Deferred that fires
with the JSON-RPC response dict, or None when there is nothing to answer (a notification,
or a request the client cancelled). Cancelling that Deferred cancels the tool's work.
"""

import base64
import binascii
from typing import Any, Callable, Mapping

import attrs
import mcp_types as types
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LOG_LEVEL_META_KEY,
    METHOD_NOT_FOUND,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
    JSONRPCNotification,
    JSONRPCRequest,
    methods,
)
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    KNOWN_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
    is_version_at_least,
)
from pydantic import BaseModel, ValidationError
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger

import mcproxy
from mcproxy.auth.principal import Principal
from mcproxy.errors import MCProxyError, RateLimited
from mcproxy.mcp.jsonrpc import (
    NOT_INITIALIZED,
    TOO_MANY_IN_FLIGHT,
    Encoded,
    RpcError,
    error_message,
    notification_message,
    readable,
    result_message,
    to_json_in_pieces,
)
from mcproxy.calls import CallContext, LogSender, ProgressReporter, SessionView

log = Logger()

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""RFC 5424 severities, least severe first (the order `logging/setLevel` filters by)."""

INSTRUCTIONS = (
    "mcproxy drives your own Chrome browser through the Chrome DevTools Protocol. "
    "Tools have the names and parameters of chrome-devtools-mcp: list_pages shows the open "
    "pages with their ids; pass pageId to act on a specific page."
)

NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Methods whose ``Mcp-Name`` header mirrors a body parameter (2026-07-28)."""

Notify = Callable[[dict], None]

#: Results at least this heavy (see `_weight`) are turned into JSON off the reactor.
OFF_REACTOR_WEIGHT = 256 * 1024


def _heavy(value: Any, limit: int = OFF_REACTOR_WEIGHT) -> bool:
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


def _weight(result: BaseModel) -> int:
    """A cheap estimate of how much work turning a tool result into JSON is: the characters
    of its text and binary content, plus 64 for each item of its structured lists."""
    weight = 0
    for block in getattr(result, "content", None) or ():
        weight += len(getattr(block, "text", "") or getattr(block, "data", "") or "")
    structured = getattr(result, "structured_content", None) or {}
    for value in structured.values():
        if isinstance(value, list):
            weight += 64 * len(value)
    return weight


class EmptyResources:
    """The resource hook until artifacts exist: nothing listed, nothing found."""

    def list_resources(self, principal: Principal) -> list[types.Resource]:
        return []

    def read_resource(self, principal: Principal, uri: str) -> types.ReadResourceResult:
        raise RpcError(INVALID_PARAMS, f"Resource not found: {uri}", data={"uri": uri})


@attrs.define
class McpServer:
    """What every session shares: the tool and resource providers and the server's identity.

    ``resources`` has ``list_resources(principal)`` and ``read_resource(principal, uri)``;
    either may return a Deferred. Raise `RpcError` or `mcproxy.errors.NotFound` for a
    resource that does not exist or is not the caller's.
    """

    tools: Any
    resources: Any = attrs.field(factory=EmptyResources)
    max_in_flight: int = 16
    instructions: str = INSTRUCTIONS
    #: ``run_blocking(f, *args)``: Deferred of ``f(*args)`` run off the reactor (a thread),
    #: for turning big results into JSON; None turns every result in the reactor (tests).
    run_blocking: Callable[..., Deferred] | None = None

    @property
    def server_info(self) -> types.Implementation:
        return types.Implementation(name="mcproxy", version=mcproxy.__version__)

    def capabilities(self, version: str) -> types.ServerCapabilities:
        """Capabilities for ``version``: tools and resources always, logging in the handshake eras."""
        return types.ServerCapabilities(
            tools=types.ToolsCapability(list_changed=False),
            resources=types.ResourcesCapability(subscribe=False, list_changed=False),
            logging=types.LoggingCapability() if version in HANDSHAKE_PROTOCOL_VERSIONS else None,
        )

    def initialize_result(self, version: str) -> types.InitializeResult:
        return types.InitializeResult(
            protocol_version=version,
            capabilities=self.capabilities(version),
            server_info=self.server_info,
            instructions=self.instructions,
        )

    def discover_result(self) -> types.DiscoverResult:
        return types.DiscoverResult(
            supported_versions=list(KNOWN_PROTOCOL_VERSIONS),
            capabilities=self.capabilities(MODERN_PROTOCOL_VERSIONS[-1]),
            instructions=self.instructions,
        )


@attrs.frozen
class ModernEnvelope:
    """The per-request fields of a 2026-07-28 request."""

    protocol_version: str
    log_level: str | None
    client_info: Any
    client_capabilities: Any


def request_version(message: JSONRPCRequest | JSONRPCNotification, headers: Mapping[str, str]) -> str | None:
    """The protocol version a session-less message claims: its ``_meta`` envelope's, else the header's."""
    meta = (message.params or {}).get("_meta")
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


def modern_envelope(message: JSONRPCRequest, headers: Mapping[str, str] | None) -> ModernEnvelope:
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
    return ModernEnvelope(version, level, meta.get(CLIENT_INFO_META_KEY), meta[CLIENT_CAPABILITIES_META_KEY])


def _header_value(raw: str | None) -> str | None:
    """A header value, unwrapping the ``=?base64?...?=`` form clients use for non-ASCII text."""
    if raw is None or not (raw.startswith("=?base64?") and raw.endswith("?=")):
        return raw
    try:
        return base64.b64decode(raw[9:-2], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class McpSession:
    """One MCP conversation: a handshake-era session, or one stateless 2026-07-28 request.

    Create with ``modern=None`` for the handshake eras (``initialize`` first) or with the
    request's `ModernEnvelope` for a 2026-07-28 request, which needs no handshake.
    """

    def __init__(
        self,
        server: McpServer,
        principal: Principal,
        view: SessionView,
        *,
        modern: ModernEnvelope | None = None,
    ):
        self.server = server
        self.principal = principal
        self.view = view
        self.modern = modern
        self.protocol_version: str | None = modern.protocol_version if modern else None
        self.initialized = modern is not None
        self.client_params: types.InitializeRequestParams | None = None
        self.log_level: str | None = modern.log_level if modern else None
        self.closed = False
        self.client: str | None = None
        self._in_flight: dict[Any, Deferred] = {}
        self._cancelled_by_peer: set[Any] = set()
        self._handlers = {
            "ping": self._ping,
            "tools/list": self._list_tools,
            "tools/call": self._call_tool,
            "logging/setLevel": self._set_level,
            "resources/list": self._list_resources,
            "resources/read": self._read_resource,
            "resources/templates/list": self._list_templates,
            "server/discover": self._discover,
        }

    @property
    def in_flight(self) -> int:
        """How many requests are running now."""
        return len(self._in_flight)

    def handle(self, message: Any, notify: Notify, client: str | None = None) -> Deferred:
        """Handle one decoded message. Deferred[dict | None]: the response to send, if any.

        ``client`` is the address the message came from (tool calls are audited with the
        address of the latest request of the session).
        """
        if client is not None:
            self.client = client
        if isinstance(message, JSONRPCNotification):
            self._notification(message)
            return succeed(None)
        if not isinstance(message, JSONRPCRequest):
            return succeed(None)  # a response: we send the client no requests
        rid = message.id
        if self.closed:
            return succeed(error_message(rid, INVALID_REQUEST, "The session is closed"))
        if rid in self._in_flight:
            return succeed(error_message(rid, INVALID_REQUEST, f"Request id {rid!r} is already in use"))
        if message.method not in ("ping", "initialize") and len(self._in_flight) >= self.server.max_in_flight:
            return succeed(
                error_message(
                    rid,
                    TOO_MANY_IN_FLIGHT,
                    f"Too many requests in flight on this session (limit {self.server.max_in_flight}); "
                    "wait for one to finish",
                )
            )
        d = Deferred.fromCoroutine(self._answer(message, notify))
        if not d.called:
            self._in_flight[rid] = d

            def done(result):
                self._in_flight.pop(rid, None)
                self._cancelled_by_peer.discard(rid)
                return result

            d.addBoth(done)
        return d

    def close(self) -> None:
        """End the session: cancel everything in flight; later requests are refused."""
        self.closed = True
        for d in list(self._in_flight.values()):
            d.cancel()

    def _notification(self, message: JSONRPCNotification) -> None:
        if message.method == "notifications/initialized":
            self.initialized = self.protocol_version is not None
        elif message.method == "notifications/cancelled":
            rid = (message.params or {}).get("requestId")
            d = self._in_flight.get(rid) if isinstance(rid, (str, int)) else None
            if d is not None:
                log.debug(
                    "Request {rid} cancelled by the client ({reason})",
                    rid=rid,
                    reason=(message.params or {}).get("reason"),
                )
                self._cancelled_by_peer.add(rid)
                d.cancel()

    async def _answer(self, message: JSONRPCRequest, notify: Notify) -> dict | None:
        rid = message.id
        try:
            return result_message(rid, await self._dispatch(message, notify))
        except CancelledError:
            if rid in self._cancelled_by_peer:
                return None
            raise
        except RpcError as e:
            return e.to_message(rid)
        except RateLimited as e:
            return error_message(rid, e.jsonrpc_code, e.message, {"retryAfter": e.retry_after})
        except MCProxyError as e:
            return error_message(rid, e.jsonrpc_code, e.message)
        except Exception:
            log.failure(
                "Unhandled error answering {method} for user {user_id} (session {session_id})",
                method=message.method,
                user_id=self.principal.user_id,
                session_id=self.view.session_id,
            )
            return error_message(rid, INTERNAL_ERROR, "Internal error; the server log has details")

    async def _dispatch(self, message: JSONRPCRequest, notify: Notify) -> dict | Encoded:
        method = message.method
        if method == "initialize" and self.modern is None:
            return self._initialize(message)
        if not self.initialized and method != "ping":
            raise RpcError(NOT_INITIALIZED, f"Session not initialized: send initialize before {method}")
        version = self.protocol_version or LATEST_HANDSHAKE_VERSION
        try:
            if self.server.run_blocking is not None and _heavy(message.params):
                # Megabytes of arguments (a long form): validated in a thread.
                parsed = await self.server.run_blocking(methods.parse_client_request, method, version, message.params)
            else:
                parsed = methods.parse_client_request(method, version, message.params)
        except KeyError:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method} (protocol {version})") from None
        except ValidationError as e:
            raise RpcError(INVALID_PARAMS, f"Invalid params for {method}: {readable(e)}") from None
        handler = self._handlers.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method} is not offered by this server")
        result = await handler(parsed, message, notify)
        if self.server.run_blocking is not None and _weight(result) >= OFF_REACTOR_WEIGHT:
            # Megabytes of answer (a long console list, a big image): shaped and encoded in a
            # thread, so other users' calls go on meanwhile.
            return await self.server.run_blocking(lambda: Encoded(to_json_in_pieces(self._shape(method, version, result))))
        return self._shape(method, version, result)

    def _shape(self, method: str, version: str, result: BaseModel) -> dict:
        """The result as the JSON-RPC ``result`` of ``method`` for the negotiated version.

        A tool's structured content is plain JSON the tool built: it skips pydantic (which
        would walk thousands of console messages holding the GIL) and is put back as it is."""
        structured = getattr(result, "structured_content", None)
        if structured:
            result = result.model_copy(update={"structured_content": {}})
        dump = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        if self.modern is not None:
            dump.setdefault("_meta", {})[SERVER_INFO_META_KEY] = self.server.server_info.model_dump(
                by_alias=True, mode="json", exclude_none=True
            )
        shaped = methods.serialize_server_result(method, version, dump)
        if structured and "structuredContent" in shaped:
            shaped["structuredContent"] = structured
        return shaped

    def _initialize(self, message: JSONRPCRequest) -> dict:
        if self.protocol_version is not None:
            raise RpcError(INVALID_REQUEST, "The session is already initialized")
        try:
            parsed = methods.parse_client_request("initialize", LATEST_HANDSHAKE_VERSION, message.params)
        except ValidationError as e:
            raise RpcError(INVALID_PARAMS, f"Invalid params for initialize: {readable(e)}") from None
        requested = parsed.params.protocol_version
        version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        self.protocol_version = version
        self.client_params = parsed.params
        # Requests after the initialize response are accepted even before notifications/initialized.
        self.initialized = True
        log.info(
            "MCP session {session_id} for user {user_id} initialized at {version} by {client}",
            session_id=self.view.session_id,
            user_id=self.principal.user_id,
            version=version,
            client=parsed.params.client_info.name,
        )
        result = self.server.initialize_result(version)
        return methods.serialize_server_result(
            "initialize", version, result.model_dump(by_alias=True, mode="json", exclude_none=True)
        )

    async def _ping(self, parsed, message, notify) -> BaseModel:
        return types.EmptyResult()

    async def _discover(self, parsed, message, notify) -> BaseModel:
        return self.server.discover_result()

    async def _set_level(self, parsed, message, notify) -> BaseModel:
        self.log_level = parsed.params.level
        return types.EmptyResult()

    async def _list_tools(self, parsed, message, notify) -> BaseModel:
        tools = await _maybe_deferred(self.server.tools.list_tools(self.principal))
        return types.ListToolsResult(tools=list(tools))

    async def _list_resources(self, parsed, message, notify) -> BaseModel:
        # Resources are what tools saved: a credential that may call no tool (say, metrics
        # only) sees none of its user's, as if there were none.
        if not self.server.tools.list_tools(self.principal):
            return types.ListResourcesResult(resources=[])
        found = await _maybe_deferred(self.server.resources.list_resources(self.principal))
        return types.ListResourcesResult(resources=list(found))

    async def _read_resource(self, parsed, message, notify) -> BaseModel:
        uri = parsed.params.uri
        if not self.server.tools.list_tools(self.principal):
            return EmptyResources().read_resource(self.principal, uri)  # raises "not found"
        return await _maybe_deferred(self.server.resources.read_resource(self.principal, uri))

    async def _list_templates(self, parsed, message, notify) -> BaseModel:
        return types.ListResourceTemplatesResult(resource_templates=[])

    async def _call_tool(self, parsed, message, notify) -> BaseModel:
        params = parsed.params
        live = [True]  # nothing about this request may be sent once it is answered
        context = CallContext(
            principal=self.principal,
            session=self.view,
            protocol_version=self.protocol_version,
            report_progress=self._progress_reporter(message, notify, live),
            log=self._logger(notify, live),
            request_id=str(message.id),
            client=self.client,
        )
        try:
            return await self.server.tools.call_tool(params.name, params.arguments or {}, context)
        except (CancelledError, RateLimited):
            raise
        except MCProxyError as e:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=e.message)], is_error=True
            )
        finally:
            live[0] = False

    def _progress_reporter(self, request: JSONRPCRequest, notify: Notify, live: list) -> ProgressReporter:
        meta = (request.params or {}).get("_meta")
        token = meta.get("progressToken") if isinstance(meta, Mapping) else None
        with_message = is_version_at_least(self.protocol_version, "2025-03-26")

        def report_progress(progress: float, total: float | None = None, message: str | None = None) -> None:
            if token is None or not live[0]:
                return
            params: dict = {"progressToken": token, "progress": progress}
            if total is not None:
                params["total"] = total
            if message is not None and with_message:
                params["message"] = message
            notify(notification_message("notifications/progress", params))

        return report_progress

    def _logger(self, notify: Notify, live: list) -> LogSender:
        def send_log(level: str, data: Any, logger: str | None = None) -> None:
            if level not in LOG_LEVELS:
                raise ValueError(f"unknown log level {level!r}")
            threshold = self.log_level
            if threshold is None or not live[0] or LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
                return
            params: dict = {"level": level, "data": data}
            if logger is not None:
                params["logger"] = logger
            notify(notification_message("notifications/message", params))

        return send_log


async def _maybe_deferred(value: Any) -> Any:
    if isinstance(value, Deferred):
        return await value
    return value
