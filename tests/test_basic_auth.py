"""Basic authentication: scrypt hashes, no timing oracle, the reactor stays free, the CLI,
and hypothesis fuzzing of Authorization header parsing across every authenticator."""

import base64
import json
import os
import statistics
import subprocess
import sys
import time

import jwt
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

import mcproxy.auth.basic as basic
from mcproxy.auth.basic import (
    BasicAuthenticator,
    hash_password,
    parse_basic,
    verify_password,
)
from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.jwt import JWTAuthenticator
from mcproxy.auth.principal import Principal
from mcproxy.auth.tokens import TokenAuthenticator, create_token
from mcproxy.errors import BadRequest, RateLimited, Unauthorized
from mcproxy.storage import open_store
from mcproxy.storage.memory import MemoryStore
from mcproxy.testing.deferreds import failure_result_of, outcome_of, success_result_of
from mcproxy.testing.fuzz import fuzz_settings
from mcproxy.testing.requests import FakeRequest
from mcproxy.web.http import write_error

ADMIN = os.path.join(os.path.dirname(sys.executable), "mcproxy-admin")


def basic_header(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def request_with(*values: bytes) -> FakeRequest:
    request = FakeRequest([b""])
    for value in values:
        request.requestHeaders.addRawHeader(b"authorization", value)
    return request


async def store_with_alice():
    store = MemoryStore()
    await store.set_password("alice", hash_password("correct horse"))
    return store


def test_hash_format_and_verification():
    encoded = hash_password("pässword")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert verify_password("pässword".encode(), encoded)
    assert not verify_password(b"password", encoded)
    assert hash_password("pässword") != encoded  # fresh salt every time
    for broken in ("", "scrypt$x", "bcrypt$16384$8$1$AAAA$AAAA", "scrypt$1048576$64$1$AAAA$AAAA"):
        assert not verify_password(b"x", broken)
    with pytest.raises(ValueError):
        hash_password("")


@pytest.mark.parametrize(
    "value",
    [
        b"Basic",
        b"Basic !!!!",
        b"Basic " + base64.b64encode(b"no-colon"),
        basic_header("bad user", "pw"),
        basic_header("alice", ""),
        b"Basic " + base64.b64encode(b"\xff\xfe:pw"),
    ],
)
def test_malformed_basic_values(value):
    with pytest.raises(Unauthorized) as info:
        parse_basic(value)
    assert info.value.reason == "malformed"


def test_parse_basic_keeps_colons_in_passwords():
    assert parse_basic(basic_header("bob@example.com", "a:b: c")) == ("bob@example.com", b"a:b: c")


@pytest_twisted.ensureDeferred
async def test_good_and_bad_passwords(reactor):
    authenticator = BasicAuthenticator(await store_with_alice(), reactor)
    principal = await authenticator.authenticate(request_with(basic_header("alice", "correct horse")))
    assert principal == Principal("alice", frozenset({"tools:*", "register"}))
    for user, password in (("alice", "wrong horse"), ("mallory", "correct horse")):
        with pytest.raises(Unauthorized) as info:
            await authenticator.authenticate(request_with(basic_header(user, password)))
        assert (info.value.reason, info.value.message) == ("bad_password", "wrong user name or password")
    assert await authenticator.authenticate(request_with(b"Bearer abc")) is None
    assert await authenticator.authenticate(request_with()) is None


@pytest_twisted.ensureDeferred
async def test_unknown_user_costs_as_much_as_a_wrong_password(reactor, monkeypatch):
    authenticator = BasicAuthenticator(await store_with_alice(), reactor, cache_seconds=0)

    async def median(user, rounds=7):
        durations = []
        for _ in range(rounds):
            started = time.perf_counter()
            with pytest.raises(Unauthorized):
                await authenticator.authenticate(request_with(basic_header(user, "wrong horse")))
            durations.append(time.perf_counter() - started)
        return statistics.median(durations)

    wrong_password = await median("alice")
    runs = []
    real = basic.verify_password
    monkeypatch.setattr(basic, "verify_password", lambda *a: runs.append(a) or real(*a))
    unknown_user = await median("nobody")
    assert runs == []  # made-up user names burn no CPU...
    assert wrong_password > 0.005 and unknown_user > 0.005  # ...but take as long as scrypt
    assert 1 / 3 < unknown_user / wrong_password < 3


@pytest_twisted.ensureDeferred
async def test_scrypt_runs_off_the_reactor_and_good_passwords_are_remembered(reactor, monkeypatch):
    store = await store_with_alice()
    authenticator = BasicAuthenticator(store, reactor)
    runs = []
    real = basic.verify_password
    monkeypatch.setattr(basic, "verify_password", lambda *a: runs.append(a) or real(*a))

    ticks = []
    checks = gatherResults([Deferred.fromCoroutine(_principal(authenticator, "correct horse")) for _ in range(4)])
    await deferLater(reactor, 0.01, lambda: ticks.append(checks.called))
    assert ticks == [False]  # the reactor ran while scrypt was busy
    assert [p.user_id for p in await checks] == ["alice"] * 4
    assert len(runs) == 4

    await _principal(authenticator, "correct horse")
    assert len(runs) == 4  # remembered
    with pytest.raises(Unauthorized):
        await _principal(authenticator, "correct horsE")
    await store.set_password("alice", hash_password("new battery"))
    with pytest.raises(Unauthorized):
        await _principal(authenticator, "correct horse")  # a changed password forgets the old one
    assert (await _principal(authenticator, "new battery")).user_id == "alice"


async def _principal(authenticator, password):
    return await authenticator.authenticate(request_with(basic_header("alice", password)))


@pytest_twisted.ensureDeferred
async def test_the_chain_offers_basic_and_refuses_duplicates(reactor):
    store = await store_with_alice()
    chain = AuthenticationChain(
        [TokenAuthenticator(store, reactor), BasicAuthenticator(store, reactor)],
        "tokens",
        reactor,
        resource_metadata=lambda r: "http://127.0.0.1:3000/.well-known/oauth-protected-resource",
        offer_basic=True,
    )
    assert (await chain.authenticate(request_with(basic_header("alice", "correct horse")))).user_id == "alice"
    request = request_with(basic_header("alice", "nope"))
    with pytest.raises(Unauthorized) as info:
        await chain.authenticate(request)
    write_error(request, info.value)
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [
        (
            b'Bearer realm="mcproxy", resource_metadata="http://127.0.0.1:3000/.well-known/oauth-protected-resource",'
            b' error="invalid_token"'
        ),
        b'Basic realm="mcproxy", charset="UTF-8"',
    ]
    duplicate = request_with(basic_header("alice", "correct horse"), basic_header("alice", "correct horse"))
    with pytest.raises(BadRequest) as info:
        await chain.authenticate(duplicate)
    write_error(duplicate, info.value)
    assert duplicate.responseCode == 400
    assert json.loads(b"".join(duplicate.written))["error"] == {
        "code": "duplicate_authorization",
        "message": "send exactly one Authorization header; this request has several",
    }


@pytest_twisted.ensureDeferred
async def test_cli_sets_a_password_from_stdin(tmp_path, reactor):
    db = tmp_path / "store.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPROXY_")}
    env["MCPROXY_STORE_URL"] = f"sqlite:{db}"

    def admin(*args, stdin=""):
        return deferToThread(
            subprocess.run,
            [ADMIN, *args],
            cwd=str(tmp_path),
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = await admin("users", "set-password", "alice", stdin="s3cret pass\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "password set for alice\n", "")
    for args, stdin, message in (
        (("users", "set-password", "bad user"), "x\n", "is not a user id"),
        (("users", "set-password", "bob"), "\n", "the password is empty"),
        (("users",), "", "choose one of: users set-password USER"),
    ):
        done = await admin(*args, stdin=stdin)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
    store = await open_store(f"sqlite:{db}", reactor)
    try:
        assert verify_password(b"s3cret pass", await store.get_password("alice"))
        assert await store.get_password("bob") is None
    finally:
        await store.close()


# -- fuzzing the Authorization header across every authenticator ---------------------


class InlineThreads(Clock):
    """A Clock whose thread pool runs work at once, so every check completes synchronously."""

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


SECRET = "fuzz-secret-" * 6
_clock = InlineThreads()
_clock.advance(1_800_000_000)
_store = MemoryStore()
success_result_of(_store.set_password("alice", hash_password("pw")))
_TOKEN, _ = success_result_of(create_token(_store, "tok", ["tools:*"], None, _clock))
_JWT = jwt.encode({"sub": "jay", "exp": 1_800_000_300}, SECRET, algorithm="HS256")
_CHAIN = AuthenticationChain(
    [
        TokenAuthenticator(_store, _clock),
        JWTAuthenticator(_clock, secret=SECRET),
        BasicAuthenticator(_store, _clock, cache_seconds=0, failure_burst=10**9),
    ],
    "tokens",
    _clock,
    resource_metadata=lambda r: "http://h/.well-known/oauth-protected-resource",
    offer_basic=True,
)

_text = st.text(max_size=60)
_values = st.one_of(
    st.binary(max_size=120),
    _text.map(lambda t: t.encode("utf-8")),
    st.tuples(
        st.sampled_from([b"Bearer ", b"bearer  ", b"Basic ", b"BASIC ", b"Digest ", b""]), st.binary(max_size=80)
    ).map(b"".join),
    st.tuples(_text, _text).map(lambda up: b"Basic " + base64.b64encode(f"{up[0]}:{up[1]}".encode())),
    st.tuples(st.sampled_from(["alice", "tok", "jay"]), st.sampled_from(["pw", "", "x:y"])).map(
        lambda up: basic_header(*up)
    ),
    st.sampled_from([b"Bearer " + _TOKEN.encode(), b"Bearer " + _JWT.encode(), basic_header("alice", "pw")]),
    # Tokens with a few characters replaced (JWT/base64url alphabet, so they reach the verifiers).
    st.tuples(
        st.sampled_from([_TOKEN, _JWT]), st.integers(0, 200), st.text(alphabet="AZaz09-_.=", min_size=1, max_size=3)
    ).map(lambda t: f"Bearer {t[0][: t[1]]}{t[2]}{t[0][t[1] + 3 :]}".encode()),
)


@fuzz_settings(600, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_fuzz_one_authorization_header(value):
    request = request_with(value)
    checking = Deferred.fromCoroutine(_CHAIN.authenticate(request))
    _clock.advance(1)  # an unknown user's equalising wait
    principal = outcome_of(checking, Unauthorized)
    if isinstance(principal, Unauthorized):
        write_error(request, principal)
        assert request.responseCode == 401
        challenges = request.responseHeaders.getRawHeaders(b"www-authenticate")
        assert challenges[0].startswith(b'Bearer realm="mcproxy", resource_metadata="http://h/')
        assert challenges[1] == b'Basic realm="mcproxy", charset="UTF-8"'
        return
    assert principal.user_id in ("alice", "tok", "jay")


@fuzz_settings(100)
@given(st.lists(_values, min_size=2, max_size=4))
def test_fuzz_several_authorization_headers_are_refused(values):
    request = request_with(*values)
    info = failure_result_of(_CHAIN.authenticate(request), BadRequest)
    assert info.value.code == "duplicate_authorization"


@pytest_twisted.ensureDeferred
async def test_an_account_that_keeps_failing_is_throttled_without_hashing(monkeypatch):
    clock = InlineThreads()
    store = await store_with_alice()
    authenticator = BasicAuthenticator(store, clock, cache_seconds=0, failure_burst=3, failure_rate=0.1)
    runs = []
    real = basic.verify_password
    monkeypatch.setattr(basic, "verify_password", lambda *a: runs.append(a) or real(*a))
    for _ in range(3):
        failure_result_of(authenticator.authenticate(request_with(basic_header("alice", "guess"))), Unauthorized)
    info = failure_result_of(authenticator.authenticate(request_with(basic_header("alice", "guess"))), RateLimited)
    assert info.value.retry_after >= 1 and "alice" in info.value.message
    # Even the right password waits: guessing cannot go on.
    failure_result_of(authenticator.authenticate(request_with(basic_header("alice", "correct horse"))), RateLimited)
    assert len(runs) == 3  # the refused attempts ran no scrypt
    clock.advance(10)
    principal = success_result_of(authenticator.authenticate(request_with(basic_header("alice", "correct horse"))))
    assert principal.user_id == "alice"


@pytest_twisted.ensureDeferred
async def test_a_flood_of_sign_ins_fails_fast_instead_of_queueing(reactor):
    store = await store_with_alice()
    authenticator = BasicAuthenticator(store, reactor, cache_seconds=0, concurrency=1, max_waiting=2)
    checks = [authenticator.authenticate(request_with(basic_header("alice", f"guess {i}"))) for i in range(6)]
    outcomes = []
    for check in checks:
        try:
            await check
        except (Unauthorized, RateLimited) as e:
            outcomes.append(type(e).__name__)
    # One runs, two wait, the rest are refused at once.
    assert outcomes == ["Unauthorized"] * 3 + ["RateLimited"] * 3
