"""JWT bearer tokens: the algorithm allow-list, key/algorithm pairing, claims, and the bad inputs of issue 4.

Keys are generated here with ``cryptography``; the JWKS is served in memory by
``treq.testing.StubTreq`` (the real-server behaviour of the cache is in test_jwks.py).
"""

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from mcproxy.auth.chain import AuthenticationChain
from mcproxy.auth.jwks import JWKSCache
from mcproxy.auth.jwt import (
    JWTAuthenticator,
    audiences_for,
    known_permissions,
    looks_like_jwt,
)
from mcproxy.auth.principal import Principal
from mcproxy.auth.tokens import TokenAuthenticator
from mcproxy.errors import Unauthorized
from mcproxy.storage.memory import MemoryStore
from mcproxy.testing.deferreds import failure_result_of, outcome_of, success_result_of
from mcproxy.testing.fuzz import fuzz_settings
from mcproxy.testing.requests import FakeRequest
from mcproxy.web.http import write_error

NOW = 1_800_000_000
SECRET = "s3cret-" * 11  # 66 bytes: long enough for HS512
AUDIENCE = "https://mcproxy.example.com"
ISSUER = "https://idp.example.com/"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def jwk(algorithm, key, kid):
    data = json.loads(algorithm.to_jwk(key.public_key()))
    data["kid"] = kid
    return data


JWKS = {
    "keys": [
        jwk(RSAAlgorithm, RSA_KEY, "rsa-1"),
        jwk(ECAlgorithm, EC_KEY, "ec-1"),
        jwk(OKPAlgorithm, ED_KEY, "ed-1"),
        {"kty": "oct", "kid": "oct-1", "k": base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("=")},
    ]
}


class JWKSDocument(Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.fetches = 0

    def render_GET(self, request):
        self.fetches += 1
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(JWKS).encode()


def claims(**changes):
    base = {
        "sub": "alice",
        "scope": "tools:* register openid",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hand_made(header: dict, payload: dict, sign=lambda signing_input: b"") -> str:
    """A compact JWS built by hand, for tokens pyjwt refuses to make."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def request_with(value: bytes | None) -> FakeRequest:
    request = FakeRequest([b""])
    if value is not None:
        request.requestHeaders.addRawHeader(b"authorization", value)
    return request


class World:
    def __init__(self, secret=SECRET, jwks=True, **options):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.document = JWKSDocument()
        cache = JWKSCache("https://idp.example.com/jwks", StubTreq(self.document), self.clock) if jwks else None
        options.setdefault("audiences", [AUDIENCE])
        options.setdefault("issuer", ISSUER)
        self.authenticator = JWTAuthenticator(self.clock, secret=secret, jwks=cache, **options)

    def checking(self, token: str | bytes):
        value = token if isinstance(token, bytes) else b"Bearer " + token.encode()
        return self.authenticator.authenticate(request_with(value))

    def authenticate(self, token: str | bytes):
        return success_result_of(self.checking(token))

    def refusal(self, token) -> str:
        return failure_result_of(self.checking(token), Unauthorized).value.reason


@pytest.fixture
def world():
    return World()


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_tokens_with_the_secret(world, algorithm):
    token = jwt.encode(claims(), SECRET, algorithm=algorithm)
    assert world.authenticate(token) == Principal("alice", frozenset({"tools:*", "register"}))


@pytest.mark.parametrize(
    "algorithm, key, kid",
    [("RS256", RSA_KEY, "rsa-1"), ("ES256", EC_KEY, "ec-1"), ("EdDSA", ED_KEY, "ed-1")],
)
def test_asymmetric_tokens_with_jwks_keys(world, algorithm, key, kid):
    token = jwt.encode(
        claims(sub="bob", scope="tools:category:navigation"), key, algorithm=algorithm, headers={"kid": kid}
    )
    principal = world.authenticate(token)
    assert principal.user_id == "bob"
    assert principal.permissions == frozenset({"tools:category:navigation"})
    assert principal.token_id is None  # a JWT is never mistaken for an API token id


def test_a_token_without_kid_is_tried_against_the_keys_of_its_algorithm(world):
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256")
    assert world.authenticate(token).user_id == "alice"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(world, alg):
    token = hand_made({"alg": alg, "typ": "JWT"}, claims())
    assert token.endswith(".")
    assert world.refusal(token) == "bad_algorithm"
    # With a signature part that is not empty, too.
    assert world.refusal(token + "c2ln") == "bad_algorithm"


@pytest.mark.parametrize("alg", ["RS384", "PS256", "ES384", "HS1", "", None, 7])
def test_algorithms_outside_the_allow_list_are_refused(world, alg):
    assert world.refusal(hand_made({"alg": alg}, claims(), lambda _: b"x" * 32)) == "bad_algorithm"


def test_wrong_signatures(world):
    assert world.refusal(jwt.encode(claims(), SECRET + "x", algorithm="HS256")) == "bad_signature"
    forged = jwt.encode(claims(), OTHER_RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
    assert world.refusal(forged) == "bad_signature"
    good = jwt.encode(claims(), SECRET, algorithm="HS256")
    head, _payload, signature = good.split(".")
    tampered_payload = b64url(json.dumps(claims(sub="mallory")).encode())
    assert world.refusal(f"{head}.{tampered_payload}.{signature}") == "bad_signature"


def _hs256_with_the_rsa_public_key(payload):
    return hand_made(
        {"alg": "HS256", "kid": "rsa-1"},
        payload,
        lambda signing_input: hmac.new(RSA_PUBLIC_PEM, signing_input, hashlib.sha256).digest(),
    )


def test_hs_rs_confusion_without_a_secret_is_an_algorithm_refusal():
    world = World(secret="")
    assert world.refusal(_hs256_with_the_rsa_public_key(claims())) == "bad_algorithm"
    assert world.authenticate(jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"}))


def test_hs_rs_confusion_with_a_secret_fails_the_signature(world):
    assert world.refusal(_hs256_with_the_rsa_public_key(claims())) == "bad_signature"


def test_jwks_oct_keys_are_never_hmac_secrets():
    world = World(secret="")
    token = jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "oct-1"})
    assert world.refusal(token) == "bad_algorithm"


def test_a_key_only_serves_its_own_algorithm(world):
    # An RS256 token naming the EC key's kid finds no RS256 key of that id.
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "ec-1"})
    assert world.refusal(token) == "unknown_kid"


def test_an_asymmetric_token_without_a_jwks_is_refused():
    world = World(jwks=False)
    assert world.refusal(jwt.encode(claims(), EC_KEY, algorithm="ES256")) == "bad_algorithm"


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"aud": "https://other.example.com"}, "bad_audience"),
        ({"aud": ["https://a.example.com", "https://b.example.com"]}, "bad_audience"),
        ({"aud": None}, "bad_audience"),
        ({"iss": "https://evil.example.com/"}, "bad_issuer"),
        ({"iss": None}, "bad_issuer"),
        ({"exp": NOW - 31}, "expired"),
        ({"exp": None}, "missing_claim"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"nbf": NOW + 31}, "not_yet_valid"),
        ({"iat": NOW + 3600}, "not_yet_valid"),
        ({"sub": None}, "bad_user"),
        ({"sub": "auth0|123"}, "bad_user"),
        ({"sub": 42}, "malformed"),
        ({"scope": {"tools": True}}, "malformed"),
    ],
)
def test_claims_are_checked(world, changes, reason):
    assert world.refusal(jwt.encode(claims(**changes), SECRET, algorithm="HS256")) == reason


def test_leeway_and_lists(world):
    assert world.authenticate(jwt.encode(claims(exp=NOW - 29, nbf=NOW + 29, iat=NOW + 29), SECRET))
    aud_list = claims(aud=["https://other.example.com", AUDIENCE])
    assert world.authenticate(jwt.encode(aud_list, SECRET)).user_id == "alice"
    world.clock.advance(400)
    assert world.refusal(jwt.encode(claims(), SECRET)) == "expired"


def test_claim_names_are_configurable():
    world = World(user_claim="email", permissions_claim="permissions", leeway=0)
    token = jwt.encode(claims(email="carol@example.com", permissions=["tools:take_snapshot", "admin", "x"]), SECRET)
    assert world.authenticate(token) == Principal("carol@example.com", frozenset({"tools:take_snapshot", "admin"}))
    assert world.refusal(jwt.encode(claims(exp=NOW), SECRET)) == "expired"


def test_without_an_audience_any_aud_is_accepted():
    world = World(audiences=[], issuer="")
    assert world.authenticate(jwt.encode(claims(aud="https://other.example.com", iss=None), SECRET))
    assert world.authenticate(jwt.encode(claims(aud=None), SECRET))


def test_other_credentials_are_left_alone(world):
    assert world.authenticate(b"Bearer mcpx_0123456789abcdef_" + b"a" * 43) is None
    assert world.authenticate(b"Basic YWxpY2U6cHc=") is None
    assert world.authenticate(b"Bearer opaque-token") is None
    assert success_result_of(world.authenticator.authenticate(request_with(None))) is None


@pytest.mark.parametrize("token", ["a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "x.eyJ9.y", "e30.e30.e30"])
def test_jwt_shaped_garbage_is_malformed_or_refused(world, token):
    assert world.refusal(token) in ("malformed", "bad_algorithm", "bad_signature")


def test_refusals_through_the_chain_carry_an_invalid_token_challenge():
    world = World()
    chain = AuthenticationChain(
        [TokenAuthenticator(MemoryStore(), world.clock), world.authenticator],
        "tokens",
        world.clock,
        resource_metadata=lambda request: "https://mcproxy.example.com/.well-known/oauth-protected-resource",
    )
    request = request_with(b"Bearer " + jwt.encode(claims(exp=NOW - 100), SECRET).encode())
    info = failure_result_of(chain.authenticate(request), Unauthorized)
    assert info.value.reason == "expired"
    write_error(request, info.value)
    assert request.responseCode == 401
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [
        (
            b'Bearer realm="mcproxy", resource_metadata="https://mcproxy.example.com/.well-known/'
            b'oauth-protected-resource", error="invalid_token"'
        )
    ]
    assert json.loads(b"".join(request.written))["error"]["message"].startswith("the JWT has expired")
    good = request_with(b"Bearer " + jwt.encode(claims(), SECRET).encode())
    assert success_result_of(chain.authenticate(good)).user_id == "alice"


def test_helpers():
    assert looks_like_jwt("a.b.") and looks_like_jwt("a-_.b.c") and not looks_like_jwt("a.b")
    assert not looks_like_jwt("mcpx_0123_abc") and not looks_like_jwt("a.b.c.d")
    assert known_permissions("openid tools:* profile") == frozenset({"tools:*"})
    assert known_permissions(None) == frozenset()
    assert audiences_for("api://mcproxy", "https://x") == ("api://mcproxy",)
    assert audiences_for("", "https://x/") == ("https://x", "https://x/")
    assert audiences_for("", "") == ()
    with pytest.raises(ValueError):
        JWTAuthenticator(Clock())


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_claim_names = st.sampled_from(["sub", "scope", "aud", "iss", "exp", "nbf", "iat", "jti", "email"])


@fuzz_settings(300)
@given(
    st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64"]), _json, max_size=3),
    st.dictionaries(_claim_names, _json, max_size=6),
    st.booleans(),
)
def test_fuzz_signed_headers_and_claims(header, payload, start_from_good):
    world = _FUZZ_WORLD
    if start_from_good:
        payload = {**claims(), **payload}
    header = {"alg": "HS256", **header}
    token = hand_made(
        header, payload, lambda signing_input: hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    )
    principal = outcome_of(world.checking(token), Unauthorized)
    if isinstance(principal, Unauthorized):
        assert principal.reason and principal.message
        return
    assert principal is None or isinstance(principal, Principal)


_FUZZ_WORLD = World()
