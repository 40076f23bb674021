"""The MCP session layer, sans-IO: handshake eras and the stateless 2026-07-28 revision.

A transport hands each decoded JSON-RPC message to `McpSession.handle` together with a
``notify`` callable that carries notifications related to that request (progress, log
messages) to wherever the request's answer goes. ``handle`` returns a Deferred that fires
with the JSON-RPC response dict, or None when there is nothing to answer (a notification,
or a request the client cancelled). Cancelling that Deferred cancels the tool's work.

Which revision a session-less message speaks is for `mcproxy.mcp.envelope` to say; the
notifications a request sends are built by `mcproxy.mcp.notifications`, and its answer
is shaped by `mcproxy.mcp.shaping`.
"""

from collections.abc import Callable
from typing import Any

import attrs
import mcp_types as types
from mcp_types import JSONRPCNotification, JSONRPCRequest, methods
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    KNOWN_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
)
from pydantic import BaseModel, ValidationError
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger

import mcproxy
from mcproxy.auth.principal import Principal
from mcproxy.calls import CallContext, SessionView
from mcproxy.errors import MCProxyError, RateLimited
from mcproxy.mcp.codes import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_INITIALIZED,
    TOO_MANY_IN_FLIGHT,
)
from mcproxy.mcp.envelope import ModernEnvelope
from mcproxy.mcp.jsonrpc import (
    Encoded,
    RpcError,
    error_message,
    readable,
    result_message,
    to_json_in_pieces,
)
from mcproxy.mcp.notifications import Notify, log_sender, progress_reporter
from mcproxy.mcp.shaping import OFF_REACTOR_WEIGHT, is_heavy, shape_result, weight

log = Logger()

INSTRUCTIONS = (
    "mcproxy drives your own Chrome browser through the Chrome DevTools Protocol. "
    "Tools have the names and parameters of chrome-devtools-mcp: list_pages shows the open "
    "pages with their ids; pass pageId to act on a specific page."
)


def resource_not_found(uri: str) -> RpcError:
    """What ``resources/read`` answers for a resource that is missing or not the caller's:
    the same error either way, so that nothing tells the two apart."""
    return RpcError(INVALID_PARAMS, f"Resource not found: {uri}", data={"uri": uri})


class EmptyResources:
    """The resource hook until artifacts exist: nothing listed, nothing found."""

    def list_resources(self, principal: Principal) -> list[types.Resource]:
        return []

    def read_resource(self, principal: Principal, uri: str) -> types.ReadResourceResult:
        raise resource_not_found(uri)


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
            if self.server.run_blocking is not None and is_heavy(message.params):
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
        server_info = self.server.server_info if self.modern is not None else None
        if self.server.run_blocking is not None and weight(result) >= OFF_REACTOR_WEIGHT:
            # Megabytes of answer (a long console list, a big image): shaped and encoded in a
            # thread, so other users' calls go on meanwhile.
            return await self.server.run_blocking(
                lambda: Encoded(to_json_in_pieces(shape_result(method, version, result, server_info)))
            )
        return shape_result(method, version, result, server_info)

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
            report_progress=progress_reporter(message, self.protocol_version, notify, live),
            log=log_sender(lambda: self.log_level, notify, live),
            request_id=str(message.id),
            client=self.client,
        )
        try:
            return await self.server.tools.call_tool(params.name, params.arguments or {}, context)
        except (CancelledError, RateLimited):
            raise
        except MCProxyError as e:
            return types.CallToolResult(content=[types.TextContent(type="text", text=e.message)], is_error=True)
        finally:
            live[0] = False


async def _maybe_deferred(value: Any) -> Any:
    if isinstance(value, Deferred):
        return await value
    return value
