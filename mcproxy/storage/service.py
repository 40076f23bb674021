"""The store as a service: opened (with the first admin token made) before anything that
reads it starts, closed after everything that writes it has stopped."""

import os
from typing import Any

import attrs

from mcproxy.auth.bootstrap import ensure_admin_token
from mcproxy.interfaces import IStore
from mcproxy.lifecycle import AsyncService


@attrs.define(eq=False)
class StoreService(AsyncService):
    """Opens ``store`` on start, makes sure an admin token exists (in ``data_dir``), and
    closes the store on stop."""

    store: IStore
    data_dir: str
    clock: Any

    async def start(self) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        await self.store.open()
        await ensure_admin_token(self.store, self.data_dir, self.clock)

    async def stop(self) -> None:
        await self.store.close()
