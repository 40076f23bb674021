"""Who is calling: the authenticators in turn, then the ``X-User-Id`` rule (DESIGN.md §3)."""

import inspect

import attrs
from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger

from mcproxy.auth.principal import ALL_TOOLS, REGISTER, Principal
from mcproxy.auth.tokens import is_valid_user_id
from mcproxy.errors import BadRequest, Forbidden, MCProxyError, Unauthorized

log = Logger()

LOCAL_USER = "local"
NO_AUTH_PERMISSIONS = frozenset({ALL_TOOLS, REGISTER})
CHALLENGE = 'Bearer realm="mcproxy"'
INVALID_TOKEN_CHALLENGE = 'Bearer realm="mcproxy", error="invalid_token"'
HOW_TO_AUTHENTICATE = (
    "authentication required: send 'Authorization: Bearer <token>' with an API token"
    " (mcproxy-admin tokens create --user USER) or a JWT"
)


def _one_header(request, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name) or []
    if len(values) > 1:
        raise BadRequest(f"send at most one {name.decode()} header", code="invalid_user_id")
    return values[0].decode("latin-1") if values else None


def requested_user(request) -> str | None:
    """The ``X-User-Id`` header when sent, checked for syntax (400 otherwise)."""
    value = _one_header(request, b"x-user-id")
    if value is not None and not is_valid_user_id(value):
        raise BadRequest(
            "X-User-Id must be 1-128 characters of A-Z a-z 0-9 . _ @ -", code="invalid_user_id"
        )
    return value


class AuthenticationChain:
    """Turns a request into a `Principal` or raises Unauthorized / Forbidden / BadRequest.

    ``mode`` is ``auth.mode``: ``"tokens"`` needs a credential; ``"none"`` (loopback
    development) trusts ``X-User-Id`` but still refuses a bad credential when one is sent.
    Each authenticator gets ``timeout`` seconds (it may be waiting on the store or a JWKS).
    """

    def __init__(self, authenticators, mode: str, clock, timeout: float = 10.0):
        if mode not in ("tokens", "none"):
            raise ValueError(f"unknown auth mode {mode!r}")
        self._authenticators = tuple(authenticators)
        self._mode = mode
        self._clock = clock
        self._timeout = timeout

    async def authenticate(self, request) -> Principal:
        """The caller of ``request``, acting as ``X-User-Id`` where allowed."""
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
            )
        log.debug(
            "User {user_id} acts as {acting_for} (token {token_id})",
            user_id=principal.user_id,
            acting_for=wanted,
            token_id=principal.token_id,
        )
        return attrs.evolve(principal, user_id=wanted)

    async def _credential(self, request) -> Principal | None:
        """The first authenticator's principal; None only in mode "none" without a credential."""
        try:
            for authenticator in self._authenticators:
                principal = await self._bounded(authenticator.authenticate(request))
                if principal is not None:
                    return principal
        except Unauthorized as e:
            request.mcproxy_challenge = CHALLENGE if e.reason == "missing" else INVALID_TOKEN_CHALLENGE
            raise
        if self._mode == "none":
            return None
        request.mcproxy_challenge = CHALLENGE
        raise Unauthorized(HOW_TO_AUTHENTICATE, reason="missing")

    async def _bounded(self, result):
        """Await an authenticator's answer (Deferred, coroutine or plain value) for at most ``timeout``."""
        if not inspect.isawaitable(result):
            return result
        d = result if isinstance(result, Deferred) else Deferred.fromCoroutine(result)
        try:
            return await d.addTimeout(self._timeout, self._clock)
        except TimeoutError:
            raise MCProxyError(
                "the credential could not be checked in time; try again", code="auth_timeout"
            ) from None
