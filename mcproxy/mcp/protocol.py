"""The MCP session layer, sans-IO: handshake eras and the stateless 2026-07-28 revision.

A transport hands each decoded JSON-RPC message to `McpSession.handle` together with a
``notify`` callable that carries notifications related to that request (progress, log
messages) to wherever the request's answer goes. ``handle`` returns a Deferred that fires
with the JSON-RPC response dict, or None when there is nothing to answer (a notification,
or a request the client cancelled). Cancelling that Deferred cancels the tool's work.

Which revision a session-less message speaks is for `mcproxy.mcp.envelope` to say; the
notifications a request sends are built by `mcproxy.mcp.notifications`, and its answer
is shaped by `mcproxy.mcp.shaping`.

``tools/call`` is the request that is made over and over: its params are checked by hand,
its result comes from the tools in its wire shape, and its Deferreds are chained without
a coroutine. The other methods are rare; mcp_types parses their params and shapes their
results, and ``tools/list`` answers are encoded once and kept.
"""

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import attrs
import mcp_types as types
from mcp_types import SERVER_INFO_META_KEY, methods
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    KNOWN_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
)
from pydantic import BaseModel, ValidationError
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

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
    Message,
    Notification,
    Request,
    RpcError,
    error_message,
    is_request_id,
    readable,
    result_message,
    to_json,
    to_json_in_pieces,
)
from mcproxy.mcp.notifications import Notify, log_sender, progress_reporter
from mcproxy.mcp.shaping import OFF_REACTOR_WEIGHT, is_heavy, shape_result, weight

log = Logger()

SERVER_INFO = types.Implementation(name="mcproxy", version=mcproxy.__version__)

SERVER_META = {SERVER_INFO_META_KEY: SERVER_INFO.model_dump(by_alias=True, mode="json", exclude_none=True)}
"""The ``_meta`` of every 2026-07-28 answer: who answers (that revision has no handshake to say it)."""

LISTINGS_KEPT = 256
"""Encoded ``tools/list`` answers kept at most (one per revision and set of tools on offer)."""

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
    """What every session shares: the tool and resource providers, the server's identity,
    and the ``tools/list`` answers encoded so far.

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
    _listings: dict[tuple, Encoded] = attrs.field(factory=dict, init=False)

    def tool_listing(self, principal: Principal, version: str, meta: dict | None) -> Encoded:
        """The ``tools/list`` result for ``principal`` at ``version``, encoded once for each
        revision and set of tools on offer, until `forget_listings`."""
        tools = self.tools.list_tools(principal)
        key = (version, meta is not None, *(tool.name for tool in tools))
        listing = self._listings.get(key)
        if listing is None:
            if len(self._listings) >= LISTINGS_KEPT:
                self._listings.clear()
            result = types.ListToolsResult(tools=list(tools))
            listing = self._listings[key] = Encoded(to_json(shape_result("tools/list", version, result, meta)))
        return listing

    def forget_listings(self) -> None:
        """Encode the ``tools/list`` answers anew from now on (the tools were reconfigured)."""
        self._listings.clear()

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
            server_info=SERVER_INFO,
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

    def resume(self, protocol_version: str, client: dict, log_level: str | None) -> None:
        """Take up a session that another process initialized (from its record, see
        `mcproxy.session.records`): no handshake again, the same protocol and log level."""
        self.protocol_version = protocol_version
        self.client_params = types.InitializeRequestParams.model_validate(client)
        self.log_level = log_level
        self.initialized = True

    @property
    def in_flight(self) -> int:
        """How many requests are running now."""
        return len(self._in_flight)

    def handle(self, message: Message, notify: Notify, client: str | None = None) -> Deferred:
        """Handle one decoded message. Deferred[dict | None]: the response to send, if any.

        ``client`` is the address the message came from (tool calls are audited with the
        address of the latest request of the session).
        """
        if client is not None:
            self.client = client
        if isinstance(message, Notification):
            self._notification(message)
            return succeed(None)
        if not isinstance(message, Request):
            return succeed(None)  # a reply: we send the client no requests
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
        if message.method == "tools/call" and self.initialized:
            d = self._call_tool(message, notify)
        else:
            d = Deferred.fromCoroutine(self._dispatch(message))
        d.addCallbacks(lambda result: result_message(rid, result), self._failed, errbackArgs=(message,))
        self._in_flight[rid] = d
        d.addBoth(self._done, rid)
        return d

    def _done(self, response: Any, rid: Any) -> Any:
        self._in_flight.pop(rid, None)
        self._cancelled_by_peer.discard(rid)
        return response

    def close(self) -> None:
        """End the session: cancel everything in flight; later requests are refused."""
        self.closed = True
        for d in list(self._in_flight.values()):
            d.cancel()

    def _notification(self, message: Notification) -> None:
        if message.method == "notifications/initialized":
            self.initialized = self.protocol_version is not None
        elif message.method == "notifications/cancelled":
            rid = (message.params or {}).get("requestId")
            d = self._in_flight.get(rid) if is_request_id(rid) else None
            if d is not None:
                log.debug(
                    "Request {rid} cancelled by the client ({reason})",
                    rid=rid,
                    reason=(message.params or {}).get("reason"),
                )
                self._cancelled_by_peer.add(rid)
                d.cancel()

    def _failed(self, failure: Failure, message: Request) -> dict | Failure | None:
        """The error answering ``message``; nothing for a request the client cancelled."""
        rid, error = message.id, failure.value
        if failure.check(CancelledError):
            return None if rid in self._cancelled_by_peer else failure
        if isinstance(error, RpcError):
            return error.to_message(rid)
        if isinstance(error, RateLimited):
            return error_message(rid, error.jsonrpc_code, error.message, {"retryAfter": error.retry_after})
        if isinstance(error, MCProxyError):
            return error_message(rid, error.jsonrpc_code, error.message)
        log.failure(
            "Unhandled error answering {method} for user {user_id} (session {session_id})",
            failure=failure,
            method=message.method,
            user_id=self.principal.user_id,
            session_id=self.view.session_id,
        )
        return error_message(rid, INTERNAL_ERROR, "Internal error; the server log has details")

    async def _dispatch(self, message: Request) -> dict | Encoded:
        """The result of any request but an initialized session's ``tools/call``."""
        method = message.method
        if method == "initialize" and self.modern is None:
            return self._initialize(message)
        if not self.initialized and method != "ping":
            raise RpcError(NOT_INITIALIZED, f"Session not initialized: send initialize before {method}")
        version = self.protocol_version or LATEST_HANDSHAKE_VERSION
        try:
            if self.server.run_blocking is not None and is_heavy(message.params):
                # Megabytes of params: validated in a thread.
                parsed = await self.server.run_blocking(methods.parse_client_request, method, version, message.params)
            else:
                parsed = methods.parse_client_request(method, version, message.params)
        except KeyError:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method} (protocol {version})") from None
        except ValidationError as e:
            raise RpcError(INVALID_PARAMS, f"Invalid params for {method}: {readable(e)}") from None
        handler = self._HANDLERS.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method} is not offered by this server")
        result = await handler(self, parsed, version)
        return await _maybe_deferred(self._shaped(result, method, version))

    def _shaped(self, result: BaseModel | dict | Encoded, method: str, version: str) -> "dict | Encoded | Deferred":
        """The JSON-RPC ``result`` for ``result`` (see `shape_result`); an `Encoded` one is final.

        Megabytes of answer (a long console list, a big image) are shaped and encoded in a
        thread, so that other users' calls go on meanwhile: a Deferred of it then."""
        if isinstance(result, Encoded):
            return result
        meta = SERVER_META if self.modern is not None else None
        if self.server.run_blocking is not None and weight(result) >= OFF_REACTOR_WEIGHT:
            return self.server.run_blocking(
                lambda: Encoded(to_json_in_pieces(shape_result(method, version, result, meta)))
            )
        return shape_result(method, version, result, meta)

    def _initialize(self, message: Request) -> dict:
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

    async def _ping(self, parsed, version: str) -> BaseModel:
        return types.EmptyResult()

    async def _discover(self, parsed, version: str) -> BaseModel:
        return self.server.discover_result()

    async def _set_level(self, parsed, version: str) -> BaseModel:
        self.log_level = parsed.params.level
        return types.EmptyResult()

    async def _list_tools(self, parsed, version: str) -> Encoded:
        return self.server.tool_listing(self.principal, version, SERVER_META if self.modern is not None else None)

    async def _list_resources(self, parsed, version: str) -> BaseModel:
        # Resources are what tools saved: a credential that may call no tool (say, metrics
        # only) sees none of its user's, as if there were none.
        if not self.server.tools.list_tools(self.principal):
            return types.ListResourcesResult(resources=[])
        found = await _maybe_deferred(self.server.resources.list_resources(self.principal))
        return types.ListResourcesResult(resources=list(found))

    async def _read_resource(self, parsed, version: str) -> BaseModel:
        uri = parsed.params.uri
        if not self.server.tools.list_tools(self.principal):
            return EmptyResources().read_resource(self.principal, uri)  # raises "not found"
        return await _maybe_deferred(self.server.resources.read_resource(self.principal, uri))

    async def _list_templates(self, parsed, version: str) -> BaseModel:
        return types.ListResourceTemplatesResult(resource_templates=[])

    #: The handler of every method but ``tools/call`` (see `_call_tool`).
    _HANDLERS: ClassVar[dict[str, Callable[..., Awaitable[BaseModel | Encoded]]]] = {
        "ping": _ping,
        "tools/list": _list_tools,
        "logging/setLevel": _set_level,
        "resources/list": _list_resources,
        "resources/read": _read_resource,
        "resources/templates/list": _list_templates,
        "server/discover": _discover,
    }

    def _call_tool(self, message: Request, notify: Notify) -> Deferred:
        """``tools/call``: Deferred of its JSON-RPC ``result``."""
        try:
            name, arguments = tool_call_params(message.params)
        except RpcError as e:
            return fail(e)
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
        d = maybeDeferred(self.server.tools.call_tool, name, arguments, context)
        d.addBoth(_tool_finished, live)
        d.addCallback(self._shaped, "tools/call", self.protocol_version or LATEST_HANDSHAKE_VERSION)
        return d


def tool_call_params(params: dict | None) -> tuple[str, dict]:
    """The tool name and arguments of ``tools/call`` params, checked as mcp_types checks them
    (the tool checks its arguments against its schema; the ``_meta`` of 2026-07-28 requests
    is checked with their envelope). Raises `RpcError` -32602."""
    if params is None:
        raise _invalid_call("params are required")
    name, arguments, meta = params.get("name"), params.get("arguments"), params.get("_meta")
    if not isinstance(name, str):
        raise _invalid_call("name must be a string")
    if arguments is not None and not isinstance(arguments, dict):
        raise _invalid_call("arguments must be an object")
    if meta is not None and not isinstance(meta, dict):
        raise _invalid_call("_meta must be an object")
    if meta and "progressToken" in meta and not is_request_id(meta["progressToken"]):
        raise _invalid_call("_meta.progressToken must be a string or an integer")
    return name, arguments or {}


def _invalid_call(problem: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params for tools/call: {problem}")


def _tool_finished(outcome: dict | Failure, live: list) -> dict | Failure:
    """A tool's outcome, once nothing more may be sent about its call: the tool provider's
    own errors (but a rate limit, a JSON-RPC error) become an ``isError`` result."""
    live[0] = False
    error = outcome.value if isinstance(outcome, Failure) else None
    if isinstance(error, MCProxyError) and not isinstance(error, RateLimited):
        return {"content": [{"type": "text", "text": error.message}], "isError": True}
    return outcome


async def _maybe_deferred(value: Any) -> Any:
    if isinstance(value, Deferred):
        return await value
    return value
