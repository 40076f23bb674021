"""Builds the HTTP front door from the daemon's parts: the router over every area, and the
site that carries it (see `mcproxy.web.routes` and `mcproxy.web.site`)."""

from collections.abc import Awaitable, Callable
from typing import Any

from mcproxy.auth.admission import Admission
from mcproxy.web.admin import AdminAPI, AdminDependencies
from mcproxy.web.admin_tokens import TokensAPI
from mcproxy.web.dashboard import Dashboard
from mcproxy.web.metrics import MetricsEndpoint
from mcproxy.web.oauth import WellKnown
from mcproxy.web.origins import OriginPolicy
from mcproxy.web.registration import Registration
from mcproxy.web.routes import API_ORIGINS, Area, Route, Router
from mcproxy.web.transports import McpTransports


def build_router(
    *,
    origins: OriginPolicy,
    admission: Admission,
    transports: McpTransports | None = None,
    admin: AdminDependencies | None = None,
    metrics: MetricsEndpoint | None = None,
    well_known: WellKnown | None = None,
    dashboard: Dashboard | None = None,
    audit: Callable[..., None] = lambda principal, client, action, target, outcome: None,
    place: Callable[[Any, str], Awaitable[bool]] | None = None,
    internal: tuple[Route, ...] | None = None,
    tunnel: Area | None = None,
) -> Router:
    """The root resource over the parts given; any path none of them owns is a JSON 404,
    under the API's Host and Origin rules when the admin API is served (``/health`` has none:
    balancers' checks send what Host they like). ``place`` sends a
    request to the process of the cluster that owns its user (`mcproxy.cluster.routing`);
    ``internal`` holds the routes between the processes of a cluster (``/_cluster/...``, with
    the admin API's own), given to the internal listener's router alone; ``tunnel`` is the
    ``/tunnel`` endpoint of browsers that dial in (`mcproxy.tunnel`)."""
    areas: dict[bytes, Area] = {}
    if transports is not None:
        areas.update(transports.areas())
    if metrics is not None:
        areas[b"metrics"] = metrics.area()
    if well_known is not None:
        areas[b".well-known"] = well_known.area()
    if dashboard is not None:
        areas[b"admin"] = dashboard.area()
    if tunnel is not None:
        areas[b"tunnel"] = tunnel
    api = Area()
    if admin is not None:
        admin_api = AdminAPI(admin)
        routes = (*admin_api.routes(), *TokensAPI(admin).routes(), *Registration(admin).routes())
        api = areas[b"api"] = Area(routes, origins=API_ORIGINS)
        areas[b"health"] = Area(admin_api.health_routes())
        if internal is not None:
            internal = (*internal, *admin_api.internal_routes())
    if internal is not None:
        areas[b"_cluster"] = Area(internal)
    return Router(areas, origins=origins, authenticate=admission.authenticate, fallback=api, audit=audit, place=place)
