"""Records of Streamable HTTP sessions, from which another process resumes a session
(`mcproxy.interfaces.ISessionRecords`; the cluster keeps them in Redis,
`mcproxy.cluster.state.RedisSessionRecords`).

A record holds what a session's next request needs that is not in the request: the
negotiated protocol, the client's ``initialize`` parameters, the log level and the
session's view of the pages (selected page, pages it opened).
"""

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mcproxy.interfaces import ISessionRecords


@attrs.frozen
class SessionRecord:
    """A Streamable HTTP session as its record keeps it."""

    session_id: str
    user_id: str
    token_id: str | None
    protocol_version: str
    #: The ``initialize`` params, as JSON (protocolVersion, capabilities, clientInfo).
    client: dict
    log_level: str | None = None
    selected_page_id: int | None = None
    opened_page_ids: frozenset[int] = frozenset()
    #: When the session was created (epoch seconds).
    created: float = 0.0


@implementer(ISessionRecords)
class NoSessionRecords:
    """One process: the session registry is the only record, so a session it does not
    hold is gone."""

    def saved(self, session) -> None:
        """Nothing to write."""

    def ended(self, session) -> None:
        """Nothing to drop."""

    def load(self, user_id: str, session_id: str) -> Deferred:
        return succeed(None)
