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

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.auth.principal import ADMIN, ALL_TOOLS, IMPERSONATE, LAUNCH, METRICS, NETWORK, REGISTER, TUNNEL, Principal
from mcproxy.errors import BadRequest, Unauthorized
from mcproxy.interfaces import IAuthenticator, IStore
from mcproxy.storage.records import TokenRecord

log = Logger()

TOKEN_PREFIX = "mcpx_"
TOUCH_INTERVAL = 60.0
RECORD_CACHE_SECONDS = 2.0
RECORD_CACHE_SIZE = 10_000
#: How many generations of parents a token may have (a session token's session token...).
MAX_ANCESTORS = 8
#: What a token minted from another never inherits: it serves one user's own browser.
NOT_INHERITED = frozenset({ADMIN, IMPERSONATE, METRICS})

_TOKEN = re.compile(r"mcpx_([0-9a-f]{16})_[A-Za-z0-9_-]{43}\Z")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}\Z")
_USER_ID = re.compile(r"[A-Za-z0-9._@-]{1,128}\Z")
_PATTERN = r"[A-Za-z0-9_.*?-]{1,64}"
_PERMISSION = re.compile(rf"!?tools:(?:{_PATTERN}|category:{_PATTERN})\Z")
_FIXED_PERMISSIONS = frozenset({ALL_TOOLS, REGISTER, TUNNEL, LAUNCH, ADMIN, IMPERSONATE, METRICS})
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
                " tools:category:<category>, a deny rule !tools:..., net:<CIDR>, register, tunnel, admin,"
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
    parent_id: str | None = None,
    not_after: float | None = None,
) -> tuple[str, TokenRecord]:
    """Make and store a token for ``user_id``; returns (token string, its record).

    ``ttl`` is seconds until it expires, None for never. The string is shown once: only
    its hash is kept. ``parent_id`` names the token it was minted from (see `mint_child_token`);
    ``not_after`` caps the expiry (epoch seconds).
    """
    if not is_valid_user_id(user_id):
        raise BadRequest(f"invalid user id {user_id!r}: use 1-128 of A-Z a-z 0-9 . _ @ -", code="invalid_user_id")
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
        expires_at=_earliest(None if ttl is None else now + ttl, not_after),
        description=description,
        parent_id=parent_id,
    )
    await store.save_token(record)
    log.info("Created API token {token_id} for user {user_id}", token_id=token_id, user_id=user_id)
    return token, record


def child_permissions(parent: TokenRecord, wanted) -> tuple[str, ...]:
    """What a token minted from ``parent`` may carry: ``wanted`` from an admin parent, else the
    parent's own permissions (deny and network rules included) without admin, impersonate and
    metrics. Never more than the parent holds."""
    if ADMIN in parent.permissions:
        return tuple(wanted)
    return tuple(p for p in parent.permissions if p not in NOT_INHERITED)


async def mint_child_token(
    store: IStore, parent: TokenRecord, user_id: str, wanted, ttl: float, clock, description: str = ""
) -> tuple[str, TokenRecord]:
    """A token for ``user_id`` that is a child of ``parent``: at most its permissions, never a
    later expiry, and it stops working when the parent is revoked or expires."""
    if parent.expires_at is not None and parent.expires_at <= clock.seconds():
        raise Unauthorized("the API token has expired; ask for a new one", reason="expired")
    return await create_token(
        store,
        user_id,
        child_permissions(parent, wanted),
        ttl,
        clock,
        description,
        parent_id=parent.token_id,
        not_after=parent.expires_at,
    )


async def descendants(store: IStore, token_id: str) -> list[TokenRecord]:
    """Every token minted from ``token_id``, directly or through other children."""
    children: dict[str | None, list[TokenRecord]] = {}
    for record in await store.list_tokens():
        children.setdefault(record.parent_id, []).append(record)
    found: list[TokenRecord] = []
    frontier = [token_id]
    while frontier:
        below = [child for parent in frontier for child in children.get(parent, ())]
        found += below
        frontier = [child.token_id for child in below]
    return found


async def revoke_token_tree(store: IStore, token_id: str, when: float) -> list[str]:
    """Revoke ``token_id`` and every token minted from it at ``when``; the ids revoked, the
    token's own first ([] when it does not exist)."""
    if not await store.revoke_token(token_id, when):
        return []
    revoked = [token_id]
    for child in await descendants(store, token_id):
        if await store.revoke_token(child.token_id, when):
            revoked.append(child.token_id)
    return revoked


async def adopt_children(store: IStore, old_id: str, new_id: str) -> int:
    """Move the direct children of ``old_id`` to ``new_id`` (a rotation: same credential, new
    secret), so they live on with the replacement. How many moved."""
    moved = 0
    for record in await store.list_tokens():
        if record.parent_id == old_id:
            await store.save_token(attrs.evolve(record, parent_id=new_id))
            moved += 1
    return moved


def _earliest(*times: float | None) -> float | None:
    """The earliest of the times given (None: never)."""
    known = [t for t in times if t is not None]
    return min(known) if known else None


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


@attrs.frozen
class _Verified:
    """A credential checked against the store: who it is, the tokens it rests on (its own and
    its ancestors'), and until when the check holds."""

    principal: Principal
    lineage: frozenset[str]
    until: float


@implementer(IAuthenticator)
class TokenAuthenticator:
    """Accepts ``Authorization: Bearer mcpx_...`` API tokens; leaves other bearers (JWTs) alone.

    The last-use time is written at most once per ``touch_interval`` per token, so a busy
    client does not turn every request into a store write. Token records are kept for
    ``cache_seconds``, and so is the verdict on a credential (who it is), which takes the
    hash, the store round trip and the Deferreds off each call; a revocation in this
    process (`forget`) takes effect at once, one elsewhere within that time.
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
        self._verified: dict[str, _Verified] = {}

    def authenticate(self, request) -> Deferred:
        """Deferred[Principal | None]; fails with Unauthorized for a bad mcpx token. A
        credential verified less than ``cache_seconds`` ago is answered at once from memory,
        without a hash or a store look-up."""
        try:
            credential = bearer_credential(request)
        except Unauthorized:
            return fail()
        if credential is None or not credential.startswith(TOKEN_PREFIX):
            return succeed(None)
        verified = self._verified.get(credential)
        if verified is not None:
            now = self._clock.seconds()
            if now < verified.until:
                return succeed(verified.principal)
            del self._verified[credential]
        return Deferred.fromCoroutine(self._authenticate(credential))

    async def _authenticate(self, credential: str) -> Principal:
        token_id = parse_token(credential)
        record = await self._record(token_id) if token_id else None
        if record is None or not token_matches(credential, record):
            raise Unauthorized("the API token is not valid", reason="invalid")
        now = self._clock.seconds()
        if record.revoked_at is not None and record.revoked_at <= now:
            raise Unauthorized("the API token has been revoked", reason="revoked")
        if record.expires_at is not None and now >= record.expires_at:
            raise Unauthorized("the API token has expired; ask for a new one", reason="expired")
        lineage = [record, *await self._check_ancestors(record, now)]
        await self._touch(record, now)
        principal = Principal(user_id=record.user_id, permissions=frozenset(record.permissions), token_id=token_id)
        if self._cache_seconds > 0:
            ends = [t for r in lineage for t in (r.expires_at, r.revoked_at) if t is not None]
            self._verified[credential] = _Verified(
                principal, frozenset(r.token_id for r in lineage), min([now + self._cache_seconds, *ends])
            )
            while len(self._verified) > RECORD_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
        return principal

    async def _check_ancestors(self, record: TokenRecord, now: float) -> list[TokenRecord]:
        """A token minted from another works only while every token above it does: those tokens."""
        parent_id, ancestors = record.parent_id, list[TokenRecord]()
        while parent_id is not None:
            parent = await self._record(parent_id) if len(ancestors) < MAX_ANCESTORS else None
            if parent is None or not parent.is_valid_at(now):
                raise Unauthorized(
                    "the token this session token was made from has been revoked or has expired;"
                    " register again with a valid token",
                    reason="revoked",
                )
            ancestors.append(parent)
            parent_id = parent.parent_id
        return ancestors

    def forget(self, token_id: str) -> None:
        """Drop what is cached of a token and of the tokens made from it (it was just revoked
        in this process): their next request is checked against the store."""
        self._records.pop(token_id, None)
        for credential, verified in list(self._verified.items()):
            if token_id in verified.lineage:
                del self._verified[credential]

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
