"""Rotating an API token through the admin API of a running daemon."""

import pytest_twisted


def _id(token: str) -> str:
    return token.split("_")[1]


@pytest_twisted.ensureDeferred
async def test_the_owner_rotates_with_a_grace_period(proxy, reactor):
    old = await proxy.token_for("alice", "tools:*", "register")
    code, body, _ = await proxy.api("POST", f"/api/tokens/{_id(old)}/rotate", {"graceSeconds": 1}, token=old)
    assert code == 201, body
    new = body["token"]
    assert body["replaces"] == _id(old) and body["userId"] == "alice"
    assert body["permissions"] == ["tools:*", "register"] and body["previousValidUntil"].endswith("Z")
    for token in (old, new):  # both work during the grace period
        code, _, _ = await proxy.api("GET", "/api/users/alice/status", token=token)
        assert code in (200, 404)
    from mcproxy.testing.tool_calls import sleep

    await sleep(reactor, 1.2)
    code, body, _headers = await proxy.api("GET", "/api/users/alice/status", token=old)
    assert code == 401 and body["error"]["code"] == "unauthorized"
    code, _, _ = await proxy.api("GET", "/api/users/alice/status", token=new)
    assert code in (200, 404)
    # A revoked token cannot be rotated back to life.
    code, body, _ = await proxy.api("POST", f"/api/tokens/{_id(old)}/rotate", token=proxy.admin_token)
    assert code == 409 and body["error"]["code"] == "token_revoked"


@pytest_twisted.ensureDeferred
async def test_rotation_is_refused_to_others_and_for_bad_input(proxy):
    alice = await proxy.token_for("alice")
    bob = await proxy.token_for("bob")
    code, body, _ = await proxy.api("POST", f"/api/tokens/{_id(alice)}/rotate", token=bob)
    assert code == 404 and body["error"]["code"] == "not_found"
    code, body, _ = await proxy.api("POST", "/api/tokens/0123456789abcdef/rotate")
    assert code == 404
    for grace in (-1, "10", True, 10**9):
        code, body, _ = await proxy.api(
            "POST", f"/api/tokens/{_id(alice)}/rotate", {"graceSeconds": grace}, token=alice
        )
        assert code == 400 and "graceSeconds" in body["error"]["message"], grace
    # Without a body the default grace applies; an admin may rotate anyone's token.
    code, body, _ = await proxy.api("POST", f"/api/tokens/{_id(bob)}/rotate")
    assert code == 201 and body["userId"] == "bob"
