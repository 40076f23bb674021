"""The admin dashboard: ``/admin`` (the page), ``/admin/static/<name>``, ``/admin/api/overview``.

The page and its static files are plain files shipped in ``mcproxy/web/static`` (no build
step), read once at start-up and served with a strict Content-Security-Policy: scripts and
styles only from those files, no framing, nothing cached. The page itself needs no
credential; every piece of data comes from the overview endpoint, which needs an admin
credential and answers 401/403 like the rest of the API.
"""

import os
from resource import RUSAGE_SELF, getrusage

from mcproxy.activity import ActivityLog
from mcproxy.auth.principal import ADMIN
from mcproxy.errors import Forbidden, NotFound
from mcproxy.web.admin import iso8601, live_statuses
from mcproxy.web.routes import Area, Route

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
PAGE = "dashboard.html"

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}

SECURITY_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"X-Frame-Options": b"DENY",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}

NOT_ADMIN = "this token is not an admin token; the dashboard needs a credential with the 'admin' permission"

#: How many recent calls, errors and browser changes one overview carries.
RECENT = 50


def load_static(directory: str) -> dict[str, tuple[bytes, bytes]]:
    """``name -> (content, content type)`` for the regular files of ``directory`` with a known
    type. Symlinks and subdirectories are left out, so nothing outside can ever be served."""
    files = {}
    for entry in os.scandir(directory):
        content_type = CONTENT_TYPES.get(os.path.splitext(entry.name)[1])
        if content_type and entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
            with open(entry.path, "rb") as f:
                files[entry.name] = (f.read(), content_type)
    return files


def _send(request, file: tuple[bytes, bytes]) -> None:
    content, content_type = file
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Length", b"%d" % len(content))
    request.write(content)  # no body for HEAD: twisted.web leaves it out
    request.finish()


class Overview:
    """``GET /admin/api/overview``: users, browsers, sessions, recent calls and errors (admin only).

    ``store``, ``pool`` and ``sessions`` are the service's store, browser pool and session
    registry; ``started_at`` is when the process started (epoch seconds). Cheap by design:
    one ``list_users`` on the store, the rest from memory.
    """

    def __init__(self, *, clock, store, pool, sessions, activity: ActivityLog, started_at: float, cluster=None):
        self._clock = clock
        #: This process as a node of a cluster (its ``describe``), or None.
        self._cluster = cluster
        self._store = store
        self._pool = pool
        self._sessions = sessions
        self._activity = activity
        self._started_at = started_at

    async def answer(self, request) -> tuple[int, dict]:
        if not request.principal.is_admin:
            raise Forbidden(NOT_ADMIN, scope=ADMIN)
        return 200, await self.overview(request.principal)

    async def overview(self, principal) -> dict:
        """The dashboard's whole picture, as JSON-ready data (never tool arguments); in a
        cluster, each user as the process serving it reports it (asked as ``principal``)."""
        users = await self._store.list_users()
        now = self._clock.seconds()
        sessions, activity = self._sessions, self._activity
        ids = [user.user_id for user in users]
        statuses, owners = await live_statuses(self._pool, sessions, self._cluster, principal, ids)
        rows, browsers = [], []
        for user in users:
            live = statuses[user.user_id]
            browsers.append((user.user_id, user.browser_url, live["browserStatus"], live["lastError"]))
            times = [user.last_activity, sessions.last_activity(user.user_id), activity.last_call(user.user_id)]
            row = {"userId": user.user_id, "browserURL": user.browser_url, **live}
            row["lastActivity"] = iso8601(max((t for t in times if t is not None), default=None))
            if owners is not None:
                row["node"] = owners.get(user.user_id)
            rows.append(row)
        activity.browsers_seen(browsers)
        cluster = None
        if self._cluster is not None:
            cluster = await self._cluster.describe(ids)
        by_transport: dict[str, int] = {}
        by_revision = []
        for (transport, revision), count in sorted(sessions.counts().items()):
            by_transport[transport] = by_transport.get(transport, 0) + count
            by_revision.append({"transport": transport, "protocolVersion": revision, "count": count})
        picture = {
            "generatedAt": iso8601(now),
            "process": {
                "pid": os.getpid(),
                "uptime": round(now - self._started_at, 3),
                "registeredUsers": len(users),
                "browserConnections": self._pool.connection_count(),
                "activeSessions": sessions.count(),
                "inFlightCalls": activity.in_flight,
                "toolCalls": activity.total_calls,
                "peakMemoryBytes": getrusage(RUSAGE_SELF).ru_maxrss * 1024,
            },
            "users": rows,
            "sessions": {
                "total": sessions.count(),
                "byTransport": by_transport,
                "byRevision": by_revision,
                "byUser": {row["userId"]: row["activeSessions"] for row in rows},
            },
            "recentCalls": [
                {
                    "time": iso8601(c.time),
                    "userId": c.user_id,
                    "tool": c.tool,
                    "outcome": c.outcome,
                    "durationMs": round(c.duration * 1000, 1),
                }
                for c in activity.recent_calls(RECENT)
            ],
            "recentErrors": [
                {
                    "time": iso8601(e.time),
                    "userId": e.user_id,
                    "kind": e.kind,
                    "subject": e.subject,
                    "message": e.message,
                }
                for e in activity.recent_errors(RECENT)
            ],
            "browserChanges": [
                {
                    "time": iso8601(c.time),
                    "userId": c.user_id,
                    "browserURL": c.browser_url,
                    "previous": c.previous,
                    "status": c.status,
                    "error": c.error,
                }
                for c in activity.browser_changes(RECENT)
            ],
        }
        if cluster is not None:
            picture["cluster"] = cluster
        return picture


class Dashboard:
    """``/admin``: the page, its static files (from ``static_dir``) and the `Overview` at
    ``/admin/api/overview``; every answer (errors too) carries the security headers."""

    def __init__(self, overview: Overview, static_dir: str = STATIC_DIR):
        self._files = load_static(static_dir)
        self._page = self._files[PAGE]
        self._overview = overview

    def area(self) -> Area:
        both = (b"GET", b"HEAD")
        return Area(
            (
                *(Route(method, r"/admin/?", self.page) for method in both),
                *(Route(method, r"/admin/static(?:/(?P<name>.*))?", self.static_file) for method in both),
                Route(b"GET", r"/admin/api/overview/?", self._overview.answer, auth="admin"),
            ),
            headers=tuple(SECURITY_HEADERS.items()),
        )

    async def page(self, request) -> None:
        _send(request, self._page)

    async def static_file(self, request, name: str | None) -> None:
        """Exactly the files `load_static` found, by name."""
        file = self._files.get(name or "")
        if file is None:
            raise NotFound(f"no such file: {request.path.decode('latin-1')}")
        _send(request, file)
