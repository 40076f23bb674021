"""The admin dashboard: ``/admin`` (the page), ``/admin/static/<name>``, ``/admin/api/overview``.

The page and its static files are plain files shipped in ``mcproxy/web/static`` (no build
step), read once at start-up and served with a strict Content-Security-Policy: scripts and
styles only from those files, no framing, nothing cached. The page itself needs no
credential; every piece of data comes from the overview endpoint, which needs an admin
credential and answers 401/403 like the rest of the API.
"""

import os
from collections.abc import Awaitable, Callable
from resource import RUSAGE_SELF, getrusage

from twisted.internet.defer import Deferred
from twisted.web import resource, server

from mcproxy.activity import ActivityLog
from mcproxy.auth.principal import ADMIN, Principal
from mcproxy.errors import Forbidden, MethodNotAllowed, NotFound
from mcproxy.web.admin import iso8601
from mcproxy.web.http import request_id, write_error, write_failure, write_json

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


def _secure(request) -> None:
    """The request id and the security headers every ``/admin`` answer carries, errors too."""
    request_id(request)
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def _method_allowed(request, allowed: bytes) -> bool:
    """Whether the method is one of ``allowed`` (space separated); if not, a JSON 405 is sent."""
    if request.method in allowed.split():
        return True
    shown = allowed.replace(b" ", b", ")
    request.setHeader(b"Allow", shown)
    write_error(
        request,
        MethodNotAllowed(f"{request.method.decode('latin-1')} is not allowed here; use {shown.decode('ascii')}"),
    )
    return False


def _serve(request, file: tuple[bytes, bytes]) -> bytes:
    content, content_type = file
    request.setHeader(b"Content-Type", content_type)
    return content


class _NotFound(resource.Resource):
    """A JSON 404 for any path under ``/admin`` that is not one of ours."""

    isLeaf = True

    def render(self, request):
        _secure(request)
        write_error(request, NotFound(f"no such endpoint: {request.path.decode('latin-1')}"))
        return server.NOT_DONE_YET


class StaticFiles(resource.Resource):
    """``/admin/static/<name>``: exactly the files `load_static` found, by name."""

    isLeaf = True

    def __init__(self, files: dict[str, tuple[bytes, bytes]]):
        super().__init__()
        self._files = files

    def render(self, request):
        _secure(request)
        if not _method_allowed(request, b"GET HEAD"):
            return server.NOT_DONE_YET
        name = request.postpath[0].decode("utf-8", "replace") if len(request.postpath) == 1 else ""
        if name not in self._files:
            write_error(request, NotFound(f"no such file: {request.path.decode('latin-1')}"))
            return server.NOT_DONE_YET
        return _serve(request, self._files[name])


class OverviewResource(resource.Resource):
    """``GET /admin/api/overview``: users, browsers, sessions, recent calls and errors (admin only).

    ``authenticate`` is the API's authentication chain (``async (request) -> Principal``);
    ``store``, ``pool`` and ``sessions`` are the service's store, browser pool and session
    registry; ``started_at`` is when the process started (epoch seconds). Cheap by design:
    one ``list_users`` on the store, the rest from memory.
    """

    isLeaf = True

    def __init__(
        self,
        *,
        clock,
        store,
        pool,
        sessions,
        activity: ActivityLog,
        authenticate: Callable[[object], Awaitable[Principal]],
        started_at: float,
    ):
        super().__init__()
        self._clock = clock
        self._store = store
        self._pool = pool
        self._sessions = sessions
        self._activity = activity
        self._authenticate = authenticate
        self._started_at = started_at

    def render(self, request):
        if any(request.postpath):
            return _NotFound().render(request)
        _secure(request)
        if not _method_allowed(request, b"GET"):
            return server.NOT_DONE_YET
        d = Deferred.fromCoroutine(self._answer(request))
        d.addErrback(lambda failure: write_failure(request, failure))
        return server.NOT_DONE_YET

    async def _answer(self, request) -> None:
        principal = request.mcproxy_principal = await self._authenticate(request)
        if not principal.is_admin:
            raise Forbidden(NOT_ADMIN, scope=ADMIN)
        body = await self.overview()
        if not (request.finished or getattr(request, "_disconnected", False)):
            write_json(request, 200, body)

    async def overview(self) -> dict:
        """The dashboard's whole picture, as JSON-ready data (never tool arguments)."""
        users = await self._store.list_users()
        now = self._clock.seconds()
        sessions, activity = self._sessions, self._activity
        rows, browsers = [], []
        for user in users:
            browser = self._pool.existing(user.user_id)
            status = browser.status if browser is not None else "disconnected"
            error = browser.last_error if browser is not None else None
            browsers.append((user.user_id, user.browser_url, status, error))
            times = [user.last_activity, sessions.last_activity(user.user_id), activity.last_call(user.user_id)]
            rows.append(
                {
                    "userId": user.user_id,
                    "browserURL": user.browser_url,
                    "browserStatus": status,
                    "lastError": error,
                    "activeSessions": sessions.count_for_user(user.user_id),
                    "lastActivity": iso8601(max((t for t in times if t is not None), default=None)),
                }
            )
        activity.browsers_seen(browsers)
        by_transport: dict[str, int] = {}
        by_revision = []
        for (transport, revision), count in sorted(sessions.counts().items()):
            by_transport[transport] = by_transport.get(transport, 0) + count
            by_revision.append({"transport": transport, "protocolVersion": revision, "count": count})
        return {
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


class DashboardResource(resource.Resource):
    """``/admin``: the page, its static files (from ``static_dir``) and ``overview`` at
    ``/admin/api/overview``."""

    def __init__(self, overview: OverviewResource, static_dir: str = STATIC_DIR):
        super().__init__()
        files = load_static(static_dir)
        self._page = files[PAGE]
        self.putChild(b"static", StaticFiles(files))
        self.putChild(b"api", _Api({b"overview": overview}))

    def getChild(self, path, request):
        if path == b"" and not request.postpath:
            return self  # /admin/ is the page too
        return _NotFound()

    def render(self, request):
        _secure(request)
        if not _method_allowed(request, b"GET HEAD"):
            return server.NOT_DONE_YET
        return _serve(request, self._page)


class _Api(resource.Resource):
    """``/admin/api/<name>``: the named endpoints, JSON 404 for anything else."""

    def __init__(self, endpoints: dict[bytes, resource.Resource]):
        super().__init__()
        for name, endpoint in endpoints.items():
            self.putChild(name, endpoint)

    def getChild(self, path, request):
        return _NotFound()

    def render(self, request):
        return _NotFound().render(request)
