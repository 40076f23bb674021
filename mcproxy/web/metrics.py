"""``GET /metrics``: the Prometheus text format, for scrapers the operator allows.

A scrape is allowed from an address inside ``metrics.allowed_networks`` without a
credential (Prometheus on the same host or network), or with a credential holding the
``metrics`` (or ``admin``) permission. Others get the API's JSON 401/403.
"""

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mcproxy.auth.principal import METRICS
from mcproxy.errors import Forbidden
from mcproxy.metrics import Metrics
from mcproxy.web.http import answered
from mcproxy.web.network import networks, parse_address, peer_address, within
from mcproxy.web.routes import Area, Route


class MetricsEndpoint:
    """Serves the registry of one `Metrics` (callers authenticated as for the admin API).

    The client address is the one the site resolved (``X-Forwarded-For`` only from
    ``network.trusted_proxies``), else the peer's; a Unix socket peer is never allow-listed.
    """

    def __init__(self, metrics: Metrics, allowed_networks: Iterable[str] = ()):
        self._metrics = metrics
        self._networks = networks(allowed_networks)

    def reconfigure(self, config) -> None:
        """New ``metrics.allowed_networks`` (live reload)."""
        self._networks = networks(config.metrics.allowed_networks)

    def area(self) -> Area:
        """``/metrics`` (and any path below it)."""
        return Area((Route(b"GET", r"/metrics(?:/.*)?", self.scrape, auth="admin", trusted=self._allow_listed),))

    def _allow_listed(self, request) -> bool:
        client = request.client_address or peer_address(request)
        return within(parse_address(client), self._networks)

    async def scrape(self, request) -> None:
        principal = request.principal
        if principal is not None and not principal.has(METRICS):
            raise Forbidden("scraping /metrics needs the 'metrics' or 'admin' permission")
        await self._metrics.refresh()
        if answered(request):
            return
        body = generate_latest(self._metrics.registry)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(body)
        request.finish()
