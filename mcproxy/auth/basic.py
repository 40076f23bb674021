"""HTTP Basic authentication, for clients that can send nothing else (``auth.basic``).

Passwords are stored as scrypt hashes (``scrypt$N$r$p$salt$hash``, base64 parts) set with
``mcproxy-admin users set-password USER``. scrypt is slow on purpose (~50 ms of CPU and
16 MiB), so it runs in the reactor's thread pool, at most ``concurrency`` at a time with
at most ``max_waiting`` more queued (beyond, a 429 at once: a flood cannot queue forever),
and a good password is remembered for ``cache_seconds`` (keyed by an HMAC under a
per-process key, and only while the stored hash is unchanged) so that a client sending
Basic on every request does not pay it every time.

An unknown user costs no scrypt run, but waits as long as one takes (a running average),
and hashes are compared in constant time: no timing oracle for user names, and no CPU to
burn with made-up ones. Each account also has a failure budget (``failure_burst``
failures, refilled at ``failure_rate`` a second): past it, attempts at that account are
refused without hashing until the budget refills, so passwords cannot be guessed quickly.

Basic users get the permissions ``tools:*`` and ``register`` (their own browser, every
tool), the same as a self-registered user's session token; admin work needs a token.
"""

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import OrderedDict

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.auth.chain import authorization_value, has_scheme
from mcproxy.auth.principal import ALL_TOOLS, REGISTER, Principal
from mcproxy.auth.ratelimit import RateLimiter
from mcproxy.auth.tokens import is_valid_user_id
from mcproxy.errors import RateLimited, Unauthorized
from mcproxy.interfaces import IAuthenticator, IStore

log = Logger()

BASIC_PERMISSIONS = frozenset({ALL_TOOLS, REGISTER})
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_PASSWORD_BYTES = 1024
CACHE_SECONDS = 300.0
CACHE_SIZE = 4096
MAX_WAITING = 32
FAILURE_BURST = 10
FAILURE_RATE = 1 / 6.0
#: What an unknown user waits before the first scrypt run has been timed (seconds).
INITIAL_HASH_SECONDS = 0.05

WRONG = "wrong user name or password"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * r * n + (1 << 20), dklen=length)


def hash_password(password: str) -> str:
    """The stored form of ``password``: scrypt (N=2**14, r=8, p=1) with a fresh 16-byte salt."""
    data = password.encode("utf-8")
    if not data or len(data) > MAX_PASSWORD_BYTES:
        raise ValueError(f"a password must be 1-{MAX_PASSWORD_BYTES} bytes of UTF-8")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(data, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: bytes, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (constant-time); False for a hash we cannot read."""
    try:
        scheme, n_text, r_text, p_text, salt_text, digest = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = base64.b64decode(salt_text, validate=True), base64.b64decode(digest, validate=True)
    except (ValueError, binascii.Error):
        log.error("A stored password hash is not in the scrypt$N$r$p$salt$hash format")
        scheme, n, r, p, salt, expected = "scrypt", SCRYPT_N, SCRYPT_R, SCRYPT_P, b"", b""
    # Bounds keep a tampered hash from asking for gigabytes (scrypt needs 128 * n * r bytes).
    if scheme != "scrypt" or not (n >= 2 and n * r <= 2**19 and 1 <= p <= 16):
        return False
    actual = _scrypt(password, salt, n, r, p, len(expected) or HASH_BYTES)
    return hmac.compare_digest(actual, expected)


def parse_basic(value: bytes) -> tuple[str, bytes]:
    """(user id, password) of a ``Basic`` header value; Unauthorized (reason malformed) otherwise."""
    _, _, encoded = value.strip().partition(b" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("the Basic credential is not valid base64", reason="malformed") from None
    user, colon, password = decoded.partition(b":")
    try:
        user_id = user.decode("utf-8")
    except UnicodeDecodeError:
        user_id = ""
    if not colon or not is_valid_user_id(user_id) or not password or len(password) > MAX_PASSWORD_BYTES:
        raise Unauthorized(
            "the Basic credential must be base64 of USER:PASSWORD with a valid user id", reason="malformed"
        )
    return user_id, password


@implementer(IAuthenticator)
class BasicAuthenticator:
    """Accepts ``Authorization: Basic`` for users with a password in the store."""

    def __init__(
        self,
        store: IStore,
        reactor,
        *,
        concurrency: int = 2,
        max_waiting: int = MAX_WAITING,
        cache_seconds: float = CACHE_SECONDS,
        failure_burst: int = FAILURE_BURST,
        failure_rate: float = FAILURE_RATE,
    ):
        self._store = store
        self._reactor = reactor
        self._limit = DeferredSemaphore(concurrency)
        self._max_waiting = max_waiting
        self._failures = RateLimiter(reactor, failure_rate, failure_burst)
        self._hash_seconds = INITIAL_HASH_SECONDS
        self._cache_seconds = cache_seconds
        self._cache_key = secrets.token_bytes(32)
        self._good: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def _verify(self, password: bytes, stored: str) -> Deferred:
        """scrypt in the thread pool, timed so that unknown users can be made to wait as long."""
        started = self._reactor.seconds()

        def timed(good: bool) -> bool:
            self._hash_seconds = 0.8 * self._hash_seconds + 0.2 * (self._reactor.seconds() - started)
            return good

        pool = self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, verify_password, password, stored).addCallback(timed)

    def authenticate(self, request) -> Deferred:
        """Deferred[Principal | None]; fails with Unauthorized for a bad Basic credential."""
        return Deferred.fromCoroutine(self._authenticate(request))

    async def _authenticate(self, request) -> Principal | None:
        value = authorization_value(request)
        if not has_scheme(value, b"basic"):
            return None
        user_id, password = parse_basic(value)
        stored = await self._store.get_password(user_id)
        if not await self._matches(user_id, password, stored):
            log.info("Basic authentication failed for user {user_id}", user_id=user_id)
            self._failures.check(user_id)  # RateLimited once the account's budget is spent
            raise Unauthorized(WRONG, reason="bad_password")
        return Principal(user_id=user_id, permissions=BASIC_PERMISSIONS)

    async def _matches(self, user_id: str, password: bytes, stored: str | None) -> bool:
        key = hmac.digest(self._cache_key, user_id.encode("utf-8") + b"\0" + password, "sha256")
        now = self._reactor.seconds()
        remembered = self._good.get(key)
        if (
            stored is not None
            and remembered is not None
            and remembered[0] == stored
            and now - remembered[1] < self._cache_seconds
        ):
            return True
        wait = self._failures.wait(user_id)
        if wait:
            raise RateLimited(f"too many failed sign-ins for {user_id}; retry in {wait} s", retry_after=wait)
        if len(self._limit.waiting) >= self._max_waiting:
            raise RateLimited("too many sign-ins are being checked right now; retry in a second", retry_after=1)
        if stored is None:
            await deferLater(self._reactor, self._hash_seconds)
            return False
        good = await self._limit.run(self._verify, password, stored)
        self._good.pop(key, None)
        if good and self._cache_seconds > 0:
            self._good[key] = (stored, now)
            while len(self._good) > CACHE_SIZE:
                self._good.popitem(last=False)
        return good
