"""``mcproxy-admin`` as users run it: a subprocess on a SQLite store in a temporary directory."""

import os
import re
import subprocess
import sys

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.web.test.requesthelper import DummyRequest

from mcproxy.auth.tokens import TokenAuthenticator
from mcproxy.storage import open_store

ADMIN = os.path.join(os.path.dirname(sys.executable), "mcproxy-admin")
TOKEN_LINE = re.compile(r"^mcpx_([0-9a-f]{16})_[A-Za-z0-9_-]{43}\n$")


async def admin(tmp_path, *args, store_url=None):
    """Run mcproxy-admin off the reactor thread; (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPROXY_")}
    if store_url is not None:
        env["MCPROXY_STORE_URL"] = store_url
    done = await deferToThread(
        subprocess.run, [ADMIN, *args], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def principal_for(store, reactor, token):
    request = DummyRequest([b""])
    request.requestHeaders.addRawHeader(b"authorization", b"Bearer " + token.encode())
    return TokenAuthenticator(store, reactor).authenticate(request)


@pytest_twisted.ensureDeferred
async def test_create_list_revoke_with_a_config_file(tmp_path, reactor):
    db = tmp_path / "state" / "store.sqlite3"
    config = tmp_path / "mcproxy.toml"
    config.write_text(f'[store]\nurl = "sqlite:{db}"\n')

    # fmt: off
    code, out, err = await admin(tmp_path, "--config", str(config), "tokens", "create", "--user", "alice",
                                 "--permission", "tools:navigate_page", "-p", "register", "--ttl", "3600")
    # fmt: on
    assert (code, err) == (0, "")
    match = TOKEN_LINE.match(out)
    assert match, out
    token, token_id = out.strip(), match.group(1)

    code, out, err = await admin(tmp_path, "--config", str(config), "tokens", "create", "--user", "bob")
    assert code == 0
    bob_token = out.strip()

    code, listing, err = await admin(tmp_path, "--config", str(config), "tokens", "list")
    assert code == 0
    lines = listing.splitlines()
    assert lines[0].split() == ["ID", "USER", "PERMISSIONS", "EXPIRES", "REVOKED", "LAST", "USED"]
    alice_row = next(line for line in lines if line.startswith(token_id)).split()
    assert alice_row[1:3] == ["alice", "tools:navigate_page,register"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", alice_row[3])
    assert alice_row[4:] == ["no", "never"]
    bob_row = next(line for line in lines if line.startswith(bob_token[5:21])).split()
    assert bob_row[1:] == ["bob", "tools:*,register", "never", "no", "never"]
    assert token.split("_", 2)[2] not in listing and bob_token.split("_", 2)[2] not in listing

    store = await open_store(f"sqlite:{db}", reactor)
    try:
        principal = await principal_for(store, reactor, token)
        assert principal.user_id == "alice"
        assert principal.permissions == frozenset({"tools:navigate_page", "register"})

        code, out, err = await admin(tmp_path, "--config", str(config), "tokens", "revoke", token_id)
        assert code == 0 and token_id in out
        assert (await store.get_token(token_id)).revoked_at is not None
    finally:
        await store.close()

    code, listing, _ = await admin(tmp_path, "--config", str(config), "tokens", "list")
    alice_row = next(line for line in listing.splitlines() if line.startswith(token_id)).split()
    assert alice_row[4] != "no"


@pytest_twisted.ensureDeferred
async def test_works_while_the_daemon_holds_the_store(tmp_path, reactor):
    url = f"sqlite:{tmp_path / 'var' / 'mcproxy.sqlite3'}"
    daemon_store = await open_store(url, reactor)
    try:
        code, out, err = await admin(tmp_path, "tokens", "create", "--user", "carol", "-p", "admin", store_url=url)
        assert code == 0, err
        principal = await principal_for(daemon_store, reactor, out.strip())
        assert principal.user_id == "carol" and principal.is_admin
        code, listing, _ = await admin(tmp_path, "tokens", "list", "--user", "carol", store_url=url)
        assert code == 0 and "carol" in listing and len(listing.splitlines()) == 2
        assert principal.token_id in listing
    finally:
        await daemon_store.close()


@pytest_twisted.ensureDeferred
async def test_embedded_default_store_is_used_without_configuration(tmp_path):
    code, out, err = await admin(tmp_path, "tokens", "create", "--user", "dave")
    assert code == 0 and TOKEN_LINE.match(out), err
    assert (tmp_path / "var" / "mcproxy.sqlite3").exists()


@pytest_twisted.ensureDeferred
async def test_errors_go_to_stderr_with_a_nonzero_exit(tmp_path):
    url = f"sqlite:{tmp_path / 'db.sqlite3'}"
    cases = [
        (["tokens", "create", "--user", "alice", "-p", "superuser"], "unknown permission"),
        (["tokens", "create", "--user", "a b"], "invalid user id"),
        (["tokens", "create", "--user", "alice", "--ttl", "-1"], "ttl"),
        (["tokens", "create", "--user", "alice", "--ttl", "soon"], "ttl"),
        (["tokens", "create"], "--user"),
        (["tokens", "revoke", "0123456789abcdef"], "no token with id 0123456789abcdef"),
        (["tokens", "revoke", "not-an-id"], "not a token id"),
        (["tokens", "frobnicate"], "frobnicate"),
        (["tokens"], "tokens create"),
        ([], "command"),
        (["--config", str(tmp_path / "missing.toml"), "tokens", "list"], "missing.toml"),
    ]
    runs = [Deferred.fromCoroutine(admin(tmp_path, *args, store_url=url)) for args, _ in cases]
    results = await gatherResults(runs)
    for (args, message), (code, out, err) in zip(cases, results, strict=True):
        assert code != 0, args
        assert out == "", args
        assert message in err, (args, err)


@pytest_twisted.ensureDeferred
async def test_bad_store_url_is_reported(tmp_path):
    code, out, err = await admin(tmp_path, "tokens", "list", store_url="postgres://db/x")
    assert code == 1 and out == ""
    assert "store.url" in err
