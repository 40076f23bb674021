"""The one routing and answering layer: routes declared once, every request answered alike.

A `Route` names a method, a path pattern with named parts, the handler coroutine, and what
it needs: authentication for an endpoint class (``"mcp"``, ``"admin"``), a permission,
whether it changes something (audited). Routes live in `Area`\\ s, one per first path
segment, with the rules their paths share: the Origin rule (the MCP endpoints' or the
API's), CORS preflights, headers on every answer, a gate (the drain).

`Router`, the site's root resource, does in this order: the area's headers and gate, the
Host check (and the API's Origin check), the route lookup (JSON 404; a JSON 405 with
``Allow``, or a preflight), the MCP Origin check and CORS, authentication (address rule,
per-user rate limit, failure counting: `mcproxy.auth.admission.Admission`), then the
handler, cancelled when the client goes away or the request outlives its time limit.
A handler returns ``(status, body)`` for a JSON answer, or None when it answered itself
(an event stream, a file); every error becomes the JSON error body. The request id is
given before any of this (`mcproxy.web.site.ProxyRequest`).
"""

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from mcproxy.errors import Forbidden, MCProxyError, MethodNotAllowed, NotFound
from mcproxy.web.http import cancel_on_deadline, write_error, write_failure, write_json
from mcproxy.web.origins import OriginPolicy

MCP_ORIGINS = "mcp"
"""The Origin rule of the MCP endpoints: checked after the route is found; preflights answered."""

API_ORIGINS = "api"
"""The Origin rule of the HTTP API: checked (same-origin pages allowed) before the route is found."""

Handler = Callable[..., Awaitable[Any]]

_FORWARDED = object()
"""What `Router._run` gives back for a request another process of the cluster answered."""


@attrs.frozen
class Route:
    """One method on one path pattern (a regular expression of the whole path, with named
    groups passed to ``handler`` as keyword arguments)."""

    method: bytes
    pattern: str
    handler: Handler
    #: The endpoint class the caller is authenticated for (None: no credential needed).
    auth: str | None = None
    #: What the credential must hold (403 ``insufficient_scope`` otherwise).
    permission: str | None = None
    #: Whether it changes something: each call is audited, whatever its outcome.
    audit: bool = False
    #: Requests it answers without a credential (the metrics' allow-listed networks).
    trusted: Callable[[Any], bool] | None = None
    #: The user whose state the request acts on, ``routed(request, parts)``: in a cluster
    #: the request runs on that user's owner (`mcproxy.cluster.routing`).
    routed: Callable[[Any, dict], str] | None = None


def callers_user(request, parts: dict) -> str:
    """`Route.routed` of requests that act for the caller's own user (the MCP endpoints)."""
    return request.principal.user_id


def named_user(request, parts: dict) -> str:
    """`Route.routed` of requests naming the user in their path (``/api/users/{user_id}``)."""
    return parts["user_id"]


@attrs.frozen
class Area:
    """The routes under one first path segment and the rules they share."""

    routes: tuple[Route, ...] = ()
    #: `MCP_ORIGINS`, `API_ORIGINS`, or None (no Host or Origin rule).
    origins: str | None = None
    #: Headers on every answer of the area, errors included.
    headers: tuple[tuple[bytes, bytes], ...] = ()
    #: Called first; raises to refuse (the drain's 503).
    gate: Callable[[Any], None] | None = None
    #: How a 405 lists the allowed methods.
    method_separator: str = ", "


@attrs.frozen
class _Path:
    regex: re.Pattern
    routes: dict[bytes, Route]
    allow: bytes
    listed: str


def _paths(area: Area) -> tuple[_Path, ...]:
    """The area's distinct patterns, compiled, in the order first declared."""
    by_pattern: dict[str, dict[bytes, Route]] = {}
    for route in area.routes:
        by_pattern.setdefault(route.pattern, {})[route.method] = route
    paths = []
    for pattern, routes in by_pattern.items():
        methods = sorted(m.decode("ascii") for m in routes)
        paths.append(
            _Path(re.compile(pattern), routes, ", ".join(methods).encode("ascii"), area.method_separator.join(methods))
        )
    return tuple(paths)


class Router(resource.Resource):
    """The root resource: finds the route of a request and answers it (module docstring).

    ``areas`` maps a first path segment to its `Area`; other paths are looked up in
    ``fallback``. ``origins`` holds the Host and Origin rules (needed by areas that have
    them); ``authenticate(request, endpoint_class)`` says who calls (needed by routes
    that authenticate);
    ``audit(principal, client, action, target, outcome)`` records audited calls;
    ``place(request, user)`` runs the request elsewhere when ``user`` lives on another
    process of a cluster (True: answered there), for routes that say whose user they act on.
    """

    isLeaf = True

    def __init__(
        self,
        areas: Mapping[bytes, Area],
        *,
        origins: OriginPolicy | None = None,
        authenticate: Callable[[Any, str], Awaitable[Any]] | None = None,
        fallback: Area = Area(),
        audit: Callable[..., None] = lambda principal, client, action, target, outcome: None,
        place: Callable[[Any, str], Awaitable[bool]] | None = None,
    ):
        super().__init__()
        self.origins = origins
        self._place = place
        self._authenticate = authenticate
        self._audit = audit
        self._areas = {segment: (area, _paths(area)) for segment, area in areas.items()}
        self._fallback = (fallback, _paths(fallback))

    @property
    def _origin_policy(self) -> OriginPolicy:
        if self.origins is None:
            raise ValueError("an area has Host and Origin rules, but the Router was given no origins")
        return self.origins

    def render(self, request):
        path = request.path
        area, paths = self._areas.get(path[1:].partition(b"/")[0], self._fallback)
        try:
            route, parts = self._find(request, area, paths, path.decode("utf-8", "replace"))
        except MCProxyError as e:
            write_error(request, e)
            return NOT_DONE_YET
        if route is None:
            return NOT_DONE_YET  # a preflight, answered
        work = Deferred.fromCoroutine(self._answer(request, route, area.origins, parts))
        cancel_on_deadline(request, work)
        work.addErrback(lambda failure: write_failure(request, failure))
        return NOT_DONE_YET

    def _find(self, request, area: Area, paths: tuple[_Path, ...], text: str) -> tuple[Route | None, dict]:
        """The route and its path parts; raises the refusals before the handler."""
        for name, value in area.headers:
            request.setHeader(name, value)
        if area.gate is not None:
            area.gate(request)
        if area.origins is not None:
            self._origin_policy.check_host(request)
            if area.origins == API_ORIGINS:
                self._origin_policy.check_api_origin(request)
        for found in paths:
            match = found.regex.fullmatch(text)
            if match is not None:
                break
        else:
            raise NotFound(f"no such endpoint: {text}")
        route = found.routes.get(request.method)
        if route is None:
            if request.method == b"OPTIONS" and area.origins == MCP_ORIGINS:
                self._origin_policy.preflight(request, found.allow)
                return None, {}
            request.setHeader(b"Allow", found.allow)
            method = request.method.decode("latin-1")
            raise MethodNotAllowed(f"{method} is not allowed here; use {found.listed}")
        return route, match.groupdict()

    async def _answer(self, request, route: Route, origins: str | None, parts: dict) -> None:
        if origins == MCP_ORIGINS:
            self._origin_policy.check_origin(request)
        if not route.audit:
            result = await self._run(request, route, parts)
        else:
            try:
                result = await self._run(request, route, parts)
            except Exception as e:
                self._audited(request, route, e.code if isinstance(e, MCProxyError) else "internal_error")
                raise
            if result is not _FORWARDED:  # the process that ran it audits it
                self._audited(request, route, "ok")
        if result is not None and result is not _FORWARDED:
            write_json(request, *result)

    async def _run(self, request, route: Route, parts: dict) -> Any:
        if route.auth is not None and (route.trusted is None or not route.trusted(request)):
            if self._authenticate is None:
                raise ValueError(f"{route.handler} authenticates, but the Router was given no authenticate")
            principal = request.principal = await self._authenticate(request, route.auth)
            permission = route.permission
            if permission is not None and not principal.has(permission):
                raise Forbidden(f"this credential lacks the {permission!r} permission", scope=permission)
            place = self._place
            if route.routed is not None and place is not None and await place(request, route.routed(request, parts)):
                return _FORWARDED
        return await route.handler(request, **parts)

    def _audited(self, request, route: Route, outcome: str) -> None:
        target = request.path.decode("utf-8", "replace")
        self._audit(request.principal, request.client_address, route.handler.__name__, target, outcome)
