"""The forwarding envelope: what it carries, and every way a wrong one is refused."""

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mcproxy.auth.principal import Principal
from mcproxy.cluster.envelope import DuplicateForward, Envelope, ForgedForward, Forwarded, new_nonce
from mcproxy.errors import ServerFull, Unauthorized
from mcproxy.testing.fuzz import fuzz_settings

SECRET = b"s" * 32
NOW = 1767225600.123
ALICE = Principal("alice", frozenset({"tools:*", "register", "!tools:click"}), token_id="tok_8d2", impersonator="root")
REQUEST = {"method": b"POST", "path": b"/mcp?x=1&y=%20", "body": b'{"jsonrpc":"2.0","id":1,"method":"ping"}'}


def nodes(clock=None, **options):
    """An edge (n2) and an owner (n1) sharing SECRET and a clock at NOW."""
    if clock is None:
        clock = Clock()
        clock.advance(NOW)
    return Envelope(SECRET, "n2", clock, **options), Envelope(SECRET, "n1", clock, **options), clock


def sealed(edge, *, to="n1", principal=ALICE, nonce=None, **request):
    request = {**REQUEST, **request}
    return edge.seal(to=to, principal=principal, client="203.0.113.7", rid="7f3a", nonce=nonce, **request)


def fields_of(value: bytes) -> dict:
    payload = value.split(b".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))


def encoded(fields: dict) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=")


def signed(payload: bytes, secret: bytes = SECRET) -> bytes:
    mac = base64.urlsafe_b64encode(hmac.digest(secret, payload, "sha256")).rstrip(b"=")
    return b"v1." + payload + b"." + mac


def resigned(value: bytes, **changes) -> bytes:
    """``value`` with fields changed and a valid MAC: what only a holder of the secret makes."""
    return signed(encoded({**fields_of(value), **changes}))


def tampered(value: bytes, **changes) -> bytes:
    """``value`` with fields changed and its old MAC kept."""
    return b"v1." + encoded({**fields_of(value), **changes}) + b"." + value.split(b".")[2]


def refused(owner, value: bytes, **request) -> ForgedForward:
    with pytest.raises(ForgedForward) as caught:
        owner.open(value, **{**REQUEST, **request})
    error = caught.value
    assert (error.http_status, error.reason, error.message) == (401, "forged_forward", "invalid forwarding envelope")
    return error


def test_round_trip_carries_the_principal_and_origin_exactly():
    edge, owner, _ = nodes()
    value = sealed(edge, nonce="Qm9vQm9vQm9vQm9vQm9vQg")
    assert value.startswith(b"v1.") and value.count(b".") == 2
    fields = fields_of(value)
    assert fields["ts"] == 1767225600123 and fields["hop"] == 1 and fields["from"] == "n2"
    assert fields["bh"] == hashlib.sha256(REQUEST["body"]).hexdigest()
    assert owner.open(value, **REQUEST) == Forwarded(
        principal=ALICE, client="203.0.113.7", rid="7f3a", origin="n2", nonce="Qm9vQm9vQm9vQm9vQm9vQg"
    )


def test_minimal_principal_round_trips():
    edge, owner, _ = nodes()
    bob = Principal("bob")
    value = edge.seal(to="n1", principal=bob, client=None, rid="r", method=b"GET", path=b"/sse", body=b"")
    forwarded = owner.open(value, method=b"GET", path=b"/sse", body=b"")
    assert forwarded.principal == bob and forwarded.client is None and not forwarded.claim


def test_claim_travels():
    edge, owner, _ = nodes()
    value = edge.seal(to="n1", principal=ALICE, client=None, rid="r", claim=True, **REQUEST)
    assert owner.open(value, **REQUEST).claim


def test_each_nonce_is_new():
    edge, _, _ = nodes()
    assert fields_of(sealed(edge))["nonce"] != fields_of(sealed(edge))["nonce"]
    assert len(base64.urlsafe_b64decode(new_nonce() + "==")) == 16


@pytest.mark.parametrize(
    "request_change",
    [
        {"body": REQUEST["body"] + b" "},
        {"body": b""},
        {"path": b"/mcp?x=1&y=%21"},
        {"path": b"/mcp"},
        {"method": b"GET"},
    ],
)
def test_a_different_request_is_refused(request_change):
    edge, owner, _ = nodes()
    refused(owner, sealed(edge), **request_change)


@pytest.mark.parametrize(
    "change",
    [{"user": "mallory"}, {"perms": ["admin"]}, {"imp": None}, {"to": "n3"}, {"hop": 2}, {"ts": 1}, {"claim": True}],
)
def test_a_changed_field_breaks_the_mac(change):
    edge, owner, _ = nodes()
    assert refused(owner, tampered(sealed(edge), **change)).detail == "bad MAC"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"to": "n3"}, "addressed to another node"),
        ({"hop": 2}, "forwarded more than once"),
        ({"hop": True}, "hop is missing or not a int"),
        ({"v": 2}, "unknown version"),
        ({"user": ""}, "no user"),
        ({"perms": ["ok", 1]}, "permissions are not strings"),
        ({"tok": 5}, "tok is not a string"),
        ({"nonce": None}, "nonce is missing or not a str"),
    ],
)
def test_a_signed_but_wrong_envelope_is_refused(change, detail):
    """Checks past the MAC: an envelope a node with the secret made for something else."""
    edge, owner, _ = nodes()
    assert refused(owner, resigned(sealed(edge), **change)).detail == detail


def test_the_envelope_is_for_one_node_only():
    edge, _, clock = nodes()
    n3 = Envelope(SECRET, "n3", clock)
    refused(n3, sealed(edge, to="n1"))


@pytest.mark.parametrize("offset", [-30.5, 30.5, -3600.0, 3600.0])
def test_a_stale_or_future_timestamp_is_refused(offset):
    edge_clock, owner_clock = Clock(), Clock()
    edge_clock.advance(NOW + offset)
    owner_clock.advance(NOW)
    edge = Envelope(SECRET, "n2", edge_clock)
    owner = Envelope(SECRET, "n1", owner_clock)
    assert refused(owner, sealed(edge)).detail == "timestamp outside the allowed skew"


@pytest.mark.parametrize("offset", [-29.9, 29.9])
def test_a_timestamp_within_the_skew_is_accepted(offset):
    edge_clock, owner_clock = Clock(), Clock()
    edge_clock.advance(NOW + offset)
    owner_clock.advance(NOW)
    owner = Envelope(SECRET, "n1", owner_clock)
    assert owner.open(sealed(Envelope(SECRET, "n2", edge_clock)), **REQUEST).principal == ALICE


def test_a_wrong_secret_or_mac_is_refused():
    edge, owner, clock = nodes()
    stranger = Envelope(b"t" * 32, "n2", clock)
    assert refused(owner, sealed(stranger)).detail == "bad MAC"
    value = sealed(edge)
    head, mac = value.rsplit(b".", 1)
    flipped = bytes([mac[0] ^ 1]) + mac[1:]
    assert refused(owner, head + b"." + flipped).detail == "bad MAC"
    assert refused(owner, head + b"." + mac + b"=").detail == "bad MAC"


@pytest.mark.parametrize(
    "value",
    [b"", b"v1", b"v1..", b"v2.e30.x", b"v1.e30", b"v1.e30.x.y", b"garbage", b"v1.\xff\xfe.\x00"],
)
def test_a_malformed_value_is_refused(value):
    _, owner, _ = nodes()
    refused(owner, value)


@pytest.mark.parametrize("payload", [b"!!!!", b"bm90IGpzb24", encoded([1, 2]), encoded("x"), b"e30"])  # type: ignore[list-item]
def test_signed_garbage_is_refused(payload):
    _, owner, _ = nodes()
    refused(owner, signed(payload))


def test_a_replayed_nonce_is_a_duplicate():
    edge, owner, _ = nodes()
    value = sealed(edge)
    owner.open(value, **REQUEST)
    with pytest.raises(DuplicateForward) as caught:
        owner.open(value, **REQUEST)
    assert (caught.value.http_status, caught.value.code) == (409, "duplicate")
    assert isinstance(caught.value, Unauthorized)
    # A retry seals afresh with the first attempt's nonce: the owner knows it started.
    with pytest.raises(DuplicateForward):
        owner.open(sealed(edge, nonce=fields_of(value)["nonce"]), **REQUEST)


def test_a_refused_envelope_does_not_spend_its_nonce():
    edge, owner, _ = nodes()
    value = sealed(edge)
    refused(owner, value, path=b"/other")
    assert owner.remembered == 0
    owner.open(value, **REQUEST)


def test_nonces_expire_after_their_ttl():
    edge, owner, clock = nodes()
    for _ in range(3):
        owner.open(sealed(edge), **REQUEST)
    clock.advance(60)
    owner.open(sealed(edge), **REQUEST)
    assert owner.remembered == 4
    clock.advance(60)  # the first three are 120 s old
    owner.open(sealed(edge), **REQUEST)
    assert owner.remembered == 2
    clock.advance(120)
    owner.open(sealed(edge), **REQUEST)
    assert owner.remembered == 1


def test_the_nonce_cache_is_bounded_without_opening_a_replay_window():
    edge, owner, clock = nodes(max_nonces=2)
    first = sealed(edge)
    owner.open(first, **REQUEST)
    clock.advance(10)
    owner.open(sealed(edge), **REQUEST)
    clock.advance(10)
    third = sealed(edge)
    # Forgetting the first nonce now would let its still fresh envelope run again.
    with pytest.raises(ServerFull):
        owner.open(third, **REQUEST)
    with pytest.raises(DuplicateForward):
        owner.open(first, **REQUEST)
    clock.advance(40.5)  # 60.5 s after the first: no envelope of that time is fresh any more
    owner.open(sealed(edge), **REQUEST)
    assert owner.remembered == 2
    refused(owner, first)  # stale now, although its nonce is forgotten


def test_the_ttl_must_cover_the_freshness_window():
    with pytest.raises(ValueError):
        Envelope(SECRET, "n1", Clock(), skew=30, nonce_ttl=59)


def test_the_secret_never_shows():
    edge, owner, _ = nodes()
    assert SECRET.decode() not in repr(edge)
    error = refused(owner, b"v1.e30.x")
    assert SECRET.decode() not in f"{error} {error.detail} {error.to_json()}"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_names = st.sampled_from(
    [
        "v",
        "from",
        "to",
        "ts",
        "nonce",
        "rid",
        "hop",
        "user",
        "tok",
        "perms",
        "imp",
        "client",
        "m",
        "path",
        "bh",
        "claim",
    ]
)


@fuzz_settings(300)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_garbage_values_are_only_ever_unauthorized(value):
    _, owner, _ = nodes()
    with pytest.raises(Unauthorized):
        owner.open(value, **REQUEST)
    with pytest.raises(Unauthorized):
        owner.open(b"v1." + value, **REQUEST)


@fuzz_settings(300)
@given(st.dictionaries(_names, _json, max_size=6), st.booleans(), st.binary(max_size=40))
def test_fuzz_signed_payloads_open_or_raise_unauthorized(changes, start_from_good, raw):
    """Even a payload signed with the secret can only be accepted whole or refused."""
    edge, owner, _ = nodes()
    good = fields_of(sealed(edge))
    for payload in (encoded({**good, **changes} if start_from_good else changes), _b64(raw)):
        try:
            forwarded = owner.open(signed(payload), **REQUEST)
        except Unauthorized as e:
            assert e.reason in ("forged_forward", "duplicate_forward") and e.message
        else:
            assert isinstance(forwarded.principal, Principal) and forwarded.principal.user_id


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")
