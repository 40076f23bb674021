"""API tokens: ``mcpx_<tokenId>_<secret>``, stored as the SHA-256 of the whole string.

The id (16 lowercase hex digits) finds the record; the hash, compared in constant time,
proves the secret. The token string itself is never stored or logged.
"""

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
from collections import OrderedDict

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.auth.principal import ADMIN, ALL_TOOLS, IMPERSONATE, METRICS, NETWORK, REGISTER, Principal
from mcproxy.errors import BadRequest, Unauthorized
from mcproxy.interfaces import IAuthenticator, IStore
from mcproxy.storage.records import TokenRecord

log = Logger()

TOKEN_PREFIX = "mcpx_"
TOUCH_INTERVAL = 60.0
RECORD_CACHE_SECONDS = 2.0
RECORD_CACHE_SIZE = 10_000

_TOKEN = re.compile(r"mcpx_([0-9a-f]{16})_[A-Za-z0-9_-]{43}\Z")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}\Z")
_USER_ID = re.compile(r"[A-Za-z0-9._@-]{1,128}\Z")
_PATTERN = r"[A-Za-z0-9_.*?-]{1,64}"
_PERMISSION = re.compile(rf"!?tools:(?:{_PATTERN}|category:{_PATTERN})\Z")
_FIXED_PERMISSIONS = frozenset({ALL_TOOLS, REGISTER, ADMIN, IMPERSONATE, METRICS})
# RFC 6750 b64token, the syntax of a bearer credential.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")


def is_valid_user_id(user_id: str) -> bool:
    """User ids (token owners, ``X-User-Id``): 1-128 of letters, digits and ``._@-``."""
    return isinstance(user_id, str) and _USER_ID.match(user_id) is not None


def is_valid_token_id(token_id: str) -> bool:
    """Token ids are 16 lowercase hex digits."""
    return _TOKEN_ID.match(token_id) is not None


def check_permissions(permissions) -> tuple[str, ...]:
    """The permissions, deduplicated in order; BadRequest naming the first unknown one."""
    if isinstance(permissions, str):
        raise BadRequest("permissions must be a list of strings", code="invalid_permission")
    checked: list[str] = []
    for permission in permissions:
        known = isinstance(permission, str) and (
            permission in _FIXED_PERMISSIONS or _PERMISSION.match(permission) or _is_network(permission)
        )
        if not known:
            raise BadRequest(
                f"unknown permission {permission!r}; expected tools:*, tools:<name or pattern>,"
                " tools:category:<category>, a deny rule !tools:..., net:<CIDR>, register, admin,"
                " impersonate or metrics",
                code="invalid_permission",
            )
        if permission not in checked:
            checked.append(permission)
    return tuple(checked)


def _is_network(permission: str) -> bool:
    """``net:<CIDR>``: the credential works only from client addresses in that network."""
    if not permission.startswith(NETWORK):
        return False
    try:
        ipaddress.ip_network(permission[len(NETWORK) :], strict=False)
    except ValueError:
        return False
    return True


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 (hex) of the whole token string."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_token(value: str) -> str | None:
    """The token id of a well-formed ``mcpx_`` token string, else None."""
    match = _TOKEN.match(value)
    return match.group(1) if match else None


def token_matches(token: str, record: TokenRecord) -> bool:
    """Whether ``token`` is the one ``record`` was made for (constant-time comparison)."""
    return hmac.compare_digest(hash_token(token), record.secret_hash)


async def create_token(
    store: IStore,
    user_id: str,
    permissions,
    ttl: float | None,
    clock,
    description: str = "",
) -> tuple[str, TokenRecord]:
    """Make and store a token for ``user_id``; returns (token string, its record).

    ``ttl`` is seconds until it expires, None for never. The string is shown once: only
    its hash is kept.
    """
    if not is_valid_user_id(user_id):
        raise BadRequest(
            f"invalid user id {user_id!r}: use 1-128 of A-Z a-z 0-9 . _ @ -", code="invalid_user_id"
        )
    checked = check_permissions(permissions)
    if ttl is not None and not (isinstance(ttl, (int, float)) and 0 < ttl < math.inf):
        raise BadRequest(f"ttl must be a positive number of seconds, got {ttl!r}", code="invalid_ttl")
    token_id = secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    now = clock.seconds()
    record = TokenRecord(
        token_id=token_id,
        user_id=user_id,
        secret_hash=hash_token(token),
        permissions=checked,
        created_at=now,
        expires_at=None if ttl is None else now + ttl,
        description=description,
    )
    await store.save_token(record)
    log.info("Created API token {token_id} for user {user_id}", token_id=token_id, user_id=user_id)
    return token, record


def authorization_header(request) -> bytes | None:
    """The single ``Authorization`` header value, None without one; several are refused."""
    values = request.requestHeaders.getRawHeaders(b"authorization") or []
    if len(values) > 1:
        raise Unauthorized("send exactly one Authorization header", reason="invalid")
    return values[0] if values else None


def bearer_credential(request) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``; None for no header or another scheme.

    A Bearer header whose credential is empty or not RFC 6750 syntax is refused.
    """
    header = authorization_header(request)
    if header is None:
        return None
    scheme, _, credential = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    text = credential.strip().decode("latin-1")
    if not _B64TOKEN.match(text):
        raise Unauthorized("the Bearer credential is empty or malformed", reason="invalid")
    return text


@implementer(IAuthenticator)
class TokenAuthenticator:
    """Accepts ``Authorization: Bearer mcpx_...`` API tokens; leaves other bearers (JWTs) alone.

    The last-use time is written at most once per ``touch_interval`` per token, so a busy
    client does not turn every request into a store write. Token records are kept for
    ``cache_seconds`` (the secret is still checked on every request), which takes a store
    round trip off each call; a revocation elsewhere takes effect within that time.
    """

    def __init__(
        self,
        store: IStore,
        clock,
        touch_interval: float = TOUCH_INTERVAL,
        cache_seconds: float = RECORD_CACHE_SECONDS,
    ):
        self._store = store
        self._clock = clock
        self._touch_interval = touch_interval
        self._touched: dict[str, float] = {}
        self._cache_seconds = cache_seconds
        self._records: OrderedDict[str, tuple[TokenRecord, float]] = OrderedDict()

    def authenticate(self, request) -> Deferred:
        """Deferred[Principal | None]; fails with Unauthorized for a bad mcpx token."""
        return Deferred.fromCoroutine(self._authenticate(request))

    async def _authenticate(self, request) -> Principal | None:
        credential = bearer_credential(request)
        if credential is None or not credential.startswith(TOKEN_PREFIX):
            return None
        token_id = parse_token(credential)
        record = await self._record(token_id) if token_id else None
        if record is None or not token_matches(credential, record):
            raise Unauthorized("the API token is not valid", reason="invalid")
        now = self._clock.seconds()
        if record.revoked_at is not None and record.revoked_at <= now:
            raise Unauthorized("the API token has been revoked", reason="revoked")
        if record.expires_at is not None and now >= record.expires_at:
            raise Unauthorized("the API token has expired; ask for a new one", reason="expired")
        await self._touch(record, now)
        return Principal(
            user_id=record.user_id, permissions=frozenset(record.permissions), token_id=record.token_id
        )

    def forget(self, token_id: str) -> None:
        """Drop a cached record (the token was just revoked in this process)."""
        self._records.pop(token_id, None)

    async def _record(self, token_id: str) -> TokenRecord | None:
        """The stored record of ``token_id``, from the short-lived cache when fresh."""
        now = self._clock.seconds()
        cached = self._records.get(token_id)
        if cached is not None and now - cached[1] < self._cache_seconds:
            return cached[0]
        record = await self._store.get_token(token_id)
        self._records.pop(token_id, None)
        if record is not None and self._cache_seconds > 0:
            self._records[token_id] = (record, now)
            while len(self._records) > RECORD_CACHE_SIZE:
                self._records.popitem(last=False)
        return record

    async def _touch(self, record: TokenRecord, now: float) -> None:
        last = max(record.last_used_at or 0.0, self._touched.get(record.token_id, 0.0))
        if now - last < self._touch_interval:
            return
        if len(self._touched) >= 4096:
            self._touched = {k: t for k, t in self._touched.items() if now - t < self._touch_interval}
        self._touched[record.token_id] = now
        try:
            await self._store.touch_token(record.token_id, now)
        except CancelledError:
            raise
        except Exception:
            # The credential is good; a lost last-use time must not fail the request.
            log.failure("Could not record the use of API token {token_id}", token_id=record.token_id)
