"""The first-start admin token, so a fresh install can be administered at all."""

import os
from typing import Any

import attrs
from twisted.logger import Logger

from mcproxy.auth.principal import ADMIN
from mcproxy.auth.tokens import create_token
from mcproxy.interfaces import IStore
from mcproxy.lifecycle import AsyncService

log = Logger()

ADMIN_USER = "admin"
TOKEN_FILE = "admin-token"
#: Seconds one process of those sharing an empty store holds the right to make its first
#: admin token; a process that died meanwhile leaves the next start to make it.
FIRST_START_HOLD = 30.0


def write_secret_file(path: str, content: str) -> None:
    """Write ``content`` to ``path`` atomically, readable by the owner only (0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


async def ensure_admin_token(store: IStore, data_dir: str, clock) -> str | None:
    """Create an admin token when the store has no valid one; return the file it is in.

    The token goes to ``<data_dir>/admin-token`` (mode 0600, directory 0700 when we
    create it); the log names the file, never the token. None when an admin token exists.
    """
    now = clock.seconds()
    for token in await store.list_tokens():
        if ADMIN in token.permissions and token.is_valid_at(now):
            return None
    if not await store.hold_first_start(FIRST_START_HOLD):
        log.info("Another process sharing the store is creating the first admin token (see its data_dir)")
        return None
    token, record = await create_token(store, ADMIN_USER, [ADMIN], None, clock, description="first-start admin token")
    path = os.path.join(data_dir, TOKEN_FILE)
    try:
        write_secret_file(path, token + "\n")
    except OSError:
        # Nobody could ever read this token: revoke it so the next start makes another.
        await store.revoke_token(record.token_id, now)
        raise
    log.warn(
        "No admin credential existed: created admin token {token_id}, written to {path}"
        " (readable by this account only)",
        token_id=record.token_id,
        path=os.path.abspath(path),
    )
    return path


@attrs.define(eq=False)
class AdminTokenService(AsyncService):
    """Starts once the store is open: `ensure_admin_token` in ``data_dir``."""

    store: IStore
    data_dir: str
    clock: Any

    async def start(self) -> None:
        await ensure_admin_token(self.store, self.data_dir, self.clock)
