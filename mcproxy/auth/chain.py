"""Who is calling: the authenticators in turn, then the ``X-User-Id`` rule (see docs/architecture.rst).

The chain also decides what a refusal says: every 401 carries a ``WWW-Authenticate``
Bearer challenge naming the RFC 9728 resource metadata (``error="invalid_token"`` when a
credential was sent), and a 403 after authentication carries ``error="insufficient_scope"``
(see `challenge_headers`).
"""

import inspect
from collections.abc import Callable
from typing import TypeGuard

import attrs
from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger

from mcproxy.auth.principal import ALL_TOOLS, IMPERSONATE, REGISTER, Principal
from mcproxy.auth.tokens import is_valid_user_id
from mcproxy.errors import BadRequest, Forbidden, MCProxyError, Unauthorized

log = Logger()

LOCAL_USER = "local"
NO_AUTH_PERMISSIONS = frozenset({ALL_TOOLS, REGISTER})
REALM = "mcproxy"
BASIC_CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'
HOW_TO_AUTHENTICATE = (
    "authentication required: send 'Authorization: Bearer <token>' with an API token"
    " (mcproxy-admin tokens create --user USER) or a JWT"
)


def bearer_challenge(request, error: str | None = None, scope: str | None = None) -> str:
    """The RFC 6750 Bearer challenge for a refusal of ``request``, with its RFC 9728 metadata URL."""
    params = [f'realm="{REALM}"']
    metadata = request.resource_metadata(request) if request.resource_metadata else None
    if metadata:
        params.append(f'resource_metadata="{metadata}"')
    if error:
        params.append(f'error="{error}"')
    if scope:
        params.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(params)


def challenge_headers(request, error: MCProxyError) -> list[str]:
    """The ``WWW-Authenticate`` values of an error response (none for other errors).

    401: the challenge the chain chose (Basic offered too when configured). 403: an
    ``insufficient_scope`` challenge, but only once the chain has seen the request, so
    refusals that have nothing to do with credentials (a foreign ``Origin``) carry none.
    """
    if isinstance(error, Unauthorized):
        bearer = request.challenge or _unauthorized_challenge(request, error)
        basic = request.basic_challenge
        return [bearer, basic] if basic else [bearer]
    if isinstance(error, Forbidden) and request.resource_metadata:
        return [bearer_challenge(request, "insufficient_scope", error.scope)]
    return []


def _unauthorized_challenge(request, error: Unauthorized) -> str:
    return bearer_challenge(request, None if error.reason == "missing" else "invalid_token")


def authorization_value(request) -> bytes | None:
    """The one ``Authorization`` header, None without one; several are a 400 (never guessed between)."""
    values = request.requestHeaders.getRawHeaders(b"authorization") or []
    if len(values) > 1:
        raise BadRequest(
            "send exactly one Authorization header; this request has several",
            code="duplicate_authorization",
        )
    return values[0] if values else None


def has_scheme(value: bytes | None, scheme: bytes) -> TypeGuard[bytes]:
    """Whether an ``Authorization`` value uses ``scheme`` (case-insensitive)."""
    return value is not None and value.strip().partition(b" ")[0].lower() == scheme


def _one_header(request, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name) or []
    if len(values) > 1:
        raise BadRequest(f"send at most one {name.decode()} header", code="invalid_user_id")
    return values[0].decode("latin-1") if values else None


def requested_user(request) -> str | None:
    """The ``X-User-Id`` header when sent, checked for syntax (400 otherwise)."""
    value = _one_header(request, b"x-user-id")
    if value is not None and not is_valid_user_id(value):
        raise BadRequest("X-User-Id must be 1-128 characters of A-Z a-z 0-9 . _ @ -", code="invalid_user_id")
    return value


class AuthenticationChain:
    """Turns a request into a `Principal` or raises Unauthorized / Forbidden / BadRequest.

    ``mode`` is ``auth.mode``: ``"tokens"`` needs a credential; ``"none"`` (loopback
    development) trusts ``X-User-Id`` but still refuses a bad credential when one is sent.
    Each authenticator gets ``timeout`` seconds (it may be waiting on the store or a JWKS).
    ``resource_metadata(request)`` is the RFC 9728 metadata URL the challenges point to;
    ``offer_basic`` adds a Basic challenge to 401s (``auth.basic``).
    """

    def __init__(
        self,
        authenticators,
        mode: str,
        clock,
        timeout: float = 10.0,
        *,
        resource_metadata: Callable[[object], str] | None = None,
        offer_basic: bool = False,
    ):
        if mode not in ("tokens", "none"):
            raise ValueError(f"unknown auth mode {mode!r}")
        self._authenticators = tuple(authenticators)
        self._mode = mode
        self._clock = clock
        self._timeout = timeout
        self._resource_metadata = resource_metadata
        self._offer_basic = offer_basic

    async def authenticate(self, request) -> Principal:
        """The caller of ``request``, acting as ``X-User-Id`` where allowed."""
        request.resource_metadata = self._resource_metadata
        if self._offer_basic:
            request.basic_challenge = BASIC_CHALLENGE
        principal = await self._credential(request)
        wanted = requested_user(request)
        if principal is None:
            return Principal(user_id=wanted or LOCAL_USER, permissions=NO_AUTH_PERMISSIONS)
        if wanted is None or wanted == principal.user_id:
            return principal
        if not principal.may_act_for(wanted):
            raise Forbidden(
                f"X-User-Id {wanted!r} is not the authenticated user; acting for another"
                " user needs the impersonate permission",
                code="user_mismatch",
                scope=IMPERSONATE,
            )
        log.debug(
            "User {user_id} acts as {acting_for} (token {token_id})",
            user_id=principal.user_id,
            acting_for=wanted,
            token_id=principal.token_id,
        )
        return attrs.evolve(principal, user_id=wanted, impersonator=principal.user_id)

    async def _credential(self, request) -> Principal | None:
        """The first authenticator's principal; None only in mode "none" without a credential."""
        try:
            value = authorization_value(request)
            for authenticator in self._authenticators:
                principal = await self._bounded(authenticator.authenticate(request))
                if principal is not None:
                    return principal
            if has_scheme(value, b"bearer"):
                # Neither an API token nor a JWT this server is configured to accept.
                raise Unauthorized(
                    "the Bearer credential is not an API token (mcpx_...) or a JWT this server accepts",
                    reason="invalid",
                )
            if self._mode == "none":
                return None
            raise Unauthorized(HOW_TO_AUTHENTICATE, reason="missing")
        except Unauthorized as e:
            request.challenge = _unauthorized_challenge(request, e)
            raise

    async def _bounded(self, result):
        """Await an authenticator's answer (Deferred, coroutine or plain value) for at most ``timeout``."""
        if isinstance(result, Deferred):
            if result.called:  # answered from memory: no time limit to arm
                return await result
            d = result
        elif inspect.iscoroutine(result):
            d = Deferred.fromCoroutine(result)
        else:
            return result
        try:
            return await d.addTimeout(self._timeout, self._clock)
        except TimeoutError:
            raise MCProxyError("the credential could not be checked in time; try again", code="auth_timeout") from None
