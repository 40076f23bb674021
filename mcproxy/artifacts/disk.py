"""The artifact directories on disk, reached only through directory descriptors.

Per user: ``files/`` (what the client named), ``meta/<id>.json`` (one sidecar per
artifact, from which the index is rebuilt at start) and ``tmp/`` (files being written;
renamed into place when complete, cleared at start). Every step opens the next directory
relative to the last one without following symlinks, so a link planted anywhere in a
user's tree leads nowhere; directories left empty when files go are removed.

All of it is synchronous and meant for small steps (see `mcproxy.artifacts.store`).
"""

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator

from twisted.logger import Logger

from mcproxy.artifacts.artifact import Artifact, read_sidecar
from mcproxy.errors import ToolError

log = Logger()

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def user_dir(user_id: str) -> str:
    """A directory name for any user id: user ids may contain anything."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def open_dir(parent_fd: int, name: str, create: bool) -> int:
    """Open directory ``name`` under ``parent_fd`` without following a symlink."""
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def open_user_dir(root: str, user_id: str, *, create: bool = True) -> int:
    """The user's own directory under ``root`` (created on first use unless not to); the
    caller closes it."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        return open_dir(root_fd, user_dir(user_id), create=create)
    finally:
        os.close(root_fd)


def create_temp(user_fd: int, name: str) -> int:
    """A new file ``tmp/<name>`` open for writing; the caller closes it."""
    tmp_fd = open_dir(user_fd, "tmp", create=True)
    try:
        return os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=tmp_fd)
    finally:
        os.close(tmp_fd)


def move_into_place(user_fd: int, tmp_name: str, parts: list[str]) -> None:
    """Rename ``tmp/<tmp_name>`` to ``files/<parts>``, making the directories on the way;
    ToolError (with the directories it made removed) when the path is blocked."""
    parent_fd = -1
    try:
        parent_fd = open_dir(user_fd, "files", create=True)
        for part in parts[:-1]:
            next_fd = open_dir(parent_fd, part, create=True)
            os.close(parent_fd)
            parent_fd = next_fd
        tmp_fd = open_dir(user_fd, "tmp", create=True)
        try:
            os.rename(tmp_name, parts[-1], src_dir_fd=tmp_fd, dst_dir_fd=parent_fd)
        finally:
            os.close(tmp_fd)
    except OSError as e:
        if parent_fd >= 0:
            os.close(parent_fd)
            parent_fd = -1
        prune(user_fd, parts)
        raise _path_error(parts, e) from None
    finally:
        if parent_fd >= 0:
            os.close(parent_fd)


def write_sidecar(user_fd: int, artifact: Artifact) -> None:
    """Write ``meta/<id>.json`` atomically (temp name, then rename)."""
    meta_fd = open_dir(user_fd, "meta", create=True)
    try:
        name = artifact.id + ".json"
        tmp = f".{name}.{secrets.token_hex(4)}"
        fd = os.open(tmp, _NEW_FILE_FLAGS, 0o600, dir_fd=meta_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(artifact.sidecar()).encode())
        os.rename(tmp, name, src_dir_fd=meta_fd, dst_dir_fd=meta_fd)
    finally:
        os.close(meta_fd)


def read_file(user_fd: int, parts: list[str]) -> bytes:
    """The bytes of the regular file at ``parts`` under the user's directory."""
    parent = _walk(user_fd, parts)
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read()


def unlink_quietly(user_fd: int, parts: list[str]) -> None:
    """Remove the file at ``parts`` if it is there."""
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


def prune(user_fd: int, parts: list[str]) -> None:
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


def scan(root: str) -> Iterator[Artifact]:
    """The artifacts whose sidecars are under ``root``, as found at start: unfinished temp
    files and sidecar writes cut short are deleted on the way, unreadable sidecars skipped."""
    for directory in os.listdir(root):
        user_path = os.path.join(root, directory)
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
            artifact = read_sidecar(os.path.join(meta_path, name))
            if artifact is None or user_dir(artifact.user_id) != directory or artifact.id + ".json" != name:
                log.warn("Ignoring unreadable artifact sidecar {path}", path=os.path.join(meta_path, name))
                continue
            yield artifact


def _walk(user_fd: int, parts: list[str]) -> int:
    """The directory holding ``parts[-1]``, opened without following symlinks (caller closes)."""
    fd = os.dup(user_fd)
    try:
        for part in parts[:-1]:
            next_fd = open_dir(fd, part, create=False)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


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
