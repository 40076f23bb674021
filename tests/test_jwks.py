"""The JWKS cache: rotation, rate-limited refetch, backoff, and a JWKS that is down or slow.

Clock-driven unit tests use a scripted HTTP client; the rest fetch from a real
twisted.web server on 127.0.0.1 and check that failures come back fast and that the
reactor keeps running meanwhile.
"""

import json
import socket
import time

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.jwks import JWKSCache, JWKSError, parse_jwks
from mcproxy.auth.jwt import JWTAuthenticator
from mcproxy.errors import Unauthorized
from mcproxy.testing.deferreds import failure_result_of, success_result_of
from mcproxy.testing.requests import FakeRequest

KEY_A = ec.generate_private_key(ec.SECP256R1())
KEY_B = ec.generate_private_key(ec.SECP256R1())


def jwk(key, kid):
    data = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    data["kid"] = kid
    return data


def token(key, kid, clock_now=None):
    now = int(clock_now if clock_now is not None else time.time())
    return jwt.encode(
        {"sub": "alice", "scope": "tools:*", "exp": now + 300}, key, algorithm="ES256", headers={"kid": kid}
    )


class JWKSServer(Resource):
    """The identity provider's JWKS endpoint.

    ``mode`` is "ok", "slow" (never answers), "error" or "huge" (over 1 MiB, chunked).
    """

    isLeaf = True

    def __init__(self, *keys):
        super().__init__()
        self.keys = list(keys)
        self.mode = "ok"
        self.fetches = 0
        self.pending = []

    def render_GET(self, request):
        self.fetches += 1
        if self.mode == "slow":
            self.pending.append(request)
            return NOT_DONE_YET
        if self.mode == "error":
            request.setResponseCode(503)
            return b"down for maintenance"
        if self.mode == "huge":  # good keys, padded; chunked, so no Content-Length announces the size
            request.write(json.dumps({"keys": self.keys}).encode()[:-1])
            for _ in range(3):
                request.write(b" " * 512 * 1024)
            request.write(b"}")
            request.finish()
            return NOT_DONE_YET
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"keys": self.keys}).encode()


class Scripted:
    """An HTTP client whose answers the test decides: "ok" (served by StubTreq), "refuse", "hang"."""

    def __init__(self, server: JWKSServer):
        self.stub = StubTreq(server)
        self.mode = "ok"
        self.calls = 0
        self.cancelled = 0

    def get(self, url, **kwargs):
        self.calls += 1
        if self.mode == "refuse":
            return fail(ConnectionRefusedError())
        if self.mode == "hang":
            return Deferred(lambda d: setattr(self, "cancelled", self.cancelled + 1))
        return self.stub.get(url, **kwargs)


def scripted_cache(**options):
    server = JWKSServer(jwk(KEY_A, "a"))
    http = Scripted(server)
    clock = Clock()
    clock.advance(1000)
    options = {"timeout": 2.0, "refetch_interval": 30.0, "backoff_initial": 1.0, "backoff_max": 8.0, **options}
    return JWKSCache("https://idp.test/jwks", http, clock, **options), http, server, clock


def keys(cache, kid="a"):
    return success_result_of(cache.keys_for(kid, "ES256"))


def refusal(cache, kid="a") -> str:
    return failure_result_of(cache.keys_for(kid, "ES256"), Unauthorized).value.reason


def test_backoff_doubles_up_to_the_maximum_then_resets():
    cache, http, _server, clock = scripted_cache()
    http.mode = "refuse"
    attempts_at = []
    for _ in range(60):
        before = http.calls
        assert refusal(cache) == "jwks_unavailable"
        if http.calls > before:
            attempts_at.append(clock.seconds() - 1000)
        clock.advance(0.5)
    # Delays 1, 2, 4, 8, 8, 8... after each failure (0.5 s polling).
    assert attempts_at[:6] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]
    http.mode = "ok"
    clock.advance(8)
    assert len(keys(cache)) == 1
    http.mode = "refuse"
    # A success resets the backoff and the cached keys keep serving while the JWKS is down.
    clock.advance(4000)
    assert len(keys(cache)) == 1
    calls = http.calls
    clock.advance(1.0)
    assert len(keys(cache)) == 1 and http.calls == calls + 1  # first delay is 1 s again


def test_unknown_kids_refetch_at_most_once_per_interval():
    cache, http, server, clock = scripted_cache()
    assert len(keys(cache)) == 1 and http.calls == 1
    assert refusal(cache, "rotated") == "unknown_kid"  # the first load was too recent
    assert http.calls == 1
    clock.advance(30)
    assert refusal(cache, "rotated") == "unknown_kid"
    assert http.calls == 2
    for kid in ("x", "y", "z"):
        assert refusal(cache, kid) == "unknown_kid"
    assert http.calls == 2
    server.keys.append(jwk(KEY_B, "rotated"))
    clock.advance(30)
    assert len(keys(cache, "rotated")) == 1 and http.calls == 3
    assert len(keys(cache, "a")) == 1 and http.calls == 3


def test_a_hanging_jwks_times_out_on_the_clock_and_is_cancelled():
    cache, http, _server, clock = scripted_cache()
    http.mode = "hang"
    d = Deferred.fromCoroutine(cache.keys_for("a", "ES256"))
    results = []
    d.addBoth(results.append)
    clock.advance(1.9)
    assert not results
    clock.advance(0.2)
    assert results and results[0].value.reason == "jwks_unavailable"
    assert http.cancelled == 1


def test_a_jwks_over_the_size_limit_without_a_length_is_refused():
    cache, http, server, _clock = scripted_cache()
    server.mode = "huge"
    assert refusal(cache) == "jwks_unavailable"
    assert http.calls == 1


def test_concurrent_requests_share_one_fetch_and_may_give_up_alone():
    cache, http, _server, clock = scripted_cache()
    http.mode = "hang"
    first = Deferred.fromCoroutine(cache.keys_for("a", "ES256"))
    second = Deferred.fromCoroutine(cache.keys_for("a", "ES256"))
    assert http.calls == 1
    first.cancel()
    first.addErrback(lambda f: None)
    results = []
    second.addBoth(results.append)
    clock.advance(2.1)
    assert results[0].value.reason == "jwks_unavailable"


@pytest.mark.parametrize(
    "body, why",
    [
        (b"<html>", "not JSON"),
        (b"[]", 'no "keys" list'),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable"),
        (
            b'{"keys": [{"kty": "EC", "crv": "P-256", "x": "bad", "y": "bad"}, 7, {"kty": "RSA", "use": "enc"}]}',
            "no usable",
        ),
    ],
)
def test_unusable_documents(body, why):
    with pytest.raises(JWKSError, match=why):
        parse_jwks(body)


def test_only_signing_keys_of_accepted_algorithms_are_kept():
    rsa_public = json.loads(
        RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    )
    document = {"keys": [jwk(KEY_A, "a"), {**rsa_public, "kid": "r", "alg": "RS512"}, {**rsa_public, "kid": "s"}]}
    parsed = parse_jwks(json.dumps(document).encode())
    assert [(k.kid, k.jwk.algorithm_name) for k in parsed] == [("a", "ES256"), ("s", "RS256")]


# -- against a real server ----------------------------------------------------------


@pytest.fixture
def jwks_server(reactor):
    server = JWKSServer(jwk(KEY_A, "a"))
    port = reactor.listenTCP(0, Site(server), interface="127.0.0.1")
    server.url = f"http://127.0.0.1:{port.getHost().port}/jwks"
    yield server
    for request in server.pending:
        if not request.finished and not request._disconnected:
            request.finish()
    pytest_twisted.blockon(port.stopListening())


def authenticator(reactor, url, **options):
    cache = JWKSCache.for_url(reactor, url, **options)
    jwt_auth = JWTAuthenticator(reactor, jwks=cache)
    return cache, AuthenticationChain([jwt_auth], "tokens", reactor)


def bearer(value: str) -> FakeRequest:
    request = FakeRequest([b""])
    request.requestHeaders.addRawHeader(b"authorization", b"Bearer " + value.encode())
    return request


async def reason_of(chain, value) -> str:
    with pytest.raises(Unauthorized) as info:
        await chain.authenticate(bearer(value))
    return info.value.reason


@pytest_twisted.ensureDeferred
async def test_key_rotation_is_picked_up(reactor, jwks_server):
    _cache, chain = authenticator(reactor, jwks_server.url, refetch_interval=0.2)
    assert (await chain.authenticate(bearer(token(KEY_A, "a")))).user_id == "alice"
    assert (await chain.authenticate(bearer(token(KEY_A, "a")))).user_id == "alice"
    assert jwks_server.fetches == 1
    await deferLater(reactor, 0.25, lambda: None)
    assert await reason_of(chain, token(KEY_B, "b")) == "unknown_kid"
    assert jwks_server.fetches == 2
    jwks_server.keys.append(jwk(KEY_B, "b"))
    assert await reason_of(chain, token(KEY_B, "b")) == "unknown_kid"  # refetched too recently
    assert jwks_server.fetches == 2
    await deferLater(reactor, 0.25, lambda: None)
    assert (await chain.authenticate(bearer(token(KEY_B, "b")))).user_id == "alice"
    assert jwks_server.fetches == 3


@pytest_twisted.ensureDeferred
async def test_a_jwks_that_is_down_fails_fast(reactor):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _cache, chain = authenticator(reactor, f"http://127.0.0.1:{port}/jwks", timeout=2.0)
    started = time.monotonic()
    assert await reason_of(chain, token(KEY_A, "a")) == "jwks_unavailable"
    assert await reason_of(chain, token(KEY_A, "a")) == "jwks_unavailable"  # in backoff: no new attempt
    assert time.monotonic() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_a_jwks_answering_errors_is_unavailable(reactor, jwks_server):
    jwks_server.mode = "error"
    _cache, chain = authenticator(reactor, jwks_server.url)
    assert await reason_of(chain, token(KEY_A, "a")) == "jwks_unavailable"
    assert jwks_server.fetches == 1


@pytest_twisted.ensureDeferred
async def test_a_slow_jwks_times_out_without_stalling_the_reactor(reactor, jwks_server):
    _cache, chain = authenticator(reactor, jwks_server.url, timeout=0.5, max_age=0.1, backoff_initial=0.1)
    assert (await chain.authenticate(bearer(token(KEY_A, "a")))).user_id == "alice"
    jwks_server.mode = "slow"
    await deferLater(reactor, 0.15, lambda: None)
    ticks = []
    ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.clock = reactor
    ticker.start(0.05)
    try:
        started = time.monotonic()
        # The stale keys are refreshed; the refresh times out and the cached key still serves.
        assert (await chain.authenticate(bearer(token(KEY_A, "a")))).user_id == "alice"
        elapsed = time.monotonic() - started
        # A key we never had cannot be found while the JWKS hangs: refused at once (backoff).
        assert await reason_of(chain, token(KEY_B, "b")) == "jwks_unavailable"
    finally:
        ticker.stop()
    assert 0.45 <= elapsed < 1.5
    assert jwks_server.fetches == 2
    assert len(ticks) >= 6  # the reactor kept running while the fetch waited
    for _ in range(20):  # the server notices the aborted connection a moment later
        if jwks_server.pending[0]._disconnected:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert jwks_server.pending[0]._disconnected  # the hung fetch was aborted, not left open
