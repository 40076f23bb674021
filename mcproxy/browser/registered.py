"""The registered users' browsers: the pool, as the users' requests reach it.

The pool answers for the users it holds; for the rest the store says which browser is
registered. Registration and deletion go through the pool too, so a browser the pool
holds is always the registered one. Starting the service connects every registered
browser; stopping it closes every connection.
"""

from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from mcproxy.browser.pool import BrowserPool
from mcproxy.errors import ServerFull, ToolError
from mcproxy.interfaces import IStore
from mcproxy.lifecycle import AsyncService

log = Logger()

#: A user's last activity is written to the store at most this often (seconds).
ACTIVITY_WRITE_INTERVAL = 60.0


@attrs.define(eq=False)
class RegisteredBrowsers(AsyncService):
    """`browser_for` a user, connecting the registered browser on first use."""

    pool: BrowserPool
    store: IStore
    clock: Any
    #: Whether starting connects every registered browser (in a cluster, only each user's
    #: owner connects, as it comes to own the user: `mcproxy.cluster.service`).
    connect_at_start: bool = True
    #: Told the user id at each request for a user's browser (a launched browser's idle
    #: time starts again: `mcproxy.browser.launch.LaunchedBrowsers.used`).
    on_use: Callable[[str], None] = lambda user_id: None
    _last_written: dict[str, float] = attrs.field(factory=dict, init=False)

    async def start(self) -> None:
        """Connect every registered browser, as far as ``limits.max_users`` allows."""
        if not self.connect_at_start:
            return
        for user in await self.store.list_users():
            try:
                self.pool.browser_for(user.user_id, user.browser_url)
            except ServerFull as e:
                log.warn("Not connecting the remaining registered browsers now: {reason}", reason=e.message)
                break

    async def stop(self) -> None:
        await self.pool.close()

    async def browser_for(self, user_id: str):
        """The user's browser (`ToolError` when none is registered); notes the activity."""
        browser = self.pool.existing(user_id)
        if browser is None:
            user = await self.store.get_user(user_id)
            if user is None:
                raise ToolError(
                    f"No browser is registered for user {user_id}. Run mcproxy-connect --proxy <this proxy's"
                    " address> next to your Chrome, or register one with POST /api/register"
                    ' {"browserURL": "http://127.0.0.1:9222"} (start Chrome with --remote-debugging-port=9222).'
                )
            browser = self.pool.browser_for(user_id, user.browser_url)
        self.on_use(user_id)
        now = self.clock.seconds()
        if now - self._last_written.get(user_id, float("-inf")) >= ACTIVITY_WRITE_INTERVAL:
            self._last_written[user_id] = now
            await self.store.touch_user(user_id, now)
        return browser
