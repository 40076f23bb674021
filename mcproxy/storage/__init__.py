"""Durable state behind `mcproxy.interfaces.IStore`: pick an implementation by URL.

The implementations live in submodules imported on demand, so importing this package
never imports the reactor (txredisapi does at import time).
"""

import json

from mcproxy.config import ConfigError
from mcproxy.interfaces import IStore
from mcproxy.storage.records import TokenRecord, UserRecord

__all__ = ["IStore", "TokenRecord", "UserRecord", "open_store", "store_for_url", "token_order"]


def store_for_url(url: str, reactor) -> IStore:
    """The store named by ``url`` (``memory:``, ``sqlite:PATH`` or ``redis://HOST:PORT/DB``),
    not yet opened: no I/O happens until `IStore.open`.

    Raises `ConfigError` (naming ``store.url``) for a URL we cannot use.
    """
    if url == "memory:":
        from mcproxy.storage.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from mcproxy.storage.sqlite import SQLiteStore

        path = url[len("sqlite:") :]
        if not path:
            raise ConfigError(f"store.url: sqlite: needs a file path, got {url!r}")
        return SQLiteStore.at(path, reactor)
    if url.startswith("redis://"):
        from mcproxy.storage.redis import RedisStore, parse_redis_url

        return RedisStore.at(reactor, *parse_redis_url(url))
    raise ConfigError(f"store.url: expected sqlite:PATH, memory: or redis://HOST:PORT/DB, got {url!r}")


async def open_store(url: str, reactor) -> IStore:
    """The store named by ``url``, opened (see `store_for_url`)."""
    store = store_for_url(url, reactor)
    await store.open()
    return store


def token_order(token: TokenRecord) -> tuple:
    """Sort key of `IStore.list_tokens`: creation time, then id so ties are stable."""
    return (token.created_at, token.token_id)


def dump_json(value) -> str:
    """Compact, stable JSON text for the metadata and permission columns/fields."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_permissions(text: str) -> tuple[str, ...]:
    """Permissions as stored by `dump_json` back to the record's tuple."""
    return tuple(json.loads(text))
