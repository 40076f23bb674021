"""Durable state behind `mcproxy.interfaces.IStore`: pick an implementation by URL.

The implementations live in submodules imported on demand, so importing this package
never imports the reactor (txredisapi does at import time).
"""

import json

from mcproxy.config import ConfigError
from mcproxy.interfaces import IStore
from mcproxy.storage.records import TokenRecord, UserRecord

__all__ = ["IStore", "TokenRecord", "UserRecord", "open_store", "token_order"]


async def open_store(url: str, reactor) -> IStore:
    """Open the store named by ``url``: ``memory:``, ``sqlite:PATH`` or ``redis://HOST:PORT/DB``.

    Raises `ConfigError` (naming ``store.url``) for a URL we cannot use.
    """
    if url == "memory:":
        from mcproxy.storage.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from mcproxy.storage.sqlite import open_sqlite_store

        path = url[len("sqlite:") :]
        if not path:
            raise ConfigError(f"store.url: sqlite: needs a file path, got {url!r}")
        return await open_sqlite_store(path, reactor)
    if url.startswith("redis://"):
        from mcproxy.storage.redis import open_redis_store, parse_redis_url

        return await open_redis_store(reactor, *parse_redis_url(url))
    raise ConfigError(f"store.url: expected sqlite:PATH, memory: or redis://HOST:PORT/DB, got {url!r}")


def token_order(token: TokenRecord) -> tuple:
    """Sort key of `IStore.list_tokens`: creation time, then id so ties are stable."""
    return (token.created_at, token.token_id)


def dump_json(value) -> str:
    """Compact, stable JSON text for the metadata and permission columns/fields."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_permissions(text: str) -> tuple[str, ...]:
    """Permissions as stored by `dump_json` back to the record's tuple."""
    return tuple(json.loads(text))

