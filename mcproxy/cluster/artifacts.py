"""The artifacts of a cluster: one index in Redis, files fetched from the process that holds them.

Tool calls save a user's artifacts on the user's owner, which keeps the file (its
`ArtifactStore`) and records it here, so that the user's next owner lists it and reads
it: from ``artifacts.shared_dir`` when every process reaches that directory, otherwise
from its holder's internal listener (`HeldArtifacts`), while that process runs.

Keys, under the prefix: ``art:<user>`` (hash: artifact id -> the record as compact JSON:
name, mime, size, created, expires, node) and ``artname:<user>`` (hash: name -> artifact
id, so that a save replaces the user's artifact of that name wherever it was saved). Both
expire with the user's last artifact; a holder's sweep removes the records of its files as
they expire. A save is one script call, listing and reading one each; nothing else of a
tool call touches Redis.
"""

import json

from twisted.internet.defer import TimeoutError
from twisted.internet.error import ConnectionClosed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import implementer

from mcproxy.artifacts.artifact import URI_PREFIX, Artifact, artifact_id
from mcproxy.artifacts.store import ArtifactStore
from mcproxy.auth.principal import Principal
from mcproxy.cluster.control import Control, CoordinationUnavailable
from mcproxy.cluster.forward import Forwarder, ForwardFailed
from mcproxy.cluster.hop import BadAnswer
from mcproxy.errors import NotFound, ToolError
from mcproxy.interfaces import IArtifactIndex
from mcproxy.web.routes import Route

log = Logger()

#: Seconds a file may take to come from the process that holds it.
FETCH_TIMEOUT = 30.0

#: Record an artifact, dropping the user's earlier one of the same name.
#: KEYS art:<user>, artname:<user>. ARGV id, name, record, ms until it expires.
SAVE = """
local old = redis.call('HGET', KEYS[2], ARGV[2])
if old then redis.call('HDEL', KEYS[1], old) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < tonumber(ARGV[4]) then redis.call('PEXPIRE', key, ARGV[4]) end
end
"""

#: Forget an artifact; its name only if no newer artifact took it.
#: KEYS art:<user>, artname:<user>. ARGV id, name.
REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
"""

#: Which artifacts are still recorded: KEYS art:<user> of each, ARGV their ids; 1 or 0 each.
RECORDED = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HEXISTS', key, ARGV[i]) end
return out
"""

#: The user's records, flat: {id, record, id, record, ...}. KEYS art:<user>.
RECORDS = "return redis.call('HGETALL', KEYS[1])"

#: One record, or false. KEYS art:<user>. ARGV id.
RECORD = "return redis.call('HGET', KEYS[1], ARGV[1])"

#: A node's internal URL while its lease lasts, else ''. KEYS node:<id>.
NODE_URL = "if redis.call('PTTL', KEYS[1]) > 0 then return redis.call('HGET', KEYS[1], 'url') or '' end return ''"

#: Held artifacts checked against the index in one script call, at most this many.
CHECK_BATCH = 512

#: The internal route of a held file.
PATH = b"/_cluster/artifacts/"


@implementer(IArtifactIndex)
class RedisArtifactIndex:
    """The artifact index of a cluster (module docstring), through ``control`` once the node
    is connected; a file held elsewhere is fetched with ``forwarder``, at most ``max_bytes``."""

    def __init__(self, clock, forwarder: Forwarder, *, max_bytes: int):
        self.clock = clock
        self.forwarder = forwarder
        self.max_bytes = max_bytes
        self.control: Control | None = None

    def _control(self) -> Control:
        if self.control is None:
            raise CoordinationUnavailable("this process is not connected to the cluster yet")
        return self.control

    def _keys(self, user_id: str) -> list[str]:
        """``art:<user>`` and ``artname:<user>``."""
        control = self._control()
        return [control.key("art", user_id), control.key("artname", user_id)]

    def _records(self, user_id: str) -> list[str]:
        """``art:<user>`` alone."""
        return [self._control().key("art", user_id)]

    async def add(self, artifact: Artifact) -> None:
        record = {
            "name": artifact.name,
            "mime": artifact.mime_type,
            "size": artifact.size,
            "created": artifact.created,
            "expires": artifact.expires,
            "node": artifact.holder,
        }
        ttl_ms = max(1, int((artifact.expires - self.clock.seconds()) * 1000))
        try:
            await self._control().eval(
                SAVE, self._keys(artifact.user_id), [artifact.id, artifact.name, json.dumps(record), ttl_ms]
            )
        except CoordinationUnavailable as e:
            raise ToolError(
                f'"{artifact.name}" was not saved: the cluster could not record it ({e}). Try again.'
            ) from None

    def remove(self, artifact: Artifact) -> None:
        if self.control is None:
            return  # not connected yet: the record expires with the artifact
        removing = self.control.eval(REMOVE, self._keys(artifact.user_id), [artifact.id, artifact.name])
        removing.addErrback(
            lambda f: log.warn("Artifact {id} not removed from the index: {reason}", id=artifact.id, reason=f.value)
        )

    async def listed(self, user_id: str) -> list[Artifact]:
        flat = await self._control().eval(RECORDS, self._records(user_id), [])
        now = self.clock.seconds()
        found = (_artifact(user_id, flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        return sorted((a for a in found if a.expires > now), key=lambda a: (a.created, a.name))

    async def find(self, user_id: str, uri: str) -> Artifact | None:
        found = artifact_id(uri)
        if found is None:
            return None
        raw = await self._control().eval(RECORD, self._records(user_id), [found])
        artifact = _artifact(user_id, found, raw) if raw else None
        return artifact if artifact is not None and artifact.expires > self.clock.seconds() else None

    async def missing(self, artifacts: list[Artifact]) -> set[str]:
        if self.control is None:
            return set()  # not connected yet: the next sweep checks
        gone: set[str] = set()
        for start in range(0, len(artifacts), CHECK_BATCH):
            batch = artifacts[start : start + CHECK_BATCH]
            keys = [key for a in batch for key in self._records(a.user_id)]
            recorded = await self.control.eval(RECORDED, keys, [a.id for a in batch])
            gone.update(a.id for a, kept in zip(batch, recorded, strict=True) if not int(kept))
        return gone

    async def fetch(self, artifact: Artifact) -> bytes | None:
        holder = artifact.holder
        control = self._control()
        url = await control.eval(NODE_URL, [control.key("node", holder)], [])
        if not url:
            log.warn(
                "Artifact {id} of user {user_id} is held by node {node}, which is gone",
                id=artifact.id,
                user_id=artifact.user_id,
                node=holder,
            )
            return None
        try:
            # A paused or cut-off holder may never answer: the read gives up, as for a dead one.
            status, data = await self.forwarder.fetch(
                to=holder,
                url=url,
                principal=Principal(artifact.user_id, frozenset()),
                path=PATH + artifact.id.encode("ascii"),
                limit=self.max_bytes,
                timeout=FETCH_TIMEOUT,
            )
        except (ForwardFailed, BadAnswer, ConnectionClosed, TimeoutError) as e:
            status, data = 0, f"{e.__class__.__name__}: {e}".encode()
        if status != 200:
            log.warn(
                "Artifact {id} of user {user_id} could not be fetched from node {node}: {status} {answer}",
                id=artifact.id,
                user_id=artifact.user_id,
                node=holder,
                status=status,
                answer=data[:200].decode("utf-8", "replace"),
            )
            return None
        return data


def _artifact(user_id: str, artifact_id: str, raw: str) -> Artifact:
    record = json.loads(raw)
    return Artifact(
        id=artifact_id,
        user_id=user_id,
        name=record["name"],
        mime_type=record["mime"],
        size=int(record["size"]),
        created=float(record["created"]),
        expires=float(record["expires"]),
        holder=record["node"],
    )


class HeldArtifacts:
    """``GET /_cluster/artifacts/<id>``, on the internal listener only: the file of an artifact
    this process holds, for the user the request's envelope names (anyone else's is as
    missing as one that never existed). ``run_blocking`` reads it away from the reactor."""

    def __init__(self, store: ArtifactStore, run_blocking=deferToThread):
        self._store = store
        self._run_blocking = run_blocking

    def routes(self) -> tuple[Route, ...]:
        pattern = PATH.decode() + r"(?P<artifact_id>[0-9a-f]{32})"
        return (Route(b"GET", pattern, self.send, auth="mcp"),)

    async def send(self, request, artifact_id: str) -> None:
        artifact = self._store.get(request.principal.user_id, URI_PREFIX + artifact_id)
        data = None if artifact is None else await self._run_blocking(self._store.read_bytes, artifact)
        if data is None:
            if artifact is not None:
                self._store.lost(artifact)
            raise NotFound("this process holds no such artifact")
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % len(data))
        request.write(data)
        request.finish()
