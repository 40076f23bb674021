"""API tokens: format, hashing, permissions, the authenticator, and the first-start admin token."""

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.test.requesthelper import DummyRequest

from mcproxy.auth.bootstrap import ensure_admin_token
from mcproxy.auth.principal import Principal
from mcproxy.auth.tokens import (
    TokenAuthenticator,
    bearer_credential,
    check_permissions,
    create_token,
    hash_token,
    mint_child_token,
    parse_token,
)
from mcproxy.errors import BadRequest, Unauthorized
from mcproxy.storage.memory import MemoryStore
from mcproxy.testing.deferreds import failure_result_of, outcome_of, success_result_of
from mcproxy.testing.fuzz import fuzz_settings

TOKEN_SHAPE = re.compile(r"^mcpx_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")


def request(*authorization: bytes) -> DummyRequest:
    r = DummyRequest([b""])
    for value in authorization:
        r.requestHeaders.addRawHeader(b"authorization", value)
    return r


class CountingStore(MemoryStore):
    """A memory store that counts last-use writes (and can be told to fail them)."""

    def __init__(self):
        super().__init__()
        self.touches = 0
        self.fail_touch = False

    def touch_token(self, token_id, when):
        self.touches += 1
        if self.fail_touch:
            return fail(OSError("disk full"))
        return super().touch_token(token_id, when)


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_800_000_000)
    return c


@pytest.fixture
def store():
    return CountingStore()


def test_token_format_and_only_the_hash_is_stored(store, clock):
    token, record = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    assert TOKEN_SHAPE.match(token)
    assert parse_token(token) == record.token_id == token.split("_")[1]
    assert record.secret_hash == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    stored = success_result_of(store.get_token(record.token_id))
    assert stored == record
    assert token not in repr(stored) and token.split("_", 2)[2] not in repr(stored)
    assert stored.user_id == "alice" and stored.permissions == ("tools:*",)
    assert stored.created_at == clock.seconds() and stored.expires_at is None


def test_tokens_are_unique(store, clock):
    tokens = {success_result_of(create_token(store, "alice", [], None, clock))[0] for _ in range(50)}
    assert len(tokens) == 50
    assert len(success_result_of(store.list_tokens("alice"))) == 50


def test_ttl_sets_the_expiry(store, clock):
    _, record = success_result_of(create_token(store, "alice", [], 3600, clock))
    assert record.expires_at == clock.seconds() + 3600


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), float("inf"), "60"])
def test_bad_ttl_is_refused(store, clock, ttl):
    failure_result_of(create_token(store, "alice", [], ttl, clock), BadRequest)
    assert success_result_of(store.list_tokens()) == []


@pytest.mark.parametrize("user_id", ["", "a b", "ü", "x" * 129, "alice\n", None])
def test_bad_user_id_is_refused(store, clock, user_id):
    failure_result_of(create_token(store, user_id, [], None, clock), BadRequest)


@pytest.mark.parametrize(
    "permission",
    [
        "tools",
        "tools:",
        "tools:category:",
        "Admin",
        "admin ",
        "tools:a b",
        "superuser",
        "",
        "!admin",
        "!!tools:x",
        "net:banana",
        "net:",
        7,
    ],
)
def test_unknown_permissions_are_refused(store, clock, permission):
    refused = failure_result_of(create_token(store, "alice", ["register", permission], None, clock), BadRequest)
    assert "permission" in refused.value.message
    assert success_result_of(store.list_tokens()) == []


def test_known_permissions_are_kept_in_order_without_duplicates():
    given_permissions = [
        "tools:*",
        "tools:take_snapshot",
        "tools:category:navigation",
        "tools:take_*",
        "!tools:evaluate_script",
        "!tools:category:emulation",
        "net:10.0.0.0/8",
        "net:2001:db8::/32",
        "register",
        "admin",
        "impersonate",
        "metrics",
        "register",
    ]
    assert check_permissions(given_permissions) == tuple(given_permissions[:-1])
    with pytest.raises(BadRequest):
        check_permissions("tools:*")


def authenticate(authenticator, req):
    return success_result_of(authenticator.authenticate(req))


def test_a_valid_token_authenticates(store, clock):
    token, record = success_result_of(create_token(store, "alice", ["tools:*", "register"], 60, clock))
    principal = authenticate(TokenAuthenticator(store, clock), request(b"Bearer " + token.encode()))
    assert principal == Principal("alice", frozenset({"tools:*", "register"}), record.token_id)
    lower = authenticate(TokenAuthenticator(store, clock), request(b"bearer   " + token.encode() + b" "))
    assert lower.user_id == "alice"


@pytest.mark.parametrize(
    "headers",
    [(), (b"Basic YWxpY2U6cHc=",), (b"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",), (b"Digest x",)],
)
def test_other_credentials_are_left_to_other_authenticators(store, clock, headers):
    assert authenticate(TokenAuthenticator(store, clock), request(*headers)) is None


def _refusal(store, clock, req) -> Unauthorized:
    return failure_result_of(TokenAuthenticator(store, clock).authenticate(req), Unauthorized).value


def test_malformed_unknown_and_wrong_tokens_are_invalid(store, clock):
    token, _record = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    wrong_secret = token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")
    unknown_id = "mcpx_" + "0" * 16 + token[21:]
    for value in (b"mcpx_", b"mcpx_zz_yy", token.encode() + b"x", wrong_secret.encode(), unknown_id.encode()):
        refusal = _refusal(store, clock, request(b"Bearer " + value))
        assert refusal.reason == "invalid"
        assert token not in refusal.message
    assert _refusal(store, clock, request(b"Bearer")).reason == "invalid"
    assert _refusal(store, clock, request(b"Bearer \xff\xfe")).reason == "invalid"


def test_duplicate_authorization_headers_are_refused(store, clock):
    token, _ = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    bearer = b"Bearer " + token.encode()
    assert _refusal(store, clock, request(bearer, bearer)).reason == "invalid"
    with pytest.raises(Unauthorized):
        bearer_credential(request(b"Basic x", bearer))


def test_expired_token(store, clock):
    token, _ = success_result_of(create_token(store, "alice", ["tools:*"], 60, clock))
    req = request(b"Bearer " + token.encode())
    clock.advance(59)
    assert authenticate(TokenAuthenticator(store, clock), req).user_id == "alice"
    clock.advance(1)
    refusal = _refusal(store, clock, req)
    assert refusal.reason == "expired" and refusal.http_status == 401


def test_revoked_token_and_grace_period(store, clock):
    token, record = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    req = request(b"Bearer " + token.encode())
    success_result_of(store.revoke_token(record.token_id, clock.seconds() + 30))
    assert authenticate(TokenAuthenticator(store, clock), req).user_id == "alice"
    clock.advance(30)
    assert _refusal(store, clock, req).reason == "revoked"


def test_last_use_is_written_at_most_once_a_minute(store, clock):
    token, record = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    authenticator = TokenAuthenticator(store, clock)
    req = request(b"Bearer " + token.encode())
    authenticate(authenticator, req)
    assert store.touches == 1
    assert success_result_of(store.get_token(record.token_id)).last_used_at == clock.seconds()
    for _ in range(20):
        clock.advance(2.5)
        authenticate(authenticator, req)
    assert store.touches == 1
    clock.advance(10.1)
    authenticate(authenticator, req)
    assert store.touches == 2
    # Another process (a fresh authenticator) sees the stored time and does not write either.
    clock.advance(1)
    authenticate(TokenAuthenticator(store, clock), req)
    assert store.touches == 2


def test_a_failing_last_use_write_does_not_fail_the_request(store, clock):
    token, _ = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    store.fail_touch = True
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        principal = authenticate(TokenAuthenticator(store, clock), request(b"Bearer " + token.encode()))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert principal.user_id == "alice"
    assert any("Could not record the use" in formatEvent(e) for e in logged)
    assert not any(token in formatEvent(e) for e in logged)


_stored = CountingStore()
_clock = Clock()
_TOKEN, _ = success_result_of(create_token(_stored, "alice", ["tools:*"], None, _clock))


@fuzz_settings(400)
@given(st.lists(st.binary(max_size=120), max_size=3))
def test_arbitrary_authorization_headers_never_raise_anything_else(values):
    _check_outcome(request(*values))


@fuzz_settings(400)
@given(st.text(max_size=80), st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Bearer\t"]))
def test_arbitrary_bearer_values_never_raise_anything_else(tail, scheme):
    for value in (tail, "mcpx_" + tail, _TOKEN[:21] + tail, _TOKEN + tail):
        _check_outcome(request((scheme + value).encode("utf-8")))


def _check_outcome(req):
    principal = outcome_of(TokenAuthenticator(_stored, _clock).authenticate(req), Unauthorized)
    if isinstance(principal, Unauthorized):
        assert principal.reason == "invalid"
        return
    assert principal is None or principal.user_id == "alice"


# -- first-start admin token ---------------------------------------------------


def test_first_start_creates_an_admin_token_file(store, clock, tmp_path):
    data_dir = tmp_path / "var" / "data"
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        path = success_result_of(ensure_admin_token(store, str(data_dir), clock))
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert path == os.path.join(str(data_dir), "admin-token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    token = Path(path).read_text().strip()
    assert TOKEN_SHAPE.match(token)
    assert os.listdir(data_dir) == ["admin-token"]
    principal = authenticate(TokenAuthenticator(store, clock), request(b"Bearer " + token.encode()))
    assert principal.user_id == "admin" and principal.is_admin
    messages = [formatEvent(e) for e in logged]
    assert any(os.path.abspath(path) in m for m in messages)
    assert not any(token in m or token[22:] in m for m in messages)
    # An admin token exists now: nothing to do on the next start.
    assert success_result_of(ensure_admin_token(store, str(data_dir), clock)) is None
    assert Path(path).read_text().strip() == token


def test_an_expired_or_revoked_admin_token_does_not_count(store, clock, tmp_path):
    _, _expiring = success_result_of(create_token(store, "root", ["admin"], 10, clock))
    _, revoked = success_result_of(create_token(store, "root2", ["admin", "metrics"], None, clock))
    success_result_of(create_token(store, "alice", ["tools:*", "impersonate"], None, clock))
    success_result_of(store.revoke_token(revoked.token_id, clock.seconds()))
    assert success_result_of(ensure_admin_token(store, str(tmp_path), clock)) is None
    clock.advance(10)
    path = success_result_of(ensure_admin_token(store, str(tmp_path), clock))
    assert path is not None
    admins = list(success_result_of(store.list_tokens("admin")))
    assert len(admins) == 1 and admins[0].permissions == ("admin",)


def test_an_unwritable_data_dir_leaves_no_usable_token_behind(store, clock, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    failure_result_of(ensure_admin_token(store, str(blocker / "var"), clock), OSError)
    (token,) = success_result_of(store.list_tokens())
    assert not token.is_valid_at(clock.seconds())
    assert success_result_of(ensure_admin_token(store, str(tmp_path / "var"), clock)) is not None


def test_provides_the_interface(store, clock):
    from zope.interface.verify import verifyObject

    from mcproxy.interfaces import IAuthenticator

    assert verifyObject(IAuthenticator, TokenAuthenticator(store, clock))


def test_records_are_cached_briefly_and_revocation_still_lands(store, clock):
    token, record = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    lookups = []
    original = store.get_token

    def counting_get_token(token_id):
        lookups.append(token_id)
        return original(token_id)

    store.get_token = counting_get_token
    authenticator = TokenAuthenticator(store, clock, cache_seconds=2.0)
    req = request(b"Bearer " + token.encode())
    for _ in range(5):
        assert authenticate(authenticator, req).user_id == "alice"
    assert lookups == [record.token_id]
    # A wrong secret for a cached id is still refused: the cache holds records, not verdicts.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    failure_result_of(authenticator.authenticate(request(b"Bearer " + forged.encode())), Unauthorized)
    success_result_of(store.revoke_token(record.token_id, clock.seconds()))
    clock.advance(2.0)
    refused = failure_result_of(authenticator.authenticate(req), Unauthorized)
    assert refused.value.reason == "revoked"
    assert len(lookups) == 2


def test_verdicts_are_cached_briefly_and_forget_ends_them_at_once(store, clock, monkeypatch):
    import mcproxy.auth.tokens as tokens_module

    _parent_token, parent = success_result_of(create_token(store, "alice", ["tools:*"], None, clock))
    child_token, child = success_result_of(mint_child_token(store, parent, "alice", [], 60, clock))
    hashes = []
    monkeypatch.setattr(tokens_module, "hash_token", lambda token: hashes.append(token) or hash_token(token))
    authenticator = TokenAuthenticator(store, clock, cache_seconds=2.0)
    req = request(b"Bearer " + child_token.encode())
    for _ in range(5):
        assert authenticate(authenticator, req).token_id == child.token_id
    assert hashes == [child_token]  # checked once, then answered from memory
    # Revoking the parent in this process ends the child's cached verdict too, at once.
    success_result_of(store.revoke_token(parent.token_id, clock.seconds()))
    authenticator.forget(parent.token_id)
    assert failure_result_of(authenticator.authenticate(req), Unauthorized).value.reason == "revoked"


def test_a_cached_verdict_ends_with_the_token(store, clock):
    token, _ = success_result_of(create_token(store, "alice", ["tools:*"], 1.0, clock))
    authenticator = TokenAuthenticator(store, clock, cache_seconds=2.0)
    req = request(b"Bearer " + token.encode())
    assert authenticate(authenticator, req).user_id == "alice"
    clock.advance(1.0)
    assert failure_result_of(authenticator.authenticate(req), Unauthorized).value.reason == "expired"
