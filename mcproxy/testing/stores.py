"""Stores for tests: the same three kinds the daemon runs, isolated per test.

Redis stores get a random key prefix under ``mcproxy:`` so tests never touch anything
but their own keys; `discard_test_store` deletes exactly those keys.
"""

import os
import secrets

from mcproxy.interfaces import IStore
from mcproxy.storage import open_store

REDIS_URL_VARIABLE = "MCPROXY_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"
STORE_KINDS = ("memory", "sqlite", "redis")


def redis_test_url() -> str:
    """The Redis the tests use: ``$MCPROXY_TEST_REDIS_URL`` or DB 15 on localhost."""
    return os.environ.get(REDIS_URL_VARIABLE) or DEFAULT_TEST_REDIS_URL


async def open_test_store(kind: str, directory: str, reactor) -> IStore:
    """A fresh, empty store of ``kind`` (one of `STORE_KINDS`); sqlite lives in ``directory``."""
    if kind == "memory":
        return await open_store("memory:", reactor)
    if kind == "sqlite":
        return await open_store("sqlite:" + os.path.join(directory, "store.sqlite3"), reactor)
    if kind == "redis":
        from mcproxy.storage.redis import open_redis_store, parse_redis_url

        prefix = f"mcproxy:test-{secrets.token_hex(6)}:"
        return await open_redis_store(reactor, *parse_redis_url(redis_test_url()), prefix=prefix, timeout=5.0)
    raise ValueError(f"unknown store kind {kind!r}")


async def delete_prefixed_keys(store) -> None:
    """Delete every key under a Redis store's prefix (and nothing else)."""
    cursor = "0"
    while True:
        cursor, keys = await store.redis.scan(cursor, store.prefix + "*", 500)
        if keys:
            await store.redis.delete(keys)
        if str(cursor) == "0":
            return


async def discard_test_store(store: IStore) -> None:
    """Close a store from `open_test_store`, deleting a Redis store's keys first."""
    if hasattr(store, "prefix"):
        await delete_prefixed_keys(store)
    await store.close()
