"""The store as a service: opened before anything that reads it starts, closed after
everything that writes it has stopped."""

import os

import attrs

from mcproxy.interfaces import IStore
from mcproxy.lifecycle import AsyncService


@attrs.define(eq=False)
class StoreService(AsyncService):
    """Opens ``store`` on start (creating ``data_dir``, where a file store lives by
    default) and closes it on stop."""

    store: IStore
    data_dir: str

    async def start(self) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        await self.store.open()

    async def stop(self) -> None:
        await self.store.close()
