"""The MCP resources view of the artifacts: ``resources/list`` and ``resources/read``.

A caller sees only their own live artifacts, as the store's index lists them. Reading a
resource reads the whole file, as ``resources/read`` has to answer with all of it (bounded
by ``artifacts.max_bytes``): here, or from the process of a cluster that holds it. The
reading and encoding run away from the reactor.
"""

from datetime import UTC, datetime

import mcp_types
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThread

from mcproxy.artifacts.artifact import Artifact
from mcproxy.artifacts.names import is_text
from mcproxy.artifacts.store import ArtifactStore
from mcproxy.mcp.protocol import resource_not_found
from mcproxy.threads import b64encode_in_pieces


class ArtifactResources:
    """The `mcproxy.mcp.protocol.McpServer` resource hook over an `ArtifactStore` and its index.

    ``run_blocking(fn, *args)`` -> Deferred runs the reading and encoding of a resource
    (up to ``artifacts.max_bytes``) away from the reactor.
    """

    def __init__(self, store: ArtifactStore, run_blocking=deferToThread):
        self._store = store
        self._run_blocking = run_blocking

    def list_resources(self, principal) -> Deferred:
        """``resources/list``: Deferred[list[Resource]], the caller's own artifacts."""
        return ensureDeferred(self._store.index.listed(principal.user_id)).addCallback(
            lambda artifacts: [
                mcp_types.Resource(
                    uri=a.uri,
                    name=a.name,
                    mime_type=a.mime_type,
                    size=a.size,
                    description=f"Saved by a tool at {_iso(a.created)}; kept until {_iso(a.expires)}.",
                )
                for a in artifacts
            ]
        )

    def read_resource(self, principal, uri: str) -> Deferred:
        """``resources/read``: Deferred[ReadResourceResult], text types as text, everything
        else base64. Someone else's artifact is as "not found" as one that never existed,
        and so is one whose file is gone with the process that held it."""
        return Deferred.fromCoroutine(self._read(principal, uri))

    async def _read(self, principal, uri: str) -> mcp_types.ReadResourceResult:
        store = self._store
        artifact = await store.index.find(principal.user_id, uri)
        if artifact is None:
            raise resource_not_found(uri)
        if store.reads(artifact):
            result = await self._run_blocking(self._encode_file, artifact, uri)
            if result is None:
                store.lost(artifact)
                raise resource_not_found(uri)
            return result
        data = await store.index.fetch(artifact)
        if data is None:
            raise resource_not_found(uri)
        return await self._run_blocking(_encode, artifact, uri, data)

    def _encode_file(self, artifact: Artifact, uri: str) -> mcp_types.ReadResourceResult | None:
        data = self._store.read_bytes(artifact)
        return None if data is None else _encode(artifact, uri, data)


def _encode(artifact: Artifact, uri: str, data: bytes) -> mcp_types.ReadResourceResult:
    if is_text(artifact.mime_type):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return mcp_types.ReadResourceResult(
                contents=[mcp_types.TextResourceContents(uri=uri, mime_type=artifact.mime_type, text=text)]
            )
    blob = b64encode_in_pieces(data)
    return mcp_types.ReadResourceResult(
        contents=[mcp_types.BlobResourceContents(uri=uri, mime_type=artifact.mime_type, blob=blob)]
    )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
