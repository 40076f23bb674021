"""Files that tools produce, kept per user and handed to the client as MCP resources.

A tool's ``filePath`` names a file on *the proxy's* disk, which in a shared proxy is a
multi-tenant hole (DESIGN.md §4). So the path is only a name inside the caller's own
directory, ``<data_dir>/artifacts/<hash of user id>/files/``; the file is listed by
``resources/list`` and read by ``resources/read`` as ``mcproxy://artifacts/<id>``, for its
owner only, until ``artifacts.ttl`` passes.

Each user may keep ``artifacts.max_files_per_user`` files of ``artifacts.max_bytes_per_user``
bytes in all (files being written count too); a save past either fails with a ToolError
before anything is written, or, for bytes, as soon as a write would cross the line. A name
has at most `MAX_PATH_DEPTH` segments and `MAX_PATH_LENGTH` characters, so saving creates a
bounded number of directories; directories left empty when their files expire or are
replaced are removed.

On disk, per user: ``files/`` (what the client named), ``meta/<id>.json`` (one sidecar
per artifact, from which the index is rebuilt at start) and ``tmp/`` (files being
written; renamed into place when complete, cleared at start).

Disk I/O is synchronous: `ArtifactStore.save` is for data already in memory (a
screenshot, a snapshot) and writes it at once; big data goes through
`ArtifactStore.writer`, whose callers hand it one chunk (at most a few MiB) per reactor
turn, so the reactor never stalls for long. Reading a resource reads the whole file, as
``resources/read`` has to answer with all of it (bounded by ``artifacts.max_bytes``).
"""

import base64
import errno
import hashlib
import json
import mimetypes
import os
import re
import secrets
import stat
from datetime import datetime, timezone

import attrs
import mcp_types
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from mcproxy.config import ArtifactsConfig
from mcproxy.errors import ToolError
from mcproxy.mcp.codes import INVALID_PARAMS
from mcproxy.mcp.jsonrpc import RpcError

log = Logger()

URI_PREFIX = "mcproxy://artifacts/"
SWEEP_INTERVAL = 60.0
#: Characters of a ``filePath``, and the most segments (directories and file name) it may have.
MAX_PATH_LENGTH = 1024
MAX_PATH_DEPTH = 16
#: Bytes of one segment in UTF-8 (the usual file system limit).
MAX_NAME_BYTES = 255
_ID = re.compile(r"[0-9a-f]{32}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "image/svg+xml")
_EXTRA_TYPES = {".md": "text/markdown", ".heapsnapshot": "application/json", ".webp": "image/webp"}


@attrs.frozen
class Artifact:
    """One saved file: ``name`` is the caller's relative path, ``uri`` how the client reads it."""

    id: str
    user_id: str
    name: str
    mime_type: str
    size: int
    created: float
    expires: float

    @property
    def uri(self) -> str:
        return URI_PREFIX + self.id

    def sidecar(self) -> dict:
        """What ``meta/<id>.json`` holds, enough to rebuild the index after a restart."""
        return {
            "id": self.id,
            "user": self.user_id,
            "name": self.name,
            "mime": self.mime_type,
            "size": self.size,
            "created": self.created,
            "expires": self.expires,
        }


def split_path(file_path: str) -> list[str]:
    """The segments of a client's relative file name; ToolError for anything that could escape."""
    advice = "give a relative name like 'shots/home.png'; files are kept in your own artifact directory."
    if not isinstance(file_path, str) or not file_path.strip():
        raise ToolError(f'"filePath" is empty: {advice}')
    if len(file_path) > MAX_PATH_LENGTH:
        raise ToolError(
            f'"filePath" has {len(file_path)} characters, more than the {MAX_PATH_LENGTH} allowed: use a shorter name.'
        )
    if "\0" in file_path:
        raise ToolError(f'"filePath" contains a NUL character: {advice}')
    if file_path.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", file_path):
        raise ToolError(f'"filePath" {file_path!r} is an absolute path, which this server does not write to: {advice}')
    parts = [part for part in re.split(r"[/\\]", file_path) if part not in ("", ".")]
    if ".." in parts:
        raise ToolError(f'"filePath" {file_path!r} goes up with "..": {advice}')
    if not parts:
        raise ToolError(f'"filePath" {file_path!r} names no file: {advice}')
    if len(parts) > MAX_PATH_DEPTH:
        raise ToolError(
            f'"filePath" has {len(parts)} segments, more than the {MAX_PATH_DEPTH} allowed (at most '
            f"{MAX_PATH_DEPTH - 1} directories): use fewer directories."
        )
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ToolError(
                f'"filePath" has a segment longer than {MAX_NAME_BYTES} bytes, which file systems refuse: shorten it.'
            )
    return parts


def guess_mime_type(name: str) -> str:
    """The MIME type a file name suggests; ``application/octet-stream`` when it suggests none."""
    extension = os.path.splitext(name)[1].lower()
    return _EXTRA_TYPES.get(extension) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def is_text(mime_type: str) -> bool:
    """Whether ``resources/read`` returns this type as text rather than base64."""
    base = mime_type.split(";")[0].strip().lower()
    return base.startswith("text/") or base in _TEXT_TYPES or base.endswith(("+json", "+xml"))


def not_found(uri: str) -> RpcError:
    """What ``resources/read`` answers for a resource that is missing, expired or someone else's.

    The same error as `mcproxy.mcp.protocol.EmptyResources`, so that nothing tells apart
    "never existed" from "belongs to another user".
    """
    return RpcError(INVALID_PARAMS, f"Resource not found: {uri}", data={"uri": uri})


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _open_dir(parent_fd: int, name: str, create: bool) -> int:
    """Open directory ``name`` under ``parent_fd`` without following a symlink."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


class ArtifactStore(Service):
    """Per-user artifact files with an in-memory index; also the McpServer resource hook.

    ``clock`` provides ``seconds()`` and ``callLater`` (the reactor, or a test Clock).
    `start` / `stop` (or the Service methods) run the expiry sweep once a minute; reads
    check expiry too, so an expired artifact is never served between sweeps.
    """

    def __init__(self, data_dir: str, config: ArtifactsConfig, clock, run_blocking=deferToThread):
        """``run_blocking(fn, *args)`` -> Deferred runs the reading and encoding of a
        resource (up to ``artifacts.max_bytes``) away from the reactor."""
        self._root = os.path.join(os.path.abspath(data_dir), "artifacts")
        self._config = config
        self._clock = clock
        self._run_blocking = run_blocking
        self._index: dict[str, Artifact] = {}
        self._owned: dict[str, dict[str, Artifact]] = {}
        self._writing: dict[str, set["ArtifactWriter"]] = {}
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

    def sweep(self) -> None:
        """Forget and delete every expired artifact."""
        now = self._clock.seconds()
        for artifact in [a for a in self._index.values() if a.expires <= now]:
            self._remove(artifact, with_file=True)

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
        root_fd = os.open(self._root, _DIR_FLAGS)
        try:
            return _open_dir(root_fd, _user_dir(user_id), create=True)
        finally:
            os.close(root_fd)

    def _commit(self, artifact: Artifact, user_fd: int, parts: list[str], tmp_name: str) -> None:
        """Move a complete temp file to its name and record it (replacing an older artifact there)."""
        parent_fd = -1
        try:
            parent_fd = _open_dir(user_fd, "files", create=True)
            for part in parts[:-1]:
                next_fd = _open_dir(parent_fd, part, create=True)
                os.close(parent_fd)
                parent_fd = next_fd
            tmp_fd = _open_dir(user_fd, "tmp", create=True)
            try:
                os.rename(tmp_name, parts[-1], src_dir_fd=tmp_fd, dst_dir_fd=parent_fd)
            finally:
                os.close(tmp_fd)
        except OSError as e:
            if parent_fd >= 0:
                os.close(parent_fd)
                parent_fd = -1
            _prune(user_fd, parts)
            raise _path_error(parts, e) from None
        finally:
            if parent_fd >= 0:
                os.close(parent_fd)
        name = "/".join(parts)
        for old in [a for a in self._owned.get(artifact.user_id, {}).values() if a.name == name]:
            self._remove(old, with_file=False)
        meta_fd = _open_dir(user_fd, "meta", create=True)
        try:
            _write_file(meta_fd, artifact.id + ".json", json.dumps(artifact.sidecar()).encode())
        finally:
            os.close(meta_fd)
        self._add(artifact)
        log.info(
            "Saved artifact {id} ({name}, {size} bytes) for user {user_id}",
            id=artifact.id,
            name=name,
            size=artifact.size,
            user_id=artifact.user_id,
        )

    def _remove(self, artifact: Artifact, *, with_file: bool) -> None:
        """Forget ``artifact``: its sidecar, and its file (and the directories that leaves
        empty) unless a newer artifact replaced it."""
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
            _unlink_quietly(user_fd, ["meta", artifact.id + ".json"])
            if with_file:
                _unlink_quietly(user_fd, ["files", *artifact.name.split("/")])
                _prune(user_fd, artifact.name.split("/"))
        finally:
            os.close(user_fd)

    # -- reading --------------------------------------------------------------------------

    def get(self, user_id: str, uri: str) -> Artifact | None:
        """The caller's live artifact behind ``uri``, or None (missing, expired, someone else's)."""
        if not uri.startswith(URI_PREFIX) or not _ID.fullmatch(uri[len(URI_PREFIX) :]):
            return None
        artifact = self._index.get(uri[len(URI_PREFIX) :])
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
        data = self._read_bytes(artifact)
        if data is None:
            self._lost(artifact)
            return None
        return artifact, data

    def _read_bytes(self, artifact: Artifact) -> bytes | None:
        """The artifact's bytes, or None when its file is gone (safe in a thread)."""
        try:
            user_fd = self._user_fd(artifact.user_id)
            try:
                return _read_file(user_fd, ["files", *artifact.name.split("/")])
            finally:
                os.close(user_fd)
        except OSError:
            return None

    def _lost(self, artifact: Artifact) -> None:
        log.warn("Artifact {id} of user {user_id} lost its file", id=artifact.id, user_id=artifact.user_id)
        self._remove(artifact, with_file=False)

    # -- the McpServer resources hook ------------------------------------------------------

    def list_resources(self, principal) -> list[mcp_types.Resource]:
        """``resources/list``: the caller's own artifacts."""
        return [
            mcp_types.Resource(
                uri=a.uri,
                name=a.name,
                mime_type=a.mime_type,
                size=a.size,
                description=f"Saved by a tool at {_iso(a.created)}; kept until {_iso(a.expires)}.",
            )
            for a in self.artifacts(principal.user_id)
        ]

    def read_resource(self, principal, uri: str) -> Deferred:
        """``resources/read``: Deferred[ReadResourceResult], text types as text, everything
        else base64; read and encoded by ``run_blocking``."""
        artifact = self.get(principal.user_id, uri)
        if artifact is None:
            return fail(not_found(uri))

        def encoded(result):
            if result is None:
                self._lost(artifact)
                raise not_found(uri)
            return result

        return self._run_blocking(self._encode, artifact, uri).addCallback(encoded)

    def _encode(self, artifact: Artifact, uri: str) -> mcp_types.ReadResourceResult | None:
        data = self._read_bytes(artifact)
        if data is None:
            return None
        if is_text(artifact.mime_type):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                return mcp_types.ReadResourceResult(
                    contents=[mcp_types.TextResourceContents(uri=uri, mime_type=artifact.mime_type, text=text)]
                )
        blob = base64.b64encode(data).decode("ascii")
        return mcp_types.ReadResourceResult(
            contents=[mcp_types.BlobResourceContents(uri=uri, mime_type=artifact.mime_type, blob=blob)]
        )

    # -- the index at start ----------------------------------------------------------------

    def _load(self) -> None:
        """Rebuild the index from the sidecars; clear unfinished temp files; drop what expired."""
        now = self._clock.seconds()
        for user_dir in os.listdir(self._root):
            user_path = os.path.join(self._root, user_dir)
            if os.path.islink(user_path) or not os.path.isdir(user_path):
                continue
            tmp_path = os.path.join(user_path, "tmp")
            if os.path.isdir(tmp_path) and not os.path.islink(tmp_path):
                for name in os.listdir(tmp_path):
                    os.unlink(os.path.join(tmp_path, name))
            meta_path = os.path.join(user_path, "meta")
            if not os.path.isdir(meta_path) or os.path.islink(meta_path):
                continue
            for name in os.listdir(meta_path):
                if name.startswith("."):  # a sidecar write cut short
                    os.unlink(os.path.join(meta_path, name))
                    continue
                artifact = _read_sidecar(os.path.join(meta_path, name))
                if artifact is None or _user_dir(artifact.user_id) != user_dir or artifact.id + ".json" != name:
                    log.warn("Ignoring unreadable artifact sidecar {path}", path=os.path.join(meta_path, name))
                    continue
                if artifact.expires <= now:
                    self._remove(artifact, with_file=True)
                else:
                    self._add(artifact)


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
            tmp_fd = _open_dir(self._user_fd, "tmp", create=True)
            try:
                self._fd: int | None = os.open(
                    self._tmp_name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=tmp_fd,
                )
            finally:
                os.close(tmp_fd)
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
        )
        try:
            self._store._commit(artifact, self._user_fd, self._parts, self._tmp_name)
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
            _unlink_quietly(self._user_fd, ["tmp", self._tmp_name])
            os.close(self._user_fd)
            self._user_fd = -1


def _user_dir(user_id: str) -> str:
    """A directory name for any user id: user ids may contain anything."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _path_error(parts: list[str], error: OSError) -> ToolError:
    name = "/".join(parts)
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
        return ToolError(
            f'Cannot save "{name}": a part of that path is a symlink, or a file where a directory is needed '
            "(or the reverse). Choose another name."
        )
    if error.errno == errno.ENAMETOOLONG:
        return ToolError(f'Cannot save "{name}": the name is too long. Choose a shorter one.')
    return ToolError(f'Cannot save "{name}": {error.strerror}.')


def _walk(user_fd: int, parts: list[str]) -> int:
    """The directory holding ``parts[-1]``, opened without following symlinks (caller closes)."""
    fd = os.dup(user_fd)
    try:
        for part in parts[:-1]:
            next_fd = _open_dir(fd, part, create=False)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _prune(user_fd: int, parts: list[str]) -> None:
    """Remove the directories on the way to ``files/<parts>`` that are empty, deepest first."""
    for depth in range(len(parts) - 1, 0, -1):
        try:
            parent = _walk(user_fd, ["files", *parts[:depth]])
        except OSError:
            return
        try:
            os.rmdir(parts[depth - 1], dir_fd=parent)
        except OSError:
            return
        finally:
            os.close(parent)


def _unlink_quietly(user_fd: int, parts: list[str]) -> None:
    try:
        fd = _walk(user_fd, parts)
    except OSError:
        return
    try:
        os.unlink(parts[-1], dir_fd=fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_file(user_fd: int, parts: list[str]) -> bytes:
    parent = _walk(user_fd, parts)
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read()


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write a small file atomically (temp name, then rename) inside ``dir_fd``."""
    tmp = f".{name}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def _read_sidecar(path: str) -> Artifact | None:
    try:
        with open(path, "rb") as f:
            raw = json.load(f)
        return Artifact(
            id=str(raw["id"]),
            user_id=str(raw["user"]),
            name=str(raw["name"]),
            mime_type=str(raw["mime"]),
            size=int(raw["size"]),
            created=float(raw["created"]),
            expires=float(raw["expires"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
