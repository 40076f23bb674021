"""The artifact index of one process: the files its own store holds (see `IArtifactIndex`).

A cluster swaps in an index shared through Redis (`mcproxy.cluster.artifacts`); here every
answer is already known, so each Deferred has fired.
"""

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from mcproxy.artifacts.artifact import Artifact
from mcproxy.interfaces import IArtifactIndex

if TYPE_CHECKING:
    from mcproxy.artifacts.store import ArtifactStore


@implementer(IArtifactIndex)
class LocalIndex:
    """The index that is the store's own holdings: nothing to record, nothing elsewhere."""

    def __init__(self, store: "ArtifactStore"):
        self._store = store

    def add(self, artifact: Artifact) -> Deferred:
        return succeed(None)

    def remove(self, artifact: Artifact) -> None:
        pass

    def listed(self, user_id: str) -> Deferred:
        return succeed(self._store.artifacts(user_id))

    def find(self, user_id: str, uri: str) -> Deferred:
        return succeed(self._store.get(user_id, uri))

    def missing(self, artifacts: list[Artifact]) -> Deferred:
        return succeed(set())

    def fetch(self, artifact: Artifact) -> Deferred:
        return succeed(None)  # never asked: every file is here
