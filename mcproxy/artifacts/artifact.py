"""One saved file: what the index knows of it, its URI, and the sidecar that outlives a restart."""

import json
import re

import attrs

URI_PREFIX = "mcproxy://artifacts/"
_ID = re.compile(r"[0-9a-f]{32}")


@attrs.frozen
class Artifact:
    """One saved file: ``name`` is the caller's relative path, ``uri`` how the client reads it,
    ``holder`` the process of a cluster that wrote the file (its node id; "" in one process)."""

    id: str
    user_id: str
    name: str
    mime_type: str
    size: int
    created: float
    expires: float
    holder: str = ""

    @property
    def uri(self) -> str:
        return URI_PREFIX + self.id

    def sidecar(self) -> dict:
        """What ``meta/<id>.json`` holds, enough to rebuild the index after a restart (the
        holder is the process whose directory holds it)."""
        return {
            "id": self.id,
            "user": self.user_id,
            "name": self.name,
            "mime": self.mime_type,
            "size": self.size,
            "created": self.created,
            "expires": self.expires,
        }


def artifact_id(uri: str) -> str | None:
    """The artifact id a ``mcproxy://artifacts/<id>`` URI names, or None for any other string."""
    if not uri.startswith(URI_PREFIX) or not _ID.fullmatch(uri[len(URI_PREFIX) :]):
        return None
    return uri[len(URI_PREFIX) :]


def read_sidecar(path: str) -> Artifact | None:
    """The artifact a sidecar file describes, or None when it cannot be read."""
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
