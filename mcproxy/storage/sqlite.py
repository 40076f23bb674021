"""The ``sqlite:PATH`` store: the embedded default, one file that survives restarts.

Queries run on adbapi's thread pool with a single connection (SQLite serializes writers
anyway); WAL lets ``mcproxy-admin`` use the file while the daemon has it open.
"""

import json
import os
import sqlite3

from twisted.enterprise import adbapi
from twisted.internet.defer import CancelledError, succeed
from zope.interface import implementer

from mcproxy.config import ConfigError
from mcproxy.interfaces import IStore
from mcproxy.storage import dump_json, load_permissions
from mcproxy.storage.records import TokenRecord, UserRecord

SCHEMA_VERSION = 3

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        user_id TEXT PRIMARY KEY,
        browser_url TEXT NOT NULL,
        metadata TEXT NOT NULL,
        registered_at REAL NOT NULL,
        last_activity REAL
    )""",
    """CREATE TABLE IF NOT EXISTS tokens (
        token_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        permissions TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        last_used_at REAL,
        description TEXT NOT NULL,
        parent_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (user_id, created_at)",
    "CREATE INDEX IF NOT EXISTS tokens_by_creation ON tokens (created_at, token_id)",
    # Version 2: Basic-auth password hashes (created in place on older files).
    """CREATE TABLE IF NOT EXISTS passwords (
        user_id TEXT PRIMARY KEY,
        encoded TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS tokens_by_parent ON tokens (parent_id)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_USER_COLUMNS = "user_id, browser_url, metadata, registered_at, last_activity"
_TOKEN_COLUMNS = (
    "token_id, user_id, secret_hash, permissions, created_at, expires_at, revoked_at,"
    " last_used_at, description, parent_id"
)


def _configure(connection) -> None:
    """Run on the pool thread for each new connection."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")


def _create_schema(transaction) -> None:
    transaction.execute(_SCHEMA[1])
    columns = {row[1] for row in transaction.execute("PRAGMA table_info(tokens)").fetchall()}
    if "parent_id" not in columns:
        # Version 3: tokens remember the token they were minted from (older files gain the column).
        transaction.execute("ALTER TABLE tokens ADD COLUMN parent_id TEXT")
    for statement in _SCHEMA:
        transaction.execute(statement)


def _user(row) -> UserRecord:
    user_id, browser_url, metadata, registered_at, last_activity = row
    return UserRecord(
        user_id=user_id,
        browser_url=browser_url,
        metadata=json.loads(metadata),
        registered_at=registered_at,
        last_activity=last_activity,
    )


def _token(row) -> TokenRecord:
    token_id, user_id, secret_hash, permissions, created, expires, revoked, used, description, parent = row
    return TokenRecord(
        token_id=token_id,
        user_id=user_id,
        secret_hash=secret_hash,
        permissions=load_permissions(permissions),
        created_at=created,
        expires_at=expires,
        revoked_at=revoked,
        last_used_at=used,
        description=description,
        parent_id=parent,
    )


@implementer(IStore)
class SQLiteStore:
    """`IStore` over an adbapi pool of one sqlite3 connection."""

    def __init__(self, pool: adbapi.ConnectionPool, path: str):
        self._pool = pool
        self._path = path
        self._closed = False

    @classmethod
    def at(cls, path: str, reactor) -> "SQLiteStore":
        """The database at ``path``; nothing is read or created before `open`."""
        pool = adbapi.ConnectionPool(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            cp_reactor=reactor,
        )
        return cls(pool, path)

    async def open(self) -> None:
        """Create the file, its directory and the schema if needed (migrating an older one)."""
        parent = os.path.dirname(os.path.abspath(self._path))
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            await self._pool.runInteraction(_create_schema)
        except CancelledError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise ConfigError(f"store.url: cannot create directory {parent}: {e.strerror}") from None
        except sqlite3.Error as e:
            self.close()
            raise ConfigError(f"store.url: cannot open SQLite database {self._path}: {e}") from None

    def _rows(self, query: str, *args):
        return self._pool.runQuery(query, args)

    def _changed(self, query: str, *args):
        """Run a write; Deferred[bool]: whether it matched a row."""
        return self._pool.runInteraction(lambda t: t.execute(query, args).rowcount > 0)

    def save_user(self, user):
        return self._pool.runOperation(
            f"INSERT OR REPLACE INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (
                user.user_id,
                user.browser_url,
                dump_json(user.metadata),
                user.registered_at,
                user.last_activity,
            ),
        )

    def get_user(self, user_id):
        d = self._rows(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", user_id)
        return d.addCallback(lambda rows: _user(rows[0]) if rows else None)

    def list_users(self):
        d = self._rows(f"SELECT {_USER_COLUMNS} FROM users ORDER BY user_id")
        return d.addCallback(lambda rows: [_user(row) for row in rows])

    def count_users(self):
        return self._rows("SELECT COUNT(*) FROM users").addCallback(lambda rows: rows[0][0])

    def list_user_ids(self):
        return self._rows("SELECT user_id FROM users ORDER BY user_id").addCallback(lambda rows: [r[0] for r in rows])

    def delete_user(self, user_id):
        return self._changed("DELETE FROM users WHERE user_id = ?", user_id)

    def _raise_time(self, table: str, column: str, key: str, key_value, when):
        """Move ``column`` of one row forward to ``when`` (never back); Deferred[None]."""
        d = self._changed(
            f"UPDATE {table} SET {column} = MAX(COALESCE({column}, ?), ?) WHERE {key} = ?", when, when, key_value
        )
        return d.addCallback(lambda _: None)

    def touch_user(self, user_id, when):
        return self._raise_time("users", "last_activity", "user_id", user_id, when)

    def save_token(self, token):
        return self._pool.runOperation(
            f"INSERT OR REPLACE INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.token_id,
                token.user_id,
                token.secret_hash,
                dump_json(list(token.permissions)),
                token.created_at,
                token.expires_at,
                token.revoked_at,
                token.last_used_at,
                token.description,
                token.parent_id,
            ),
        )

    def get_token(self, token_id):
        d = self._rows(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_id = ?", token_id)
        return d.addCallback(lambda rows: _token(rows[0]) if rows else None)

    def list_tokens(self, user_id=None):
        if user_id is None:
            d = self._rows(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, token_id")
        else:
            d = self._rows(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE user_id = ? ORDER BY created_at, token_id",
                user_id,
            )
        return d.addCallback(lambda rows: [_token(row) for row in rows])

    def revoke_token(self, token_id, when):
        return self._changed(
            "UPDATE tokens SET revoked_at = MIN(COALESCE(revoked_at, ?), ?) WHERE token_id = ?",
            when,
            when,
            token_id,
        )

    def touch_token(self, token_id, when):
        return self._raise_time("tokens", "last_used_at", "token_id", token_id, when)

    def hold_first_start(self, seconds):
        return succeed(True)

    def set_password(self, user_id, encoded):
        return self._pool.runOperation(
            "INSERT OR REPLACE INTO passwords (user_id, encoded) VALUES (?, ?)", (user_id, encoded)
        )

    def get_password(self, user_id):
        d = self._rows("SELECT encoded FROM passwords WHERE user_id = ?", user_id)
        return d.addCallback(lambda rows: rows[0][0] if rows else None)

    def close(self):
        """Stop the pool's thread and close the connection (a checkpoint folds the WAL back)."""
        if not self._closed:
            self._closed = True
            self._pool.close()
        return succeed(None)
