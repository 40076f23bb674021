"""The per-user artifact store: an in-memory index of saved files, their quotas and expiry.

Each user may keep ``artifacts.max_files_per_user`` files of ``artifacts.max_bytes_per_user``
bytes in all (files being written count too); a save past either fails with a ToolError
before anything is written, or, for bytes, as soon as a write would cross the line.

Disk I/O is synchronous: `ArtifactStore.save` is for data already in memory (a
screenshot, a snapshot) and writes it at once; big data goes through
`ArtifactStore.writer`, whose callers hand it one chunk (at most a few MiB) per reactor
turn, so the reactor never stalls for long.

Which artifacts a user has is the `IArtifactIndex`'s to say: the store's own holdings in
one process, records in Redis in a cluster, where each process keeps the files it wrote
(under ``artifacts.shared_dir/<node id>`` when every process reaches that directory) and
its sweep deletes them once they expire or their record is gone (replaced elsewhere).
"""

import os
import secrets

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mcproxy.artifacts import disk
from mcproxy.artifacts.artifact import Artifact, artifact_id
from mcproxy.artifacts.index import LocalIndex
from mcproxy.artifacts.names import guess_mime_type, split_path
from mcproxy.config import ArtifactsConfig, ConfigError
from mcproxy.errors import ToolError
from mcproxy.interfaces import IArtifactIndex

log = Logger()

SWEEP_INTERVAL = 60.0


class ArtifactStore(Service):
    """Per-user artifact files with an in-memory index of those held here.

    ``clock`` provides ``seconds()`` and ``callLater`` (the reactor, or a test Clock).
    `start` / `stop` (or the Service methods) run the expiry sweep once a minute; reads
    check expiry too, so an expired artifact is never served between sweeps. ``node_id``
    is this process in a cluster (the ``holder`` of what it saves); ``index`` says which
    artifacts each user has (`LocalIndex` unless a cluster sets its own before the start).
    """

    def __init__(self, data_dir: str, config: ArtifactsConfig, clock, *, node_id: str = ""):
        self._shared = os.path.abspath(config.shared_dir) if config.shared_dir else ""
        if self._shared and (os.sep in node_id or node_id in (".", "..")):
            raise ConfigError(f"artifacts.shared_dir: the node id {node_id!r} must be usable as a directory name")
        self.node_id = node_id
        self._root = self._root_of(node_id) if self._shared else os.path.join(os.path.abspath(data_dir), "artifacts")
        self._config = config
        self._clock = clock
        self.index: IArtifactIndex = LocalIndex(self)
        self._index: dict[str, Artifact] = {}
        self._owned: dict[str, dict[str, Artifact]] = {}
        self._writing: dict[str, set[ArtifactWriter]] = {}
        self._sweeper: LoopingCall | None = None
        os.makedirs(self._root, mode=0o700, exist_ok=True)
        self._load()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Sweep expired artifacts now and then every minute."""
        if self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self._clock
            self._sweeper.start(SWEEP_INTERVAL, now=True)

    def stop(self) -> None:
        """Stop the sweep."""
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        self.stop()
        return super().stopService()

    def sweep(self) -> Deferred:
        """Forget and delete every expired artifact held here, then those the index no
        longer lists (another process saved over their names); fires when done."""
        now = self._clock.seconds()
        for artifact in [a for a in self._index.values() if a.expires <= now]:
            self._remove(artifact, with_file=True)
        checked = ensureDeferred(self.index.missing(list(self._index.values())))
        return checked.addCallbacks(self._vanished, self._unchecked)

    def _vanished(self, ids: set[str]) -> None:
        for artifact in filter(None, map(self._index.get, ids)):
            log.info("Artifact {id} of user {user_id} was replaced elsewhere", id=artifact.id, user_id=artifact.user_id)
            self._forget(artifact, with_file=True)

    def _unchecked(self, failure) -> None:
        log.warn("Artifacts not checked against the index this time: {reason}", reason=failure.getErrorMessage())

    def _load(self) -> None:
        """Rebuild the holdings from the sidecars on disk, dropping what expired meanwhile."""
        now = self._clock.seconds()
        for artifact in disk.scan(self._root):
            artifact = attrs.evolve(artifact, holder=self.node_id)
            if artifact.expires <= now:
                self._remove(artifact, with_file=True)
            else:
                self._add(artifact)

    # -- writing --------------------------------------------------------------------------

    async def save(self, user_id: str, file_path: str, data: bytes, mime_type: str | None = None) -> Artifact:
        """Store ``data`` (already in memory) as the caller's ``file_path``."""
        writer = self.writer(user_id, file_path, mime_type)
        writer.write(data)
        return await writer.finish()

    def writer(self, user_id: str, file_path: str, mime_type: str | None = None) -> "ArtifactWriter":
        """A streaming writer for ``file_path``; ToolError now if the name is not acceptable
        or the user has no room left (`quota_error`)."""
        parts = split_path(file_path)
        files, used = self._usage(user_id, "/".join(parts))
        limit = self._config.max_files_per_user
        if files >= limit:
            raise ToolError(
                f"You already keep {files} saved files, the most this server keeps per user "
                f"(artifacts.max_files_per_user = {limit}). Save over one of your existing names "
                f"(resources/list shows them) or wait until older ones expire ({self._config.ttl:g} s after saving)."
            )
        if used >= self._config.max_bytes_per_user:
            raise self.quota_error(used, "/".join(parts))
        writer = ArtifactWriter(self, user_id, parts, mime_type or guess_mime_type(parts[-1]))
        self._writing.setdefault(user_id, set()).add(writer)
        return writer

    def _usage(self, user_id: str, replacing: str | None = None) -> tuple[int, int]:
        """Files and bytes the user's live artifacts and unfinished files take, leaving out
        the artifact named ``replacing`` (a save under its name replaces it)."""
        now = self._clock.seconds()
        live = [a for a in self._owned.get(user_id, {}).values() if a.expires > now and a.name != replacing]
        writing = self._writing.get(user_id, set())
        return len(live) + len(writing), sum(a.size for a in live) + sum(w.size for w in writing)

    def room(self, user_id: str, name: str) -> int:
        """Bytes the user may still write to ``name`` (its own unfinished bytes included)."""
        return self._config.max_bytes_per_user - self._usage(user_id, name)[1]

    def quota_error(self, used: int, name: str) -> ToolError:
        """The error for a save that would take a user past ``artifacts.max_bytes_per_user``."""
        return ToolError(
            f'"{name}" was not saved: your saved files would take more than the {self._config.max_bytes_per_user} '
            f"bytes this server keeps per user (artifacts.max_bytes_per_user; {used} in use). Save over one of your "
            f"existing names or wait until older files expire ({self._config.ttl:g} s after saving)."
        )

    def _add(self, artifact: Artifact) -> None:
        self._index[artifact.id] = artifact
        self._owned.setdefault(artifact.user_id, {})[artifact.id] = artifact

    def _ended(self, writer: "ArtifactWriter") -> None:
        """A writer finished or gave up: it no longer counts against its user's quota."""
        writing = self._writing.get(writer.user_id, set())
        writing.discard(writer)
        if not writing:
            self._writing.pop(writer.user_id, None)

    def _user_fd(self, user_id: str) -> int:
        """The caller's own directory (created on first use), opened without following symlinks."""
        return disk.open_user_dir(self._root, user_id)

    async def _commit(self, artifact: Artifact, user_fd: int, parts: list[str], tmp_name: str) -> None:
        """Move a complete temp file to its name and record it (replacing an older artifact
        there); the file goes again when the index cannot record it."""
        disk.move_into_place(user_fd, tmp_name, parts)
        name = "/".join(parts)
        for old in [a for a in self._owned.get(artifact.user_id, {}).values() if a.name == name]:
            self._forget(old, with_file=False)  # the index replaces its record with this one
        try:
            await self.index.add(artifact)
        except BaseException:
            disk.unlink_quietly(user_fd, ["files", *parts])
            disk.prune(user_fd, parts)
            raise
        disk.write_sidecar(user_fd, artifact)
        self._add(artifact)
        log.info(
            "Saved artifact {id} ({name}, {size} bytes) for user {user_id}",
            id=artifact.id,
            name=name,
            size=artifact.size,
            user_id=artifact.user_id,
        )

    def _remove(self, artifact: Artifact, *, with_file: bool) -> None:
        """`_forget` ``artifact`` here and in the index."""
        self.index.remove(artifact)
        self._forget(artifact, with_file=with_file)

    def _forget(self, artifact: Artifact, *, with_file: bool) -> None:
        """Forget ``artifact`` here: its sidecar, and its file (and the directories that
        leaves empty) unless a newer artifact replaced it."""
        self._index.pop(artifact.id, None)
        owned = self._owned.get(artifact.user_id, {})
        owned.pop(artifact.id, None)
        if not owned:
            self._owned.pop(artifact.user_id, None)
        try:
            user_fd = self._user_fd(artifact.user_id)
        except OSError:
            return
        try:
            disk.unlink_quietly(user_fd, ["meta", artifact.id + ".json"])
            if with_file:
                disk.unlink_quietly(user_fd, ["files", *artifact.name.split("/")])
                disk.prune(user_fd, artifact.name.split("/"))
        finally:
            os.close(user_fd)

    # -- reading --------------------------------------------------------------------------

    def get(self, user_id: str, uri: str) -> Artifact | None:
        """The caller's live artifact behind ``uri``, or None (missing, expired, someone else's)."""
        found = artifact_id(uri)
        artifact = self._index.get(found) if found else None
        if artifact is None or artifact.user_id != user_id:
            return None
        if artifact.expires <= self._clock.seconds():
            self._remove(artifact, with_file=True)
            return None
        return artifact

    def artifacts(self, user_id: str) -> list[Artifact]:
        """The caller's live artifacts, oldest first."""
        now = self._clock.seconds()
        return sorted(
            (a for a in self._owned.get(user_id, {}).values() if a.expires > now),
            key=lambda a: (a.created, a.name),
        )

    def read(self, user_id: str, uri: str) -> tuple[Artifact, bytes] | None:
        """The caller's artifact and its bytes, or None (in this thread: small files only)."""
        artifact = self.get(user_id, uri)
        if artifact is None:
            return None
        data = self.read_bytes(artifact)
        if data is None:
            self.lost(artifact)
            return None
        return artifact, data

    def reads(self, artifact: Artifact) -> bool:
        """Whether this process reads the artifact's file itself: it wrote it, or every
        process's files are in ``artifacts.shared_dir``."""
        return artifact.holder == self.node_id or bool(self._shared)

    def _root_of(self, holder: str) -> str:
        return os.path.join(self._shared, holder)

    def read_bytes(self, artifact: Artifact) -> bytes | None:
        """The artifact's bytes, or None when its file is gone (safe in a thread); only for
        an artifact this process `reads`."""
        root = self._root if artifact.holder == self.node_id else self._root_of(artifact.holder)
        try:
            user_fd = disk.open_user_dir(root, artifact.user_id, create=False)
            try:
                return disk.read_file(user_fd, ["files", *artifact.name.split("/")])
            finally:
                os.close(user_fd)
        except OSError:
            return None

    def lost(self, artifact: Artifact) -> None:
        """Forget an artifact whose file is gone (deleted, or swapped for something else)."""
        log.warn("Artifact {id} of user {user_id} lost its file", id=artifact.id, user_id=artifact.user_id)
        if artifact.holder == self.node_id:
            self._remove(artifact, with_file=False)
        else:
            self.index.remove(artifact)


class ArtifactWriter:
    """Streams one artifact to a temp file; `finish` puts it in place, `abort` removes it.

    Each `write` goes to disk at once: callers pass one chunk per reactor turn. It holds
    open files: always end with `finish` or `abort` (``try``/``except BaseException``).
    """

    def __init__(self, store: ArtifactStore, user_id: str, parts: list[str], mime_type: str):
        self._store = store
        self.user_id = user_id
        self._parts = parts
        self._mime_type = mime_type
        self._id = secrets.token_hex(16)
        self._tmp_name = self._id + ".part"
        self.size = 0
        self._user_fd = store._user_fd(user_id)
        try:
            self._fd: int | None = disk.create_temp(self._user_fd, self._tmp_name)
        except OSError as e:
            os.close(self._user_fd)
            raise ToolError(f"Cannot create a file in your artifact directory: {e.strerror}.") from None

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; past ``artifacts.max_bytes`` the file is removed and ToolError raised."""
        if self._fd is None:
            raise ToolError("This file was already finished or abandoned.")
        limit = self._store._config.max_bytes
        name = "/".join(self._parts)
        if self.size + len(chunk) > limit:
            self.abort()
            raise ToolError(
                f'"{name}" would be larger than the {limit} bytes a saved file may have '
                "(artifacts.max_bytes), so it was not saved."
            )
        room = self._store.room(self.user_id, name)
        if len(chunk) > room:
            self.abort()
            raise self._store.quota_error(self._store._config.max_bytes_per_user - room, name)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(chunk)

    async def finish(self) -> Artifact:
        """Close the file, move it to its name and record it; the `Artifact`."""
        if self._fd is None:
            raise ToolError("This file was already finished or abandoned.")
        os.close(self._fd)
        self._fd = None
        now = self._store._clock.seconds()
        artifact = Artifact(
            id=self._id,
            user_id=self.user_id,
            name="/".join(self._parts),
            mime_type=self._mime_type,
            size=self.size,
            created=now,
            expires=now + self._store._config.ttl,
            holder=self._store.node_id,
        )
        try:
            await self._store._commit(artifact, self._user_fd, self._parts, self._tmp_name)
        finally:
            self._discard()
        return artifact

    def abort(self) -> None:
        """Give up: close and delete the partial file. Safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._discard()

    def _discard(self) -> None:
        self._store._ended(self)
        if self._user_fd >= 0:
            disk.unlink_quietly(self._user_fd, ["tmp", self._tmp_name])
            os.close(self._user_fd)
            self._user_fd = -1
