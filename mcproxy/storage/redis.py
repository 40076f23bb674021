"""The ``redis://HOST:PORT/DB`` store, shared by several proxy processes.

Layout (every key under the prefix, ``mcproxy:`` by default): a hash per user
(``user:<id>``) and the set ``users``; a hash per token (``token:<id>``), the set
``tokens`` and a set per user (``user-tokens:<user>``); a string per password hash
(``password:<user>``). Writes that touch several keys,
or read-then-write, are Lua scripts so concurrent processes never see half a record.

txredisapi imports the global reactor, so it is imported inside the functions.
"""

import json
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from mcproxy.config import ConfigError
from mcproxy.errors import MCProxyError
from mcproxy.interfaces import IStore
from mcproxy.storage import dump_json, load_permissions, token_order
from mcproxy.storage.records import TokenRecord, UserRecord

DEFAULT_PREFIX = "mcproxy:"

# KEYS[1] record hash, KEYS[2] id set; ARGV[1] id, then field/value pairs.
_SAVE_USER = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
"""

# KEYS[1] token hash, KEYS[2] token set, KEYS[3] the new owner's set;
# ARGV[1] token id, ARGV[2] user-tokens key prefix, then field/value pairs.
_SAVE_TOKEN = """
local old = redis.call('HGET', KEYS[1], 'user_id')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if old and old ~= redis.call('HGET', KEYS[1], 'user_id') then redis.call('SREM', ARGV[2] .. old, ARGV[1]) end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
"""

# KEYS[1] id set; ARGV[1] record key prefix. Returns {id, field, value, ...} per record.
_LIST = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HGETALL', ARGV[1] .. id)
  if #fields > 0 then
    table.insert(fields, 1, id)
    out[#out + 1] = fields
  end
end
return out
"""

# KEYS[1] record hash, KEYS[2] id set; ARGV[1] id.
_DELETE_USER = """
local existed = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return existed
"""

# KEYS[1] record hash; ARGV[1] field, ARGV[2] time, ARGV[3] 'later' or 'earlier'.
# Touches only move forward, revocations only earlier (see mcproxy.storage.memory).
_SET_TIME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local when = tonumber(ARGV[2])
if not current
   or (ARGV[3] == 'later' and tonumber(current) < when)
   or (ARGV[3] == 'earlier' and tonumber(current) > when) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""


def parse_redis_url(url: str) -> tuple[str, int, int, str | None, str | None]:
    """``redis://[[user]:password@]HOST[:PORT][/DB]`` to (host, port, db, username, password)."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as e:
        raise ConfigError(f"store.url: not a valid redis:// URL: {e}") from None
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never log a password
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigError(f"store.url: expected redis://HOST:PORT/DB, got {shown!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"store.url: the Redis database must be a number, got {path!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, int(path or 0), username, password


def redis_factory(host: str, port: int, db: int | None, connections: int, username, password, timeout: float):
    """A txredisapi factory of ``connections`` lazy connections, every reply bounded by
    ``timeout``, back within a second of Redis: txredisapi's own backoff grows to minutes,
    far past the leases of a cluster and the patience of a client retrying a 503."""
    import txredisapi

    factory = txredisapi.RedisFactory(
        f"{host}:{port}",
        db,
        connections,
        isLazy=True,
        charset="utf-8",
        password=password,
        username=username,
        replyTimeout=timeout,
        convertNumbers=False,
    )
    factory.initialDelay = 0.1
    factory.maxDelay = 1.0
    return factory


async def open_redis_store(reactor, host: str, port: int = 6379, db: int = 0, *args, **kwargs) -> "RedisStore":
    """A `RedisStore` connected (see `RedisStore.at` for the arguments)."""
    store = RedisStore.at(reactor, host, port, db, *args, **kwargs)
    await store.open()
    return store


class StoreUnavailable(MCProxyError):
    """The Redis server of the store cannot be reached or did not answer in time."""

    http_status = 503
    code = "store_unavailable"
    retry_after = 2


def _unavailable(failure: Failure) -> Failure:
    from txredisapi import ConnectionError as RedisConnectionError

    if failure.check(TimeoutError, RedisConnectionError):
        return Failure(StoreUnavailable(f"the shared store (Redis) is unavailable: {failure.getErrorMessage()}"))
    return failure


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _fields(pairs: dict) -> list:
    """A record's non-None fields as a flat field/value list (None fields are left out)."""
    flat = []
    for name, value in pairs.items():
        if value is not None:
            flat += [name, repr(float(value)) if isinstance(value, (int, float)) else value]
    return flat


def _user(user_id: str, h: dict) -> UserRecord:
    return UserRecord(
        user_id=user_id,
        browser_url=h["browser_url"],
        metadata=json.loads(h["metadata"]),
        registered_at=float(h["registered_at"]),
        last_activity=_float(h.get("last_activity")),
    )


def _token(token_id: str, h: dict) -> TokenRecord:
    return TokenRecord(
        token_id=token_id,
        user_id=h["user_id"],
        secret_hash=h["secret_hash"],
        permissions=load_permissions(h["permissions"]),
        created_at=float(h["created_at"]),
        expires_at=_float(h.get("expires_at")),
        revoked_at=_float(h.get("revoked_at")),
        last_used_at=_float(h.get("last_used_at")),
        description=h.get("description", ""),
        parent_id=h.get("parent_id"),
    )


def _pairs(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2], strict=False))


@implementer(IStore)
class RedisStore:
    """`IStore` over one txredisapi connection; every call is bounded by ``timeout``.

    ``redis`` and ``prefix`` are public so other shared state (leases, rate limits) can
    reuse the connection under the same prefix.
    """

    def __init__(self, redis, reactor, *, prefix: str = DEFAULT_PREFIX, timeout: float = 10.0):
        self.redis = redis
        self.prefix = prefix
        self._reactor = reactor
        self._timeout = timeout
        self._connect: tuple | None = None

    @classmethod
    def at(
        cls,
        reactor,
        host: str,
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 10.0,
    ) -> "RedisStore":
        """The store in database ``db`` of the server at ``host:port``; `open` connects (and
        the connection reconnects on its own afterwards)."""
        factory = redis_factory(host, port, db, 1, username, password, timeout)
        store = cls(factory.handler, reactor, prefix=prefix, timeout=timeout)
        store._connect = (factory, HostnameEndpoint(reactor, host, port, timeout=timeout), f"{host}:{port} db {db}")
        return store

    async def open(self) -> None:
        """Wait at most ``timeout`` for the first connection; `ConfigError` when none comes."""
        if self._connect is None:
            return  # made from a connection that is already open
        factory, endpoint, where = self._connect
        factory.startConnecting(endpoint)
        connected = factory.deferred.addTimeout(self._timeout, self._reactor)
        try:
            await connected
        except CancelledError:
            factory.disconnect()
            raise
        except Exception as e:
            await factory.disconnect()
            reason = f"no connection within {self._timeout:g} s" if isinstance(e, TimeoutError) else str(e)
            raise ConfigError(f"store.url: cannot connect to Redis at {where}: {reason}") from None

    def _bounded(self, d: Deferred) -> Deferred:
        """``d`` within the time limit; a Redis that is down or silent is `StoreUnavailable`
        (a 503 the client may retry), not an internal error."""
        return d.addTimeout(self._timeout, self._reactor).addErrback(_unavailable)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _eval(self, script: str, keys: list, args: list):
        return self._bounded(self.redis.eval(script, keys, args))

    def _list(self, id_set: str, record_kind: str):
        """Deferred[list[(id, fields)]] of every record whose id is in ``id_set``."""
        d = self._eval(_LIST, [id_set], [self._key(record_kind, "")])
        return d.addCallback(lambda rows: [(row[0], _pairs(row[1:])) for row in rows])

    def _hash(self, key: str):
        return self._bounded(self.redis.hgetall(key))

    def _set_time(self, key: str, field: str, when: float, direction: str):
        d = self._eval(_SET_TIME, [key], [field, repr(float(when)), direction])
        return d.addCallback(bool)

    def save_user(self, user):
        fields = _fields(
            {
                "browser_url": user.browser_url,
                "metadata": dump_json(user.metadata),
                "registered_at": user.registered_at,
                "last_activity": user.last_activity,
            }
        )
        keys = [self._key("user", user.user_id), self._key("users")]
        d = self._eval(_SAVE_USER, keys, [user.user_id, *fields])
        return d.addCallback(lambda _: None)

    def get_user(self, user_id):
        d = self._hash(self._key("user", user_id))
        return d.addCallback(lambda h: _user(user_id, h) if h else None)

    def list_users(self):
        d = self._list(self._key("users"), "user")
        return d.addCallback(lambda rows: sorted((_user(i, h) for i, h in rows), key=lambda u: u.user_id))

    def list_user_ids(self):
        return self._bounded(self.redis.smembers(self._key("users"))).addCallback(sorted)

    def count_users(self):
        return self._bounded(self.redis.scard(self._key("users"))).addCallback(int)

    def delete_user(self, user_id):
        d = self._eval(_DELETE_USER, [self._key("user", user_id), self._key("users")], [user_id])
        return d.addCallback(bool)

    def touch_user(self, user_id, when):
        d = self._set_time(self._key("user", user_id), "last_activity", when, "later")
        return d.addCallback(lambda _: None)

    def save_token(self, token):
        fields = _fields(
            {
                "user_id": token.user_id,
                "secret_hash": token.secret_hash,
                "permissions": dump_json(list(token.permissions)),
                "created_at": token.created_at,
                "expires_at": token.expires_at,
                "revoked_at": token.revoked_at,
                "last_used_at": token.last_used_at,
                "description": token.description,
                "parent_id": token.parent_id,
            }
        )
        keys = [
            self._key("token", token.token_id),
            self._key("tokens"),
            self._key("user-tokens", token.user_id),
        ]
        d = self._eval(_SAVE_TOKEN, keys, [token.token_id, self._key("user-tokens", ""), *fields])
        return d.addCallback(lambda _: None)

    def get_token(self, token_id):
        d = self._hash(self._key("token", token_id))
        return d.addCallback(lambda h: _token(token_id, h) if h else None)

    def list_tokens(self, user_id=None):
        id_set = self._key("tokens") if user_id is None else self._key("user-tokens", user_id)
        d = self._list(id_set, "token")
        return d.addCallback(lambda rows: sorted((_token(i, h) for i, h in rows), key=token_order))

    def revoke_token(self, token_id, when):
        return self._set_time(self._key("token", token_id), "revoked_at", when, "earlier")

    def touch_token(self, token_id, when):
        d = self._set_time(self._key("token", token_id), "last_used_at", when, "later")
        return d.addCallback(lambda _: None)

    def hold_first_start(self, seconds):
        held = self.redis.set(self._key("first-start"), "1", pexpire=int(seconds * 1000), only_if_not_exists=True)
        return self._bounded(held).addCallback(lambda answer: answer is not None)

    def set_password(self, user_id, encoded):
        d = self._bounded(self.redis.set(self._key("password", user_id), encoded))
        return d.addCallback(lambda _: None)

    def get_password(self, user_id):
        return self._bounded(self.redis.get(self._key("password", user_id)))

    def close(self):
        """Stop reconnecting and close the connection. Deferred[None]."""
        return self.redis.disconnect().addCallback(lambda _: None)
