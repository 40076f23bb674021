"""The admin REST API: health, tokens, registration and user status.

Every answer is JSON; every error is ``{"error": {"code", "message"}}`` with a fitting
status. Handlers are coroutines that return ``(status, body)`` or raise an
`mcproxy.errors.MCProxyError`.
"""

import json
import re
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from mcproxy.auth.principal import ADMIN, REGISTER, Principal
from mcproxy.auth.tokens import adopt_children, create_token, mint_child_token, revoke_token_tree
from mcproxy.browser.urls import check_user_networks, endpoint_key, parse_browser_url, resolve
from mcproxy.config import ConfigError
from mcproxy.errors import (
    BadRequest,
    BrowserUnavailable,
    Conflict,
    Forbidden,
    MCProxyError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from mcproxy.storage.records import UserRecord
from mcproxy.web.http import (
    cancel_on_deadline,
    read_body,
    read_json_object,
    request_id,
    require_json,
    write_failure,
    write_json,
)

log = Logger()

USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
SESSION_TOKEN_PERMISSIONS = ("tools:*", "register")


def iso8601(timestamp: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


@attrs.define
class AdminDependencies:
    """What the admin API works on; built by the service."""

    clock: Any
    store: Any
    pool: Any
    sessions: Any
    authenticate: Callable[[Any], Awaitable[Principal]]
    #: Says which browser answers at a URL (`mcproxy.browser.connect.probe_browser`).
    probe_browser: Callable[[str], Awaitable[Any]]
    max_body_bytes: int
    session_token_ttl: float
    started_at: float
    #: The Host and Origin checks of the MCP endpoints (DNS rebinding, cross-site posts).
    check_request: Callable[[Any], None] = lambda request: None
    max_metadata_bytes: int = 16384
    #: ``browser.user_networks``: which browsers each user may register.
    user_networks: tuple[str, ...] = ()
    resolve_timeout: float = 5.0
    #: Told of every revoked token id, so this process stops honouring it at once.
    token_revoked: Callable[[str], None] = lambda token_id: None
    #: ``audit(principal, client, action, target, outcome)`` for every call that changes something.
    audit: Callable[..., None] = lambda principal, client, action, target, outcome: None
    #: Live reload: re-reads the configuration; returns the changed keys that need a restart,
    #: raises ConfigError for an invalid configuration (None: the daemon cannot reload).
    reload_config: Callable[[], list[str]] | None = None


Handler = Callable[..., Awaitable[tuple[int, Any]]]

DEFAULT_ROTATION_GRACE = 60.0
MAX_ROTATION_GRACE = 7 * 86400.0


class AdminAPI(resource.Resource):
    """Routes ``/health`` and ``/api/...`` to coroutine handlers."""

    isLeaf = True

    def __init__(self, deps: AdminDependencies):
        super().__init__()
        self.deps = deps
        # One registration at a time, so two users cannot claim one browser at once.
        self._registering = DeferredLock()
        self._routes: list[tuple[re.Pattern, dict[bytes, Handler]]] = [
            (re.compile(r"^/health/?$"), {b"GET": self.health}),
            (re.compile(r"^/api/tokens/?$"), {b"POST": self.create_token, b"GET": self.list_tokens}),
            (re.compile(r"^/api/tokens/(?P<token_id>[^/]+)/?$"), {b"DELETE": self.revoke_token}),
            (re.compile(r"^/api/tokens/(?P<token_id>[^/]+)/rotate/?$"), {b"POST": self.rotate_token}),
            (re.compile(r"^/api/register/?$"), {b"POST": self.register}),
            (re.compile(r"^/api/users/?$"), {b"GET": self.list_users}),
            (re.compile(r"^/api/users/(?P<user_id>[^/]+)/status/?$"), {b"GET": self.user_status}),
            (re.compile(r"^/api/users/(?P<user_id>[^/]+)/?$"), {b"DELETE": self.delete_user}),
            (re.compile(r"^/api/admin/reload/?$"), {b"POST": self.reload_config}),
        ]

    def render(self, request):
        request_id(request)
        d = Deferred.fromCoroutine(self._dispatch(request))
        cancel_on_deadline(request, d)  # past server.request_timeout: 504, and the work stops
        d.addBoth(self._audit, request)
        d.addCallback(lambda result: write_json(request, *result))
        d.addErrback(lambda failure: write_failure(request, failure))
        return server.NOT_DONE_YET

    def _audit(self, result, request):
        """Audit the calls that change something (not reads), whatever their outcome."""
        action = getattr(request, "mcproxy_action", None)
        if action is not None and request.method not in (b"GET", b"HEAD"):
            if isinstance(result, Failure):
                error = result.value
                outcome = error.code if isinstance(error, MCProxyError) else "internal_error"
            else:
                outcome = "ok"
            self.deps.audit(
                getattr(request, "mcproxy_principal", None),
                getattr(request, "mcproxy_client", None),
                action,
                request.path.decode("utf-8", "replace"),
                outcome,
            )
        return result

    async def _dispatch(self, request) -> tuple[int, Any]:
        self.deps.check_request(request)
        path = request.path.decode("utf-8", "replace")
        for pattern, methods in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            handler = methods.get(request.method)
            if handler is None:
                allowed = ", ".join(sorted(m.decode("ascii") for m in methods))
                request.setHeader(b"Allow", allowed.encode("ascii"))
                raise MethodNotAllowed(f"{request.method.decode('latin-1')} is not allowed here; use {allowed}")
            request.mcproxy_action = handler.__name__
            return await handler(request, **match.groupdict())
        raise NotFound(f"no such endpoint: {path}")

    async def _principal(self, request, permission: str | None = None) -> Principal:
        principal = request.mcproxy_principal = await self.deps.authenticate(request)
        if permission is not None and not principal.has(permission):
            raise Forbidden(f"this credential lacks the {permission!r} permission", scope=permission)
        return principal

    def _body(self, request, optional: bool = False) -> dict:
        """The JSON object body (415 for any other type: no cross-site form posts); with
        ``optional``, an empty body reads as ``{}``."""
        if optional and not read_body(request, self.deps.max_body_bytes).strip():
            return {}
        require_json(request)
        return read_json_object(request, self.deps.max_body_bytes)

    # -- health ---------------------------------------------------------------

    async def health(self, request):
        return 200, {
            "status": "ok",
            "activeSessions": self.deps.sessions.count(),
            "registeredUsers": await self.deps.store.count_users(),
            "browserConnections": self.deps.pool.connection_count(),
            "uptime": round(self.deps.clock.seconds() - self.deps.started_at, 3),
        }

    # -- tokens ---------------------------------------------------------------

    async def create_token(self, request):
        await self._principal(request, ADMIN)
        body = self._body(request)
        user_id = _user_id(body.get("userId"))
        permissions = body.get("permissions", [])
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise BadRequest('"permissions" must be a list of strings')
        ttl = body.get("ttlSeconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0):
            raise BadRequest('"ttlSeconds" must be a positive number')
        token, record = await create_token(self.deps.store, user_id, permissions, ttl, self.deps.clock)
        log.info("Token {token_id} created for user {user_id}", token_id=record.token_id, user_id=user_id)
        return 201, _token_answer(token, record)

    async def list_tokens(self, request):
        await self._principal(request, ADMIN)
        records = await self.deps.store.list_tokens()
        return 200, {"tokens": [_token_summary(r) for r in records]}

    async def revoke_token(self, request, token_id: str):
        """Revoke the token and every token minted from it (registration session tokens)."""
        await self._principal(request, ADMIN)
        revoked = await revoke_token_tree(self.deps.store, token_id, self.deps.clock.seconds())
        if not revoked:
            raise NotFound(f"no token with id {token_id!r}")
        for revoked_id in revoked:
            self.deps.token_revoked(revoked_id)
        log.info("Token {token_id} revoked, with {children} made from it", token_id=token_id, children=len(revoked) - 1)
        return 204, None

    async def rotate_token(self, request, token_id: str):
        """A new token with the same user, permissions and expiry; the old one works until
        ``graceSeconds`` (default 60) have passed, so clients can switch without a gap.

        Only an admin or the token's own user, signed in as itself (never through
        ``impersonate``), may rotate; tokens made from the old one move to the new one."""
        principal = await self._principal(request)
        record = await self.deps.store.get_token(token_id)
        now = self.deps.clock.seconds()
        mine = (
            record is not None
            and principal.user_id == record.user_id
            and principal.token_id is not None
            and principal.impersonator is None
        )
        if record is None or not (principal.is_admin or mine):
            raise NotFound(f"no token with id {token_id!r}")
        if record.revoked_at is not None and record.revoked_at <= now:
            raise Conflict(f"token {token_id} is revoked; create a new token instead", code="token_revoked")
        body = self._body(request, optional=True)
        grace = body.get("graceSeconds", DEFAULT_ROTATION_GRACE)
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_ROTATION_GRACE:
            raise BadRequest(f'"graceSeconds" must be a number from 0 to {MAX_ROTATION_GRACE}')
        ttl = None
        if record.expires_at is not None:
            ttl = record.expires_at - now
            if ttl <= 0:
                raise Conflict(f"token {token_id} has expired; create a new token instead", code="token_expired")
        token, new = await create_token(
            self.deps.store,
            record.user_id,
            record.permissions,
            ttl,
            self.deps.clock,
            f"rotated from {token_id}",
            parent_id=record.parent_id,
        )
        await adopt_children(self.deps.store, token_id, new.token_id)
        ends = now + grace
        await self.deps.store.revoke_token(token_id, ends)  # keeps an earlier revocation
        self.deps.token_revoked(token_id)
        log.info(
            "Token {token_id} rotated to {new_id}; the old one works for {grace} s more",
            token_id=token_id,
            new_id=new.token_id,
            grace=grace,
        )
        return 201, {**_token_answer(token, new), "replaces": token_id, "previousValidUntil": iso8601(ends)}

    # -- users ----------------------------------------------------------------

    async def register(self, request):
        principal = await self._principal(request)
        body = self._body(request)
        user_id = _user_id(body.get("userId", principal.user_id))
        if not (principal.is_admin or (principal.has(REGISTER) and user_id == principal.user_id)):
            raise Forbidden(
                "registering a browser needs the 'register' permission for your own user id, or 'admin'",
                scope="register",
            )
        browser_url = body.get("browserURL")
        if not isinstance(browser_url, str) or not browser_url:
            raise BadRequest('"browserURL" is required: the DevTools URL of your Chrome, e.g. http://127.0.0.1:9222')
        metadata = body.get("metadata", {})
        if not isinstance(metadata, dict):
            raise BadRequest('"metadata" must be a JSON object')
        size = len(json.dumps(metadata, separators=(",", ":")).encode("utf-8"))
        if size > self.deps.max_metadata_bytes:
            raise PayloadTooLarge(
                f'"metadata" is {size} bytes of JSON; the limit is {self.deps.max_metadata_bytes}'
                " (limits.max_metadata_bytes)",
                code="metadata_too_large",
            )
        parsed = parse_browser_url(browser_url)
        addresses = await resolve(self.deps.clock, parsed.host, timeout=self.deps.resolve_timeout)
        check_user_networks(user_id, parsed, addresses, self.deps.user_networks)
        self.deps.pool.check_room(user_id)
        await self._registering.acquire()
        try:
            identity = await self._probe(browser_url)
            await self._check_unclaimed(user_id, identity)
            now = self.deps.clock.seconds()
            existing = await self.deps.store.get_user(user_id)
            await self.deps.store.save_user(
                UserRecord(
                    user_id=user_id,
                    browser_url=browser_url,
                    metadata=metadata,
                    registered_at=existing.registered_at if existing else now,
                    last_activity=existing.last_activity if existing else None,
                )
            )
            self.deps.pool.browser_for(user_id, browser_url)
        finally:
            self._registering.release()
        token = await self._session_token(principal, user_id)
        log.info(
            "User {user_id} registered browser {browser_url} ({version})",
            user_id=user_id,
            browser_url=browser_url,
            version=identity.product,
        )
        message = f"Registered {identity.product} at {browser_url} for {user_id}."
        if token is None:
            message += " No session token: one is only made from an API token of your own; use your credential."
        return 201, {"success": True, "userId": user_id, "sessionToken": token, "message": message}

    async def _probe(self, browser_url: str):
        """Which browser answers at ``browser_url``; a browser that does not answer is the
        caller's problem to fix (400 ``browser_unreachable``), never a 5xx of the proxy."""
        try:
            return await self.deps.probe_browser(browser_url)
        except BrowserUnavailable as e:
            raise BadRequest(e.message, code="browser_unreachable") from None

    async def _check_unclaimed(self, user_id: str, identity) -> None:
        """409 when another user holds this browser: the same Chrome run (its browser id), or the
        same listening socket under any URL form (``localhost``, an IP, the WebSocket URL)."""
        taken = self.deps.pool.holder_of(identity.browser_id, besides=user_id) is not None
        if not taken:
            # Every other user's URL at once: names resolve side by side, each within its timeout.
            others = [user for user in await self.deps.store.list_users() if user.user_id != user_id]
            endpoints = await gatherResults([Deferred.fromCoroutine(self._endpoints(u.browser_url)) for u in others])
            taken = any(identity.endpoint in found for found in endpoints)
        if taken:
            raise Conflict(
                "this browser is registered by another user, and a browser belongs to one user only;"
                " start a Chrome of your own (its own --user-data-dir and port) and register that",
                code="browser_taken",
            )

    async def _endpoints(self, browser_url: str) -> set[tuple[str, int]]:
        """The listening sockets a stored browser URL names (none when it no longer resolves)."""
        try:
            parsed = parse_browser_url(browser_url)
            addresses = await resolve(self.deps.clock, parsed.host, timeout=self.deps.resolve_timeout)
        except MCProxyError:
            return set()
        return {endpoint_key(address, parsed.port) for address in addresses}

    async def _session_token(self, principal: Principal, user_id: str) -> str | None:
        """A token for the registered user's IDE, minted as a child of the caller's API token
        (never more permissions, never a later expiry, revoked with it); None for a caller
        without one of its own (JWT, Basic, impersonation)."""
        if principal.token_id is None or principal.impersonator is not None:
            return None
        parent = await self.deps.store.get_token(principal.token_id)
        if parent is None:
            return None
        token, _ = await mint_child_token(
            self.deps.store,
            parent,
            user_id,
            SESSION_TOKEN_PERMISSIONS,
            self.deps.session_token_ttl,
            self.deps.clock,
            f"session token of the registration of {user_id}",
        )
        return token

    async def list_users(self, request):
        await self._principal(request, ADMIN)
        users = await self.deps.store.list_users()
        return 200, {"users": [self._status(user) for user in users]}

    async def user_status(self, request, user_id: str):
        user = await self._own_user(request, user_id)
        return 200, self._status(user)

    async def delete_user(self, request, user_id: str):
        user = await self._own_user(request, user_id, REGISTER)
        self.deps.sessions.close_user(user.user_id)
        await self.deps.pool.forget(user.user_id)
        await self.deps.store.delete_user(user.user_id)
        log.info("User {user_id} unregistered", user_id=user.user_id)
        return 204, None

    async def _own_user(self, request, user_id: str, permission: str | None = None) -> UserRecord:
        """The user record, for that user itself (holding ``permission``) or an admin."""
        principal = await self._principal(request)
        if not principal.is_admin:
            if principal.user_id != user_id:
                raise Forbidden("you may only see or change your own user", scope="admin")
            if permission is not None and not principal.has(permission):
                raise Forbidden(f"this credential lacks the {permission!r} permission", scope=permission)
        user = await self.deps.store.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} has no registered browser")
        return user

    def _status(self, user: UserRecord) -> dict:
        browser = self.deps.pool.existing(user.user_id)
        return {
            "userId": user.user_id,
            "browserURL": user.browser_url,
            "browserStatus": browser.status if browser is not None else "disconnected",
            "lastError": browser.last_error if browser is not None else None,
            "activeSessions": self.deps.sessions.count_for_user(user.user_id),
            "lastActivity": iso8601(user.last_activity),
        }


    # -- operations -------------------------------------------------------------

    async def reload_config(self, request):
        """Live reload, as SIGHUP does; 400 ``invalid_config`` (naming the key) keeps the running one."""
        await self._principal(request, ADMIN)
        if self.deps.reload_config is None:
            raise Conflict("this server cannot reload its configuration", code="reload_unavailable")
        try:
            restart_needed = self.deps.reload_config()
        except ConfigError as e:
            raise BadRequest(str(e), code="invalid_config") from None
        return 200, {"reloaded": True, "restartNeeded": restart_needed}


def _user_id(value: Any) -> str:
    if not isinstance(value, str) or not USER_ID.match(value):
        raise BadRequest('"userId" must be 1-128 characters of letters, digits, ".", "_", "@" or "-"')
    return value


def _token_summary(record) -> dict:
    return {
        "tokenId": record.token_id,
        "userId": record.user_id,
        "permissions": list(record.permissions),
        "expiresAt": iso8601(record.expires_at),
        "revoked": record.revoked_at is not None,
        "lastUsedAt": iso8601(record.last_used_at),
    }


def _token_answer(token: str, record) -> dict:
    return {
        "token": token,
        "tokenId": record.token_id,
        "userId": record.user_id,
        "permissions": list(record.permissions),
        "expiresAt": iso8601(record.expires_at),
    }
