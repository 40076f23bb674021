"""Browsers the proxy launches: a headless Chromium per user on the proxy's own host.

A user registered as ``launch:`` (``POST /api/register {"launch": true}``) has no browser of
their own to connect (an agent, a CI job): the proxy starts one for them, with a profile of
their own under ``<server.data_dir>/browsers/<user>``, over ``--remote-debugging-pipe``
(`mcproxy.browser.pipe`), so no DevTools port is open to anyone on the host.

`LaunchedBrowsers.open_link` is the `LinkOpener` of these browsers: it starts the user's
Chromium if it is not running (or reuses it) and hands the `BrowserLink` a `CDPConnection`
over the pipe, so health checks, statuses, reconnects with backoff and tools work as for any
browser. A Chromium that ends (a crash, a kill) fails that connection; the link's reconnect
starts it again with the pool's backoff, and a call of the user does at once (`used`).

After ``launch.idle_timeout`` seconds without a call of its user, a browser is stopped: its
link is closed first (``on_idle``), so nothing reconnects it, then its process; the next call
starts it again on the same profile. At most ``launch.max_browsers`` run at once. Every
process is stopped by its PID when its user is unregistered (and its profile removed) and
when the daemon stops.

``launch.memory_mb`` caps each browser's JavaScript heap (V8's old space, per renderer:
``--js-flags=--max-old-space-size``); it is no cap on the whole process tree, which needs a
cgroup around the daemon (see the README).
"""

import os
import shutil
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mcproxy.browser.cdp.connection import CDPConnection
from mcproxy.browser.connect import LinkOpener
from mcproxy.browser.pipe import PipeProcess, Renumbering, find_chrome, pipe_argv
from mcproxy.browser.urls import is_launched
from mcproxy.config import BrowserConfig, ConfigError, LaunchConfig
from mcproxy.errors import BrowserUnavailable, LimitReached
from mcproxy.lifecycle import AsyncService
from mcproxy.threads import thread_runner

if TYPE_CHECKING:
    from mcproxy.browser.link import BrowserLink

log = Logger()


class _Launched:
    """One user's launched browser: its process (None while stopped), the pipe's numbering
    of that process, the connection open over it, and the timer that stops it when idle."""

    def __init__(self, profile: str):
        self.profile = profile
        self.process: PipeProcess | None = None
        self.numbers = Renumbering()
        self.cdp: CDPConnection | None = None
        self.idle: Any = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def cancel_idle(self) -> None:
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        self.idle = None


def profile_name(user_id: str) -> str:
    """The directory name of a user's profile: the user id, but never ``.`` or ``..``."""
    return user_id if user_id.strip(".") else user_id.replace(".", "%2E")


class LaunchedBrowsers(AsyncService):
    """The browsers this process launched, one per user.

    ``on_idle(user_id)`` closes the user's link (Deferred), before an idle browser stops;
    ``wake(user_id)`` has the user's link connect at once (its browser has ended and a call
    came).
    """

    def __init__(
        self,
        reactor,
        config: LaunchConfig,
        browser: BrowserConfig,
        data_dir: str,
        *,
        chromium: str,
        on_idle: Callable[[str], Awaitable[object]] = lambda user_id: defer.succeed(None),
        wake: Callable[[str], None] = lambda user_id: None,
    ):
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.browser_config = browser
        self.root = os.path.join(data_dir, "browsers")
        self.chromium = chromium
        self.on_idle = on_idle
        self.wake = wake
        self._browsers: dict[str, _Launched] = {}

    @classmethod
    def from_config(cls, reactor, config, **hooks: Any) -> "LaunchedBrowsers":
        """The launcher ``config.launch`` describes; a ConfigError when it is enabled and no
        Chromium is found."""
        launch = config.launch
        chromium = launch.chromium or find_chrome() or ""
        if launch.enabled and not (chromium and os.access(chromium, os.X_OK)):
            raise ConfigError(
                f"launch.chromium: {'no Chromium is found on PATH' if not chromium else f'{chromium} is no program'};"
                " install it (apt-get install chromium) or give its path"
            )
        return cls(reactor, launch, config.browser, config.server.data_dir, chromium=chromium, **hooks)

    # -- what the rest of the daemon asks ---------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether users may have a browser launched (``launch.enabled``)."""
        return self.config.enabled

    def running_count(self) -> int:
        """How many launched browsers run now."""
        return sum(1 for launched in self._browsers.values() if launched.running)

    def check_room(self, user_id: str) -> None:
        """LimitReached (429) when starting the user's browser would pass ``launch.max_browsers``."""
        launched = self._browsers.get(user_id)
        if (launched is None or not launched.running) and self.running_count() >= self.config.max_browsers:
            raise LimitReached(
                f"this proxy already runs {self.config.max_browsers} browsers (launch.max_browsers); try again"
                " when one has stopped (idle ones stop after launch.idle_timeout) or ask the operator for more",
                code="too_many_browsers",
            )

    def pid_of(self, user_id: str) -> int | None:
        """The process id of the user's browser while it runs."""
        launched = self._browsers.get(user_id)
        return launched.process.pid if launched is not None and launched.process is not None else None

    def used(self, user_id: str) -> None:
        """A call of the user came: the idle time starts again, and a browser that ended is
        started again now rather than at the link's next backoff."""
        launched = self._browsers.get(user_id)
        if launched is None:
            return
        if launched.running:
            self._idle_from_now(user_id, launched)
        else:
            self.wake(user_id)

    def links(self, other: LinkOpener) -> LinkOpener:
        """A `LinkOpener` that opens launched browsers here and every other browser with ``other``."""

        async def open_link(browser: "BrowserLink") -> CDPConnection:
            if is_launched(browser.browser_url):
                return await self.open_link(browser)
            return await other(browser)

        return open_link

    async def open_link(self, browser: "BrowserLink") -> CDPConnection:
        """The `LinkOpener` of ``launch:`` browsers: a fresh connection over the pipe of the
        user's Chromium, started first when it does not run."""
        user_id = browser.user_id
        if not self.enabled:
            raise BrowserUnavailable(
                "this proxy no longer launches browsers (launch.enabled is off); register a browser of your own"
            )
        launched = self._browsers.get(user_id)
        if launched is None:
            launched = self._browsers[user_id] = _Launched(os.path.join(self.root, profile_name(user_id)))
        if not launched.running:
            try:
                self.check_room(user_id)
            except LimitReached as e:
                raise BrowserUnavailable(e.message) from None
            self._start(user_id, launched)
        self._drop_cdp(launched, "a fresh browser connection was asked for")
        process = launched.process
        assert process is not None
        browser.browser_id = None  # no other user can reach this browser: nothing to tell apart
        launched.cdp = CDPConnection(
            self.reactor,
            lambda data: self._send(launched, data),
            lambda: self._drop_cdp(launched, "closed by the proxy"),
            default_timeout=self.browser_config.call_timeout,
            description=f"the browser the proxy launched for {user_id} (pid {process.pid})",
            run_in_thread=thread_runner(self.reactor),
        )
        self._idle_from_now(user_id, launched)
        return launched.cdp

    async def remove(self, user_id: str) -> None:
        """The user is unregistered: their browser stops and their profile goes."""
        launched = self._browsers.pop(user_id, None)
        if launched is None:
            return
        await self._stop_process(user_id, launched, "its user was unregistered")
        await deferToThread(shutil.rmtree, launched.profile, True)
        log.info("Removed the launched browser of {user_id} and its profile", user_id=user_id)

    def let_go(self, user_id: str) -> None:
        """Another process of a cluster serves the user now (and launches a browser on its
        own host): the one here stops; its profile stays for when the user comes back."""
        launched = self._browsers.pop(user_id, None)
        if launched is not None:
            defer.Deferred.fromCoroutine(self._stop_process(user_id, launched, "its user moved to another process"))

    async def stop(self) -> None:
        """The daemon stops: every launched browser stops, by its PID."""
        await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(self._stop_process(user_id, launched, "the proxy is stopping"))
                for user_id, launched in self._browsers.items()
            ]
        )

    # -- the processes ------------------------------------------------------------------

    def _flags(self) -> list[str]:
        """What every launched Chromium gets besides the pipe and its profile."""
        memory = [f"--js-flags=--max-old-space-size={self.config.memory_mb}"] if self.config.memory_mb else []
        return [*memory, *self.config.args]

    def _start(self, user_id: str, launched: _Launched) -> None:
        os.makedirs(launched.profile, mode=0o700, exist_ok=True)
        launched.numbers = Renumbering()
        launched.process = PipeProcess.spawn(
            self.reactor,
            pipe_argv(self.chromium, launched.profile, headless=True, extra=self._flags()),
            lambda message: self._received(launched, message),
            lambda last_words: self._ended(user_id, launched, last_words),
        )
        log.info(
            "Launched the browser of {user_id} (pid {pid}, profile {profile})",
            user_id=user_id,
            pid=launched.process.pid,
            profile=launched.profile,
        )

    def _send(self, launched: _Launched, data: bytes) -> None:
        call = launched.numbers.outgoing(data)
        if call is not None and launched.process is not None:
            launched.process.write(call)

    def _received(self, launched: _Launched, message: bytes) -> None:
        relayed = launched.numbers.incoming(message)
        if relayed is not None and launched.cdp is not None:
            launched.cdp.message_received(relayed)

    def _drop_cdp(self, launched: _Launched, reason: str) -> None:
        """The connection over the pipe ends; the browser forgets its calls and sessions."""
        cdp, launched.cdp = launched.cdp, None
        if cdp is None:
            return
        if launched.process is not None:
            for message in launched.numbers.closing():
                launched.process.write(message)
        cdp.connection_lost(reason)

    def _ended(self, user_id: str, launched: _Launched, last_words: str) -> None:
        """The browser ended by itself (a crash, a kill): its connection fails, and the link
        starts it again."""
        launched.cancel_idle()
        launched.process = None
        why = "the launched browser exited" + (f": {last_words}" if last_words else "")
        log.warn("The launched browser of {user_id} ended: {why}", user_id=user_id, why=why)
        self._drop_cdp(launched, why)

    async def _stop_process(self, user_id: str, launched: _Launched, why: str) -> None:
        launched.cancel_idle()
        self._drop_cdp(launched, f"the launched browser was stopped: {why}")
        process, launched.process = launched.process, None
        if process is None:
            return
        pid = process.pid
        await process.stop(self.reactor)
        log.info("Stopped the launched browser of {user_id} (pid {pid}): {why}", user_id=user_id, pid=pid, why=why)

    def _idle_from_now(self, user_id: str, launched: _Launched) -> None:
        launched.cancel_idle()
        if self.config.idle_timeout:
            launched.idle = self.reactor.callLater(
                self.config.idle_timeout, lambda: defer.Deferred.fromCoroutine(self._idle(user_id, launched))
            )

    async def _idle(self, user_id: str, launched: _Launched) -> None:
        launched.idle = None
        log.info(
            "Stopping the launched browser of {user_id}: no call for {seconds:g} s (launch.idle_timeout)",
            user_id=user_id,
            seconds=self.config.idle_timeout,
        )
        await self.on_idle(user_id)
        if launched.cdp is None and launched.idle is None:  # no call opened it again meanwhile
            await self._stop_process(user_id, launched, "idle")
