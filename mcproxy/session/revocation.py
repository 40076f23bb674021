"""Sessions end soon after the API token that opened them is revoked or expires.

Every request is authenticated again, but a stream (legacy ``GET /sse``, a standalone
Streamable HTTP ``GET``) lives on one request; without this it would outlive its token. So
would a browser tunnel (`mcproxy.tunnel`), which the watch closes alike.
"""

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

CHECK_INTERVAL = 5.0


class RevocationWatch(Service):
    """Every ``interval`` seconds, ends the sessions whose token is gone, revoked or expired.

    ``also`` holds more of what lives on a token (the browser tunnels): like the session
    registry, each has ``token_ids()`` and ``close_token(token_id)`` (how many it ended).
    """

    def __init__(self, sessions, store, clock, interval: float = CHECK_INTERVAL, *, also=()):
        self._holders = (sessions, *also)
        self._store = store
        self._clock = clock
        self._interval = interval
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.check()))
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False).addErrback(
            lambda failure: log.failure("The token revocation check stopped", failure)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    async def check(self) -> None:
        """One pass over the tokens of the live sessions (a store failure skips a token)."""
        token_ids = set().union(*(holder.token_ids() for holder in self._holders))
        for token_id in sorted(token_ids):
            await self.check_token(token_id)

    async def check_token(self, token_id: str) -> int:
        """End the sessions of ``token_id`` if it is gone, revoked or expired now; how many
        ended. Told of a revocation (here or, in a cluster, on another process), the sessions
        end at once instead of at the next pass; the store decides, so a revocation that
        takes effect later (a rotation's grace) ends nothing yet."""
        try:
            record = await self._store.get_token(token_id)
        except CancelledError:
            raise
        except Exception:
            log.failure("Could not check token {token_id} of open sessions", token_id=token_id)
            return 0
        now = self._clock.seconds()
        if record is None:
            why = "deleted"
        elif record.revoked_at is not None and record.revoked_at <= now:
            why = "revoked"
        elif record.expires_at is not None and record.expires_at <= now:
            why = "expired"
        else:
            return 0
        ended = sum(holder.close_token(token_id) for holder in self._holders)
        log.info(
            "Token {token_id} {why}: ended {count} session(s) and tunnel(s)", token_id=token_id, why=why, count=ended
        )
        return ended
