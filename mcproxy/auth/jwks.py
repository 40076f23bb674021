"""The identity provider's signing keys (a JWKS document), fetched with treq and cached.

Never pyjwt's ``PyJWKClient``: it blocks. Here every fetch is a treq request bounded by
``timeout`` on the injected clock, so a slow or dead JWKS endpoint costs a request at
most that long and never stalls the reactor. Keys are cached by ``kid``:

* a token naming an unknown ``kid`` triggers a refetch (key rotation), at most once per
  ``refetch_interval`` so random kids cannot turn us into a load generator;
* the whole set is refreshed on use once it is ``max_age`` old;
* after a failed fetch no new attempt is made for an exponentially growing delay
  (``backoff_initial`` doubling up to ``backoff_max``); meanwhile the last good keys keep
  working and requests that need a key we do not have fail at once (``jwks_unavailable``).

Only asymmetric keys are kept (RSA, EC, OKP): HMAC algorithms are verified with
``auth.jwt_secret`` alone, so a JWKS can never supply an HMAC secret.
"""

import json
from typing import cast

import attrs
from jwt import PyJWK
from jwt.exceptions import PyJWTError
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from mcproxy.errors import Unauthorized

log = Logger()

# The asymmetric algorithms we accept, by the JWK key type that carries them.
ASYMMETRIC_ALGORITHMS = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
MAX_JWKS_BYTES = 1024 * 1024


class JWKSError(Exception):
    """The JWKS could not be fetched or holds no usable key (the message says why)."""


@attrs.frozen
class _Key:
    kid: str | None
    jwk: PyJWK


def parse_jwks(body: bytes) -> list[_Key]:
    """The usable signing keys of a JWKS document; JWKSError when there are none."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JWKSError(f"not JSON: {e}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JWKSError('no "keys" list')
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ASYMMETRIC_ALGORITHMS.values():
            continue
        try:
            jwk = PyJWK(entry)
        except (PyJWTError, ValueError, TypeError) as e:
            log.warn("Skipping a JWKS key we cannot use (kid {kid}): {error}", kid=entry.get("kid"), error=e)
            continue
        if jwk.algorithm_name not in ASYMMETRIC_ALGORITHMS:
            continue
        kid = entry.get("kid")
        keys.append(_Key(kid if isinstance(kid, str) else None, jwk))
    if not keys:
        raise JWKSError("no usable RS256, ES256 or EdDSA signing key")
    return keys


class JWKSCache:
    """The keys of ``url``, fetched through ``http`` (a treq ``HTTPClient``) on ``clock``."""

    def __init__(
        self,
        url: str,
        http,
        clock,
        *,
        timeout: float = 2.0,
        refetch_interval: float = 30.0,
        max_age: float = 3600.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ):
        self.url = url
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._keys: list[_Key] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._fetching = False
        self._waiters: list[Deferred] = []

    @classmethod
    def for_url(cls, reactor, url: str, **options) -> "JWKSCache":
        """A cache fetching ``url`` with its own treq client (connect timeout = ``timeout``)."""
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        timeout = options.get("timeout", 2.0)
        return cls(url, HTTPClient(Agent(reactor, connectTimeout=timeout)), reactor, **options)

    async def keys_for(self, kid: str | None, algorithm: str) -> list[PyJWK]:
        """The keys that may have signed a token with this ``kid`` and ``alg``.

        Raises Unauthorized with reason ``unknown_kid`` (the JWKS has no such key) or
        ``jwks_unavailable`` (it could not be fetched and we have no matching key).
        """
        now = self._clock.seconds()
        known = {key.kid for key in self._keys}
        stale = self._fetched_at is None or now - self._fetched_at >= self._max_age
        rotated = kid is not None and kid not in known and self._may_refetch(now)
        if (stale or rotated) and now >= self._retry_at:
            await self._refresh()
        matches = [
            key.jwk for key in self._keys if key.jwk.algorithm_name == algorithm and (kid is None or key.kid == kid)
        ]
        if matches:
            return matches
        if self._failures:
            raise Unauthorized(
                "the identity provider's signing keys (JWKS) cannot be fetched right now; try again shortly",
                reason="jwks_unavailable",
            )
        raise Unauthorized(f"no {algorithm} key with kid {kid!r} in the identity provider's JWKS", reason="unknown_kid")

    def _may_refetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._refetch_interval

    async def _refresh(self) -> None:
        """Wait for a fetch (one at a time; each caller gets its own Deferred to cancel)."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if not self._fetching:
            self._fetching = True
            Deferred.fromCoroutine(self._fetch())
        await waiter

    async def _fetch(self) -> None:
        """Fetch and install the key set, recording success or failure; never raises."""
        started = self._attempted_at = self._clock.seconds()
        try:
            download = Deferred.fromCoroutine(self._download())
            self._keys = parse_jwks(await download.addTimeout(self._timeout, self._clock))
        except TimeoutError:
            self._failed(f"no answer within {self._timeout:g} s")
        except Exception as e:
            self._failed(str(e) if isinstance(e, JWKSError) else f"{type(e).__name__}: {e}")
        else:
            self._fetched_at, self._failures, self._retry_at = started, 0, 0.0
            log.info("Fetched {count} signing keys from {url}", count=len(self._keys), url=self.url)
        finally:
            self._fetching = False
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    def _failed(self, why: str) -> None:
        """Count a failure; the next attempt waits the backoff delay from now."""
        self._failures += 1
        delay = min(self._backoff_initial * 2 ** (self._failures - 1), self._backoff_max)
        self._retry_at = self._clock.seconds() + delay
        log.warn(
            "Could not fetch the JWKS {url} ({why}); next attempt in {delay:g} s",
            url=self.url,
            why=why,
            delay=delay,
        )

    async def _download(self) -> bytes:
        response = await self._http.get(self.url, headers={b"Accept": [b"application/json"]}, unbuffered=True)
        if response.length is not UNKNOWN_LENGTH and response.length > MAX_JWKS_BYTES:
            raise JWKSError(f"the document is over {MAX_JWKS_BYTES} bytes")
        body = await _read_body(response)
        if response.code != 200:
            raise JWKSError(f"HTTP {response.code}")
        return body


class _CappedBody(Protocol):
    """Collects a response body into ``done``; past `MAX_JWKS_BYTES` drops the connection."""

    def __init__(self, done: Deferred):
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0

    def drop(self) -> None:
        transport = self.transport
        if transport is not None:
            # A response body's transport is a producer; the connection under it can be aborted.
            abort = getattr(transport, "abortConnection", None) or cast(IPushProducer, transport).stopProducing
            abort()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > MAX_JWKS_BYTES:
            self.drop()
            self.done.errback(JWKSError(f"the document is over {MAX_JWKS_BYTES} bytes"))
        else:
            self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _read_body(response) -> Deferred:
    """Deferred[bytes]: the body, at most `MAX_JWKS_BYTES`; cancelling it (our timeout) closes
    the connection, as `twisted.web.client.readBody` does (treq.content would leave it open)."""
    protocol = _CappedBody(Deferred(lambda _: protocol.drop()))
    response.deliverBody(protocol)
    return protocol.done
