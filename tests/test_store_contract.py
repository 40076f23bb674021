"""One contract for every IStore: memory, sqlite and (real) Redis.

The Redis variant uses $MCPROXY_TEST_REDIS_URL (default redis://127.0.0.1:6379/15) and
fails, never skips, when that server is not there.
"""

import os
import socket

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from mcproxy.config import ConfigError
from mcproxy.interfaces import IStore
from mcproxy.storage import open_store
from mcproxy.storage.records import TokenRecord, UserRecord
from mcproxy.testing.stores import STORE_KINDS, discard_test_store, open_test_store, redis_test_url


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path, reactor):
    # A plain fixture with blockon: pytest-twisted's async fixtures that fail in setup
    # break the set-up of the tests after them, and only the Redis tests should fail
    # when Redis is down.
    opening = open_test_store(request.param, str(tmp_path), reactor)
    opened = pytest_twisted.blockon(Deferred.fromCoroutine(opening))
    yield opened
    pytest_twisted.blockon(Deferred.fromCoroutine(discard_test_store(opened)))


def user(user_id="alice", **changes):
    fields = {
        "user_id": user_id,
        "browser_url": "http://127.0.0.1:9222",
        "metadata": {"team": "web", "nested": {"n": [1, 2.5, None, "é"]}},
        "registered_at": 1700000000.25,
    }
    fields.update(changes)
    return UserRecord(**fields)


def token(token_id="0123456789abcdef", user_id="alice", **changes):
    fields = {
        "token_id": token_id,
        "user_id": user_id,
        "secret_hash": "ab" * 32,
        "permissions": ("tools:*", "register"),
        "created_at": 1700000000.5,
    }
    fields.update(changes)
    return TokenRecord(**fields)


def test_provides_the_interface(store):
    assert verifyObject(IStore, store)


@pytest_twisted.ensureDeferred
async def test_user_round_trip(store):
    assert await store.get_user("alice") is None
    saved = user(last_activity=1700000100.125)
    await store.save_user(saved)
    loaded = await store.get_user("alice")
    assert loaded == saved
    assert loaded.metadata == saved.metadata
    assert await store.get_user("bob") is None


@pytest_twisted.ensureDeferred
async def test_save_user_replaces_every_field(store):
    await store.save_user(user(metadata={"old": True}, last_activity=5.0))
    replacement = user(browser_url="ws://127.0.0.1:9333/devtools/browser/x", metadata={}, registered_at=7.0)
    await store.save_user(replacement)
    loaded = await store.get_user("alice")
    assert loaded == replacement
    assert loaded.metadata == {}
    assert loaded.last_activity is None
    assert [u.user_id for u in await store.list_users()] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_list_users_is_ordered_by_id(store):
    for user_id in ("mallory", "alice", "bob@example.com", "Zed", "carol.x"):
        await store.save_user(user(user_id))
    listed = await store.list_users()
    assert [u.user_id for u in listed] == sorted(["mallory", "alice", "bob@example.com", "Zed", "carol.x"])
    assert all(u.browser_url == "http://127.0.0.1:9222" for u in listed)
    assert await store.count_users() == 5
    assert await store.list_user_ids() == [u.user_id for u in listed]
    await store.delete_user("Zed")
    assert await store.count_users() == 4
    assert "Zed" not in await store.list_user_ids()


@pytest_twisted.ensureDeferred
async def test_delete_user(store):
    await store.save_user(user("alice"))
    await store.save_user(user("bob"))
    await store.save_token(token(user_id="alice"))
    assert await store.delete_user("alice") is True
    assert await store.get_user("alice") is None
    assert await store.delete_user("alice") is False
    assert [u.user_id for u in await store.list_users()] == ["bob"]
    # Deleting a user revokes nothing: tokens are managed on their own.
    assert (await store.get_token("0123456789abcdef")).revoked_at is None


@pytest_twisted.ensureDeferred
async def test_touch_user_only_moves_forward_and_only_existing_users(store):
    await store.save_user(user())
    await store.touch_user("alice", 100.5)
    assert (await store.get_user("alice")).last_activity == 100.5
    await store.touch_user("alice", 50.0)
    assert (await store.get_user("alice")).last_activity == 100.5
    await store.touch_user("alice", 200.0)
    assert (await store.get_user("alice")).last_activity == 200.0
    await store.touch_user("ghost", 300.0)
    assert await store.get_user("ghost") is None
    assert [u.user_id for u in await store.list_users()] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_token_round_trip(store):
    assert await store.get_token("0123456789abcdef") is None
    saved = token(
        permissions=("tools:take_snapshot", "tools:category:navigation", "admin"),
        expires_at=1700003600.0,
        last_used_at=1700000001.0,
        description="CI bot, é",
    )
    await store.save_token(saved)
    loaded = await store.get_token("0123456789abcdef")
    assert loaded == saved
    assert loaded.permissions == ("tools:take_snapshot", "tools:category:navigation", "admin")
    no_expiry = token("fedcba9876543210", permissions=())
    await store.save_token(no_expiry)
    assert await store.get_token("fedcba9876543210") == no_expiry
    child = token("00000000000000aa", parent_id="0123456789abcdef")
    await store.save_token(child)
    assert (await store.get_token("00000000000000aa")).parent_id == "0123456789abcdef"


@pytest_twisted.ensureDeferred
async def test_save_token_replaces_and_moves_between_users(store):
    await store.save_token(token(user_id="alice", expires_at=10.0, description="first"))
    await store.save_token(token(user_id="bob"))
    loaded = await store.get_token("0123456789abcdef")
    assert loaded == token(user_id="bob")
    assert loaded.expires_at is None and loaded.description == ""
    assert await store.list_tokens("alice") == []
    assert [t.token_id for t in await store.list_tokens("bob")] == ["0123456789abcdef"]
    assert len(await store.list_tokens()) == 1


@pytest_twisted.ensureDeferred
async def test_list_tokens_by_creation_time_and_by_user(store):
    await store.save_token(token("000000000000000c", "bob", created_at=30.0))
    await store.save_token(token("000000000000000a", "alice", created_at=10.0))
    await store.save_token(token("000000000000000d", "alice", created_at=20.0))
    await store.save_token(token("000000000000000b", "alice", created_at=20.0))
    everyone = await store.list_tokens()
    assert [t.token_id for t in everyone] == [
        "000000000000000a",
        "000000000000000b",
        "000000000000000d",
        "000000000000000c",
    ]
    alice = await store.list_tokens("alice")
    assert [t.token_id for t in alice] == ["000000000000000a", "000000000000000b", "000000000000000d"]
    assert all(t.user_id == "alice" for t in alice)
    assert await store.list_tokens("nobody") == []


@pytest_twisted.ensureDeferred
async def test_revoke_token(store):
    await store.save_token(token())
    assert await store.revoke_token("0123456789abcdef", 500.0) is True
    revoked = await store.get_token("0123456789abcdef")
    assert revoked.revoked_at == 500.0
    assert not revoked.is_valid_at(500.0)
    assert revoked.is_valid_at(499.0)
    # A later revocation keeps the earlier time; an earlier one (ending a grace period) wins.
    assert await store.revoke_token("0123456789abcdef", 900.0) is True
    assert (await store.get_token("0123456789abcdef")).revoked_at == 500.0
    assert await store.revoke_token("0123456789abcdef", 100.0) is True
    assert (await store.get_token("0123456789abcdef")).revoked_at == 100.0
    assert await store.revoke_token("ffffffffffffffff", 1.0) is False
    assert await store.get_token("ffffffffffffffff") is None


@pytest_twisted.ensureDeferred
async def test_touch_token(store):
    await store.save_token(token())
    await store.touch_token("0123456789abcdef", 1000.0)
    assert (await store.get_token("0123456789abcdef")).last_used_at == 1000.0
    await store.touch_token("0123456789abcdef", 900.0)
    assert (await store.get_token("0123456789abcdef")).last_used_at == 1000.0
    await store.touch_token("ffffffffffffffff", 1.0)
    assert await store.get_token("ffffffffffffffff") is None
    assert len(await store.list_tokens()) == 1


@pytest_twisted.ensureDeferred
async def test_the_first_start_is_held_once_per_shared_store(store):
    assert await store.hold_first_start(30) is True
    # A store of one process always lets it make the first admin token; a shared one once.
    assert await store.hold_first_start(30) is (store.__class__.__name__ != "RedisStore")


@pytest_twisted.ensureDeferred
async def test_sqlite_restart_loses_nothing(tmp_path, reactor):
    path = tmp_path / "nested" / "dir" / "mcproxy.sqlite3"
    first = await open_store(f"sqlite:{path}", reactor)
    await first.save_user(user(last_activity=3.0))
    await first.save_token(token(expires_at=99.0))
    await first.revoke_token("0123456789abcdef", 50.0)
    await first.touch_token("0123456789abcdef", 40.0)
    await first.close()
    assert path.exists()
    # Closing the only connection checkpoints the write-ahead log into the file.
    assert not os.path.exists(f"{path}-wal")

    second = await open_store(f"sqlite:{path}", reactor)
    try:
        assert await second.get_user("alice") == user(last_activity=3.0)
        assert await second.get_token("0123456789abcdef") == token(expires_at=99.0, revoked_at=50.0, last_used_at=40.0)
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_unusable_path_is_a_config_error(tmp_path, reactor):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create directory"):
        await open_store(f"sqlite:{blocker}/db.sqlite3", reactor)
    with pytest.raises(ConfigError, match="cannot open SQLite database"):
        await open_store(f"sqlite:{tmp_path}", reactor)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sqlite:",
        "postgres://127.0.0.1/db",
        "redis://",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/fifteen",
        "memory:x",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_store_urls_are_config_errors(url, reactor):
    with pytest.raises(ConfigError, match=r"store\.url"):
        await open_store(url, reactor)


@pytest_twisted.ensureDeferred
async def test_redis_down_fails_within_the_timeout(reactor):
    from mcproxy.storage.redis import open_redis_store

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match="cannot connect to Redis"):
        await open_redis_store(reactor, "127.0.0.1", port, 15, timeout=0.5)


@pytest_twisted.ensureDeferred
async def test_redis_close_really_closes(tmp_path, reactor):
    from twisted.internet.task import deferLater

    first = await open_test_store("redis", str(tmp_path), reactor)
    watcher = await open_test_store("redis", str(tmp_path), reactor)
    try:
        name = "mcproxy-close-" + first.prefix.split("-")[-1].rstrip(":")
        await first.redis.execute_command("CLIENT", "SETNAME", name)
        assert name in await watcher.redis.execute_command("CLIENT", "LIST")
        await first.close()
        for _ in range(50):
            if name not in await watcher.redis.execute_command("CLIENT", "LIST"):
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert name not in await watcher.redis.execute_command("CLIENT", "LIST")
    finally:
        await discard_test_store(watcher)


@pytest_twisted.ensureDeferred
async def test_redis_keys_stay_under_the_prefix(tmp_path, reactor):
    store = await open_test_store("redis", str(tmp_path), reactor)
    try:
        await store.save_user(user())
        await store.save_token(token())
        keys = await store.redis.keys(store.prefix + "*")
        assert sorted(keys) == sorted(
            store.prefix + k for k in ("users", "user:alice", "tokens", "token:0123456789abcdef", "user-tokens:alice")
        )
        assert store.prefix.startswith("mcproxy:")
        assert redis_test_url().startswith("redis://")
    finally:
        await discard_test_store(store)
    assert await _leftover_keys(store.prefix, reactor) == []


async def _leftover_keys(prefix, reactor):
    probe = await open_test_store("redis", "", reactor)
    try:
        return await probe.redis.keys(prefix + "*")
    finally:
        await probe.close()


def test_redis_url_parsing_and_password_redaction():
    from mcproxy.storage.redis import parse_redis_url

    assert parse_redis_url("redis://127.0.0.1:6380/3") == ("127.0.0.1", 6380, 3, None, None)
    assert parse_redis_url("redis://localhost") == ("localhost", 6379, 0, None, None)
    assert parse_redis_url("redis://me:p%40ss@h:1/2") == ("h", 1, 2, "me", "p@ss")
    for url in ("redis://:hunter2@/1", "redis://:hunter2@h:x/1", "redis://:hunter2@h/abc"):
        with pytest.raises(ConfigError) as info:
            parse_redis_url(url)
        assert "hunter2" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_redis_processes_share_state(tmp_path, reactor):
    from mcproxy.storage.redis import open_redis_store, parse_redis_url

    one = await open_test_store("redis", str(tmp_path), reactor)
    other = await open_redis_store(reactor, *parse_redis_url(redis_test_url()), prefix=one.prefix)
    try:
        await one.save_token(token())
        await other.revoke_token("0123456789abcdef", 10.0)
        await other.touch_token("0123456789abcdef", 5.0)
        assert await one.get_token("0123456789abcdef") == token(revoked_at=10.0, last_used_at=5.0)
        await other.save_user(user())
        assert [u.user_id for u in await one.list_users()] == ["alice"]
    finally:
        await other.close()
        await discard_test_store(one)


@pytest_twisted.ensureDeferred
async def test_redis_processes_starting_together_make_one_admin_token(tmp_path, reactor):
    from mcproxy.auth.bootstrap import ensure_admin_token
    from mcproxy.storage.redis import open_redis_store, parse_redis_url

    one = await open_test_store("redis", str(tmp_path), reactor)
    other = await open_redis_store(reactor, *parse_redis_url(redis_test_url()), prefix=one.prefix)
    try:
        first, second = [
            Deferred.fromCoroutine(ensure_admin_token(store, str(tmp_path / name), reactor))
            for store, name in ((one, "n1"), (other, "n2"))
        ]
        made = [path for path in [await first, await second] if path is not None]
        assert len(made) == 1 and len([t for t in await one.list_tokens() if "admin" in t.permissions]) == 1
        assert await other.hold_first_start(30) is False  # held for a while: no second token
    finally:
        await other.close()
        await discard_test_store(one)


def test_importing_the_stores_does_not_import_the_reactor():
    import subprocess
    import sys

    probe = (
        "import sys, mcproxy.storage, mcproxy.storage.redis, mcproxy.storage.sqlite, mcproxy.testing.stores;"
        "print('twisted.internet.reactor' in sys.modules, 'txredisapi' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "False"], done.stderr


@pytest_twisted.ensureDeferred
async def test_passwords(store):
    assert await store.get_password("alice") is None
    await store.set_password("alice", "scrypt$16384$8$1$c2FsdA==$aGFzaA==")
    await store.set_password("bob@example.com", "scrypt$16384$8$1$b3RoZXI=$b3RoZXI=")
    assert await store.get_password("alice") == "scrypt$16384$8$1$c2FsdA==$aGFzaA=="
    await store.set_password("alice", "scrypt$16384$8$1$bmV3$bmV3")
    assert await store.get_password("alice") == "scrypt$16384$8$1$bmV3$bmV3"
    assert await store.get_password("bob@example.com") == "scrypt$16384$8$1$b3RoZXI=$b3RoZXI="
    # A password is not part of the user record: it may exist before registration and outlives it.
    await store.save_user(user("alice"))
    assert await store.delete_user("alice") is True
    assert await store.get_password("alice") == "scrypt$16384$8$1$bmV3$bmV3"
    assert await store.list_users() == []


def old_sqlite_file(path, version: int, *statements: str) -> str:
    """A store file as an older mcproxy left it: its schema ``version`` and ``statements``."""
    import sqlite3

    with sqlite3.connect(path) as old:
        for statement in statements:
            old.execute(statement)
        old.execute(f"PRAGMA user_version = {version}")
    old.close()
    return f"sqlite:{path}"


@pytest_twisted.ensureDeferred
async def test_sqlite_files_from_before_passwords_get_the_table(tmp_path, reactor):
    path = tmp_path / "old.sqlite3"
    url = old_sqlite_file(
        path,
        1,
        "CREATE TABLE users (user_id TEXT PRIMARY KEY, browser_url TEXT NOT NULL, metadata TEXT NOT NULL,"
        " registered_at REAL NOT NULL, last_activity REAL)",
        "INSERT INTO users VALUES ('alice', 'http://127.0.0.1:9222', '{}', 1.0, NULL)",
    )
    store = await open_store(url, reactor)
    try:
        assert (await store.get_user("alice")).browser_url == "http://127.0.0.1:9222"
        await store.set_password("alice", "scrypt$x")
        assert await store.get_password("alice") == "scrypt$x"
    finally:
        await store.close()
    reopened = await open_store(url, reactor)
    try:
        assert await reopened.get_password("alice") == "scrypt$x"
    finally:
        await reopened.close()


@pytest_twisted.ensureDeferred
async def test_redis_passwords_stay_under_the_prefix(tmp_path, reactor):
    store = await open_test_store("redis", str(tmp_path), reactor)
    try:
        await store.set_password("alice", "scrypt$x")
        assert await store.redis.keys(store.prefix + "*") == [store.prefix + "password:alice"]
    finally:
        await discard_test_store(store)


@pytest_twisted.ensureDeferred
async def test_sqlite_files_from_before_token_parents_gain_the_column(tmp_path, reactor):
    url = old_sqlite_file(
        tmp_path / "v2.sqlite3",
        2,
        "CREATE TABLE tokens (token_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, secret_hash TEXT NOT NULL,"
        " permissions TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL,"
        " last_used_at REAL, description TEXT NOT NULL)",
        "INSERT INTO tokens VALUES ('0123456789abcdef', 'alice', 'ab', '[\"admin\"]', 1.0, NULL, NULL, NULL, '')",
    )
    store = await open_store(url, reactor)
    try:
        old_token = await store.get_token("0123456789abcdef")
        assert old_token.permissions == ("admin",) and old_token.parent_id is None
        await store.save_token(token("00000000000000aa", parent_id="0123456789abcdef"))
        assert (await store.get_token("00000000000000aa")).parent_id == "0123456789abcdef"
    finally:
        await store.close()
