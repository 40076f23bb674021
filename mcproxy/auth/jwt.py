"""JWT bearer tokens from the company's identity provider (see docs/architecture.rst).

Algorithms are an explicit allow-list, and each kind of key serves one kind only:
HS256/384/512 verify with ``auth.jwt_secret`` and nothing else; RS256, ES256 and EdDSA
verify with JWKS keys of the matching key type and nothing else. So ``alg: none`` is
refused, and a token "signed" HS256 with the RSA public key as the secret (the classic
HS/RS confusion) is checked against the configured secret and fails.

``exp`` (required), ``nbf`` and ``iat`` are checked on the injected clock with
``leeway`` seconds of tolerance; ``aud`` against the configured audiences (RFC 8707:
tokens must be issued for this resource); ``iss`` against the configured issuer. Every
refusal is `Unauthorized` with a short ``reason`` (the auth-failure metric label).
"""

import math
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jwt
from jwt import PyJWK
from jwt.exceptions import (
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidKeyError,
    InvalidSignatureError,
    InvalidTokenError,
    MissingRequiredClaimError,
)
from jwt.warnings import InsecureKeyLengthWarning
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.auth.jwks import ASYMMETRIC_ALGORITHMS, JWKSCache
from mcproxy.auth.principal import Principal
from mcproxy.auth.tokens import bearer_credential, check_permissions, is_valid_user_id
from mcproxy.errors import BadRequest, Unauthorized
from mcproxy.interfaces import IAuthenticator

if TYPE_CHECKING:
    from jwt.types import Options

log = Logger()

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
DEFAULT_LEEWAY = 30.0
MIN_SECRET_BYTES = 32

# Three base64url parts; the signature may be empty so that "alg: none" tokens get here
# and are refused by name rather than passed over.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")


def looks_like_jwt(credential: str) -> bool:
    """Whether a bearer credential has the shape of a JWS compact token."""
    return _JWT_SHAPE.match(credential) is not None


def known_permissions(value) -> frozenset[str]:
    """The mcproxy permissions in a permissions claim (space-separated string or list).

    Other scopes an identity provider adds (``openid``, ``email``...) are ignored.
    """
    if value is None:
        return frozenset()
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, list) and all(isinstance(name, str) for name in value):
        names = value
    else:
        raise Unauthorized(
            "the JWT's permissions claim must be a space-separated string or a list of strings",
            reason="malformed",
        )
    known: set[str] = set()
    for name in names:
        try:
            known.update(check_permissions([name]))
        except BadRequest:
            continue
    return frozenset(known)


def audiences_for(jwt_audience: str, public_url: str) -> tuple[str, ...]:
    """The ``aud`` values to accept: ``auth.jwt_audience``, else ``server.public_url`` (with or without "/")."""
    if jwt_audience:
        return (jwt_audience,)
    if public_url:
        base = public_url.rstrip("/")
        return (base, base + "/")
    return ()


def _time_claim(claims: dict, name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Unauthorized(f"the JWT's {name} claim must be a number of seconds", reason="malformed")
    return float(value)


_CLAIM_REASONS = {"aud": "bad_audience", "iss": "bad_issuer"}


def _refusal(error: InvalidTokenError) -> Unauthorized:
    """The Unauthorized (and metric reason) for a pyjwt verification error."""
    if isinstance(error, InvalidSignatureError):
        return Unauthorized("the JWT's signature does not verify", reason="bad_signature")
    if isinstance(error, InvalidAlgorithmError):
        return Unauthorized(f"the JWT's algorithm is not accepted: {error}", reason="bad_algorithm")
    if isinstance(error, InvalidAudienceError):
        return Unauthorized("the JWT was not issued for this server (aud)", reason="bad_audience")
    if isinstance(error, InvalidIssuerError):
        return Unauthorized("the JWT comes from an issuer this server does not trust (iss)", reason="bad_issuer")
    if isinstance(error, MissingRequiredClaimError):
        reason = _CLAIM_REASONS.get(error.claim, "missing_claim")
        return Unauthorized(f"the JWT lacks the required {error.claim!r} claim", reason=reason)
    return Unauthorized(f"the JWT is malformed: {error}", reason="malformed")


@implementer(IAuthenticator)
class JWTAuthenticator:
    """Accepts ``Authorization: Bearer <JWT>``; leaves API tokens and other schemes alone.

    ``secret`` enables the HMAC algorithms, ``jwks`` (a `JWKSCache`) the asymmetric ones.
    ``audiences``: accepted ``aud`` values (``auth.jwt_audience``, else
    ``server.public_url``); empty means ``aud`` is not checked. ``issuer``: required
    ``iss`` when set. The user is the ``user_claim`` claim; permissions come from
    ``permissions_claim``.
    """

    def __init__(
        self,
        clock,
        *,
        secret: str = "",
        jwks: JWKSCache | None = None,
        audiences=(),
        issuer: str = "",
        user_claim: str = "sub",
        permissions_claim: str = "scope",
        leeway: float = DEFAULT_LEEWAY,
    ):
        if not secret and jwks is None:
            raise ValueError("a JWT authenticator needs a secret, a JWKS, or both")
        self._clock = clock
        self._secret = secret.encode("utf-8")
        self._jwks = jwks
        self._audiences = tuple(a for a in audiences if a)
        self._issuer = issuer or None
        self._user_claim = user_claim
        self._permissions_claim = permissions_claim
        self._leeway = leeway
        if secret and len(self._secret) < MIN_SECRET_BYTES:
            log.warn(
                "auth.jwt_secret is shorter than {n} bytes; HMAC tokens signed with it are easy to forge",
                n=MIN_SECRET_BYTES,
            )
        if not self._audiences:
            log.warn(
                "JWTs are accepted without an audience check: set auth.jwt_audience or"
                " server.public_url so tokens issued for other services are refused"
            )

    def authenticate(self, request) -> Deferred:
        """Deferred[Principal | None]; fails with Unauthorized for a bad JWT."""
        return Deferred.fromCoroutine(self._authenticate(request))

    async def _authenticate(self, request) -> Principal | None:
        credential = bearer_credential(request)
        if credential is None or not looks_like_jwt(credential):
            return None
        try:
            header = jwt.get_unverified_header(credential)
        except InvalidTokenError as e:
            raise _refusal(e) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise Unauthorized("the JWT header's alg must be a string", reason="bad_algorithm")
        keys: Sequence[bytes | PyJWK]
        if algorithm in HMAC_ALGORITHMS and self._secret:
            keys = [self._secret]
        elif algorithm in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            keys = await self._jwks.keys_for(kid if isinstance(kid, str) else None, algorithm)
        else:
            raise Unauthorized(f"JWT algorithm {algorithm!r} is not accepted here", reason="bad_algorithm")
        claims = self._verified_claims(credential, algorithm, keys)
        self._check_times(claims)
        return self._principal(claims)

    def _verified_claims(self, token: str, algorithm: str, keys: Sequence[bytes | PyJWK]) -> dict:
        """The claims, once one of ``keys`` verifies the signature and aud/iss match."""
        options: Options = {
            "verify_exp": False,  # checked on our clock in _check_times
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": bool(self._audiences),
            "require": ["exp"],
        }
        error: InvalidTokenError = InvalidSignatureError()
        for key in keys:
            try:
                with warnings.catch_warnings():
                    # Short secrets are reported once, at start-up, not on every request.
                    warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                    return jwt.decode(
                        token,
                        key,
                        algorithms=[algorithm],
                        audience=list(self._audiences) or None,
                        issuer=self._issuer,
                        options=options,
                    )
            except InvalidSignatureError as e:
                error = e  # another key of the set may have signed it
            except InvalidKeyError:
                raise Unauthorized(
                    "the JWT cannot be verified with the configured key", reason="bad_signature"
                ) from None
            except InvalidTokenError as e:
                raise _refusal(e) from None
        raise _refusal(error)

    def _check_times(self, claims: dict) -> None:
        now = self._clock.seconds()
        expires = _time_claim(claims, "exp")  # required: decode() refused a token without it
        if now - self._leeway >= expires:
            raise Unauthorized("the JWT has expired; get a new one from your identity provider", reason="expired")
        not_before = _time_claim(claims, "nbf")
        if not_before is not None and not_before > now + self._leeway:
            raise Unauthorized("the JWT is not valid yet (nbf)", reason="not_yet_valid")
        issued = _time_claim(claims, "iat")
        if issued is not None and issued > now + self._leeway:
            raise Unauthorized("the JWT was issued in the future (iat)", reason="not_yet_valid")

    def _principal(self, claims: dict) -> Principal:
        user_id = claims.get(self._user_claim)
        if not isinstance(user_id, str) or not is_valid_user_id(user_id):
            raise Unauthorized(
                f"the JWT's {self._user_claim!r} claim must be a user id of 1-128 characters of"
                " A-Z a-z 0-9 . _ @ - (auth.user_claim picks the claim)",
                reason="bad_user",
            )
        return Principal(user_id=user_id, permissions=known_permissions(claims.get(self._permissions_claim)))
