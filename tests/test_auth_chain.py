"""The authentication chain: authenticators in turn, challenges, the X-User-Id rule, mode "none"."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.principal import Principal
from mcproxy.auth.tokens import TokenAuthenticator, create_token
from mcproxy.errors import BadRequest, Forbidden, MCProxyError, Unauthorized
from mcproxy.interfaces import IAuthenticator
from mcproxy.storage.memory import MemoryStore
from mcproxy.testing.deferreds import failure_result_of, outcome_of, success_result_of
from mcproxy.testing.fuzz import fuzz_settings
from mcproxy.testing.requests import FakeRequest
from mcproxy.web.http import write_error


def make_request(authorization: bytes | None = None, user: bytes | None = None, *more) -> FakeRequest:
    r = FakeRequest([b""])
    if authorization is not None:
        r.requestHeaders.addRawHeader(b"authorization", authorization)
    if user is not None:
        r.requestHeaders.addRawHeader(b"x-user-id", user)
    for name, value in more:
        r.requestHeaders.addRawHeader(name, value)
    return r


@implementer(IAuthenticator)
class FakeJWT:
    """Accepts ``Bearer jwt-<user>``, as a JWT authenticator would; a coroutine, to test both kinds."""

    async def _check(self, request):
        value = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if not value.startswith("Bearer jwt-"):
            return None
        if value == "Bearer jwt-bad":
            raise Unauthorized("bad signature", reason="invalid")
        return Principal(value[len("Bearer jwt-") :], frozenset({"tools:*"}))

    def authenticate(self, request):
        return self._check(request)


@implementer(IAuthenticator)
class Silent:
    """Never answers: the chain must give up after its timeout."""

    def __init__(self):
        self.pending = []

    def authenticate(self, request):
        d = Deferred()
        self.pending.append(d)
        return d


class World:
    def __init__(self, mode="tokens", store=None):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = store or MemoryStore()
        authenticators = [TokenAuthenticator(self.store, self.clock), FakeJWT()]
        self.chain = AuthenticationChain(authenticators, mode, self.clock)

    def token(self, user="alice", permissions=("tools:*", "register")) -> bytes:
        token, _ = success_result_of(create_token(self.store, user, list(permissions), None, self.clock))
        return b"Bearer " + token.encode()

    def authenticate(self, request):
        return success_result_of(self.chain.authenticate(request))


@pytest.fixture
def world():
    return World()


def refusal(world, request, kind=Unauthorized):
    return failure_result_of(world.chain.authenticate(request), kind).value


def test_no_credential_is_401_with_a_challenge_and_instructions(world):
    request = make_request()
    error = refusal(world, request)
    assert error.reason == "missing"
    assert "Authorization: Bearer" in error.message
    assert request.challenge == 'Bearer realm="mcproxy"'
    write_error(request, error)
    assert request.responseCode == 401
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [b'Bearer realm="mcproxy"']
    body = json.loads(b"".join(request.written))
    assert body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("value", [b"Bearer mcpx_nope", b"Bearer jwt-bad", b"Bearer", b"Bearer a b"])
def test_bad_credential_is_401_invalid_token(world, value):
    request = make_request(value)
    error = refusal(world, request)
    assert error.reason == "invalid"
    assert request.challenge == 'Bearer realm="mcproxy", error="invalid_token"'
    write_error(request, error)
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [
        b'Bearer realm="mcproxy", error="invalid_token"'
    ]


def test_unknown_scheme_counts_as_no_credential(world):
    request = make_request(b"Basic YWxpY2U6cHc=")
    assert refusal(world, request).reason == "missing"


def test_each_authenticator_gets_its_turn(world):
    assert world.authenticate(make_request(world.token("alice"))).user_id == "alice"
    jwt = world.authenticate(make_request(b"Bearer jwt-carol"))
    assert jwt == Principal("carol", frozenset({"tools:*"}))


def test_x_user_id_naming_oneself_is_fine(world):
    principal = world.authenticate(make_request(world.token("alice"), b"alice"))
    assert principal.user_id == "alice"


def test_x_user_id_naming_someone_else_is_forbidden(world):
    error = refusal(world, make_request(world.token("alice"), b"bob"), Forbidden)
    assert error.http_status == 403
    assert "impersonate" in error.message


@pytest.mark.parametrize("permission", ["impersonate", "admin"])
def test_impersonation(world, permission):
    bearer = world.token("ops", [permission, "metrics"])
    principal = world.authenticate(make_request(bearer, b"bob"))
    assert principal.user_id == "bob"
    assert principal.permissions == frozenset({permission, "metrics"})
    assert principal.token_id is not None
    assert world.authenticate(make_request(bearer)).user_id == "ops"


@pytest.mark.parametrize("value", [b"", b"a b", b"\xc3\xbc", b"x" * 129, b"bob/../x", b"bob\t"])
def test_malformed_x_user_id_is_400(world, value):
    error = refusal(world, make_request(world.token("ops", ["admin"]), value), BadRequest)
    assert error.http_status == 400


def test_duplicate_x_user_id_is_400(world):
    bearer = world.token("ops", ["admin"])
    request = make_request(bearer, b"bob", (b"x-user-id", b"bob"))
    assert refusal(world, request, BadRequest).http_status == 400


def test_mode_none_trusts_x_user_id():
    world = World(mode="none")
    local = world.authenticate(make_request())
    assert local == Principal("local", frozenset({"tools:*", "register"}))
    assert world.authenticate(make_request(None, b"bob@example.com")).user_id == "bob@example.com"
    refusal(world, make_request(None, b"not valid"), BadRequest)


def test_mode_none_still_checks_a_bearer_token():
    world = World(mode="none")
    request = make_request(b"Bearer mcpx_0000000000000000_" + b"a" * 43)
    assert refusal(world, request).reason == "invalid"
    assert 'error="invalid_token"' in request.challenge
    bearer = world.token("alice", ["tools:*"])
    assert world.authenticate(make_request(bearer)).permissions == frozenset({"tools:*"})
    refusal(world, make_request(bearer, b"bob"), Forbidden)


def test_a_silent_authenticator_times_out():
    clock = Clock()
    silent = Silent()
    chain = AuthenticationChain([silent], "tokens", clock, timeout=5)
    d = Deferred.fromCoroutine(chain.authenticate(make_request(b"Bearer x")))
    failures = []
    d.addErrback(failures.append)
    clock.advance(4.9)
    assert not failures
    clock.advance(0.2)
    assert failures and failures[0].check(MCProxyError)
    assert failures[0].value.code == "auth_timeout"
    assert silent.pending[0].called  # the pending check was cancelled, not left dangling


def test_plain_values_are_accepted_from_authenticators():
    @implementer(IAuthenticator)
    class Plain:
        def authenticate(self, request):
            return Principal("p")

    @implementer(IAuthenticator)
    class Nothing:
        def authenticate(self, request):
            return succeed(None)

    chain = AuthenticationChain([Nothing(), Plain()], "tokens", Clock())
    assert success_result_of(chain.authenticate(make_request())).user_id == "p"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        AuthenticationChain([], "open", Clock())


_world = World()
_BEARER = _world.token("alice", ["tools:*"])
_ADMIN = _world.token("root", ["admin"])


@fuzz_settings(300)
@given(
    st.one_of(st.none(), st.binary(max_size=100), st.sampled_from([_BEARER, _ADMIN])),
    st.one_of(st.none(), st.binary(max_size=40), st.sampled_from([b"alice", b"root", b"bob"])),
    st.sampled_from(["tokens", "none"]),
)
def test_arbitrary_headers_give_a_principal_or_a_json_error(authorization, user, mode):
    world = World(mode, _world.store)
    request = make_request(authorization, user)
    principal = outcome_of(world.chain.authenticate(request), Unauthorized, Forbidden, BadRequest)
    if isinstance(principal, MCProxyError):
        assert principal.to_json()["error"]["message"]
        if isinstance(principal, Unauthorized):
            assert request.challenge.startswith('Bearer realm="mcproxy"')
        return
    assert isinstance(principal, Principal)
    if user is not None:  # as the request holds it (twisted.web strips line breaks from values)
        assert principal.user_id == request.requestHeaders.getRawHeaders(b"x-user-id")[0].decode("latin-1")
