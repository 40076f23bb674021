"""The page book of a single process: page ids from a counter, records kept on the pages.

In one process a `Page` object outlives reconnects and carries its own flags and
emulation, so nothing else needs keeping; the cluster's book (`mcproxy.cluster.state`)
writes the same facts to Redis for the user's next owner.
"""

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mcproxy.interfaces import IPageBook


@implementer(IPageBook)
class MemoryPageBook:
    """Page ids counted from 1 and the isolated contexts, for one process."""

    def __init__(self) -> None:
        self.contexts: dict[str, str] = {}
        self._next = 1

    def load(self) -> Deferred:
        return succeed(None)

    def page_id(self, target_id: str) -> int:
        page_id = self._next
        self._next += 1
        return page_id

    def restore(self, page) -> None:
        """Nothing to restore: the process that numbered a page holds its `Page`."""

    def record(self, page) -> None:
        """Nothing to write: the `Page` itself is the record."""

    def forget(self, target_id: str) -> None:
        """Nothing to drop: the `Page` goes with its target."""

    def prune(self, alive) -> None:
        """Nothing to drop (see `forget`)."""

    def context_made(self, name: str, context_id: str) -> None:
        self.contexts[name] = context_id
