"""The admin API's registration of a user's browser: ``POST /api/register``.

The browser must answer, lie within ``browser.user_networks``, and belong to no other user
(a browser belongs to one user only); the caller gets a session token for its IDE. A browser
registered as ``tunnel:`` dials in through ``mcproxy-connect`` (`mcproxy.tunnel`): nothing is
checked of it here, it is the user's by construction. ``browser.require_tunnel`` allows
only that, or a browser the proxy launches: ``{"launch": true}`` (registered as ``launch:``,
`mcproxy.browser.launch`) needs the ``launch`` permission and ``launch.enabled``.
"""

import json

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from mcproxy.auth.principal import LAUNCH, REGISTER, Principal
from mcproxy.auth.tokens import mint_child_token
from mcproxy.browser.urls import (
    LAUNCH_URL,
    TUNNEL_URL,
    check_user_networks,
    endpoint_key,
    is_dialled,
    is_launched,
    parse_browser_url,
    resolve,
)
from mcproxy.errors import (
    BadRequest,
    BrowserUnavailable,
    Conflict,
    Forbidden,
    MCProxyError,
    PayloadTooLarge,
)
from mcproxy.storage.records import UserRecord
from mcproxy.web.admin import AdminDependencies, check_user_id, json_body
from mcproxy.web.routes import Route

log = Logger()

SESSION_TOKEN_PERMISSIONS = ("tools:*", "register")


def _registered_user(request, body: dict) -> str:
    """The user a registration ``body`` is for: ``userId``, else the caller's own."""
    return check_user_id(body.get("userId", request.principal.user_id))


class Registration:
    """Registers users' browsers, one registration at a time (``deps.registering``), so two
    users cannot claim one browser at once."""

    def __init__(self, deps: AdminDependencies):
        self.deps = deps

    def routes(self) -> tuple[Route, ...]:
        return (Route(b"POST", r"/api/register/?", self.register, auth="admin", audit=True, routed=self.user_of),)

    def user_of(self, request, parts: dict) -> str:
        """The user a registration is for (`Route.routed`)."""
        return _registered_user(request, json_body(self.deps, request))

    async def register(self, request):
        principal = request.principal
        body = json_body(self.deps, request)
        user_id = _registered_user(request, body)
        if not (principal.is_admin or (principal.has(REGISTER) and user_id == principal.user_id)):
            raise Forbidden(
                "registering a browser needs the 'register' permission for your own user id, or 'admin'",
                scope="register",
            )
        browser_url = self._browser_url(principal, body)
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
        dialled = is_dialled(browser_url)
        if dialled:
            if self.deps.require_tunnel:
                raise Forbidden(
                    "this proxy connects browsers only through their tunnels (browser.require_tunnel): run"
                    f' mcproxy-connect next to your Chrome, or register "{TUNNEL_URL}"',
                    code="tunnel_required",
                )
            parsed = parse_browser_url(browser_url)
            addresses = await resolve(self.deps.clock, parsed.host, timeout=self.deps.resolve_timeout)
            check_user_networks(user_id, parsed, addresses, self.deps.user_networks)
        self.deps.pool.check_room(user_id)
        if is_launched(browser_url):
            self.deps.launched.check_room(user_id)
        await self.deps.registering.acquire()
        try:
            product = "a Chromium the proxy launches" if is_launched(browser_url) else "the browser behind your tunnel"
            if dialled:
                identity = await self._probe(browser_url)
                await self._check_unclaimed(user_id, identity)
                product = identity.product
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
            if self.deps.launched is not None and not is_launched(browser_url):
                await self.deps.launched.remove(user_id)  # a browser of their own replaces the launched one
        finally:
            self.deps.registering.release()
        token = await self._session_token(principal, user_id)
        log.info(
            "User {user_id} registered browser {browser_url} ({version})",
            user_id=user_id,
            browser_url=browser_url,
            version=product,
        )
        message = f"Registered {product} at {browser_url} for {user_id}."
        if token is None:
            message += " No session token: one is only made from an API token of your own; use your credential."
        return 201, {"success": True, "userId": user_id, "sessionToken": token, "message": message}

    def _browser_url(self, principal: Principal, body: dict) -> str:
        """The browser a registration ``body`` names: ``browserURL``, or ``launch:`` for
        ``"launch": true`` (refused unless the proxy launches browsers and the caller may)."""
        launch = body.get("launch", False)
        if not isinstance(launch, bool):
            raise BadRequest('"launch" must be true or false')
        browser_url = body.get("browserURL", LAUNCH_URL if launch else None)
        if not isinstance(browser_url, str) or not browser_url:
            raise BadRequest(
                '"browserURL" is required: the DevTools URL of your Chrome, e.g. http://127.0.0.1:9222'
                ' (or "launch": true for a browser the proxy starts)'
            )
        if launch and not is_launched(browser_url):
            raise BadRequest(f'"launch": true starts a browser for you: give no "browserURL" (or "{LAUNCH_URL}")')
        if not is_launched(browser_url):
            return browser_url
        launched = self.deps.launched
        if launched is None or not launched.enabled:
            raise BadRequest(
                "this proxy does not launch browsers (launch.enabled is off): register a browser of your own",
                code="launch_disabled",
            )
        if not principal.has(LAUNCH):
            raise Forbidden("having the proxy launch a browser needs the 'launch' permission", scope=LAUNCH)
        return browser_url

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
