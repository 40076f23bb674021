"""``GET /metrics``: the Prometheus text format, for scrapers the operator allows.

A scrape is allowed from an address inside ``metrics.allowed_networks`` without a
credential (Prometheus on the same host or network), or with a credential holding the
``metrics`` (or ``admin``) permission. Others get the API's JSON 401/403.
"""

from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.web import resource, server

from mcproxy.auth.principal import METRICS
from mcproxy.errors import Forbidden, MethodNotAllowed
from mcproxy.metrics import Metrics
from mcproxy.web.http import request_id, write_error, write_failure
from mcproxy.web.network import networks, parse_address, peer_address, within


class MetricsResource(resource.Resource):
    """Serves the registry of one `Metrics`; ``authenticate`` is the API's authentication chain.

    The client address is the one the site resolved (``X-Forwarded-For`` only from
    ``network.trusted_proxies``), else the peer's; a Unix socket peer is never allow-listed.
    """

    isLeaf = True

    def __init__(
        self,
        metrics: Metrics,
        authenticate: Callable[[object], Awaitable],
        allowed_networks: Iterable[str] = (),
    ):
        super().__init__()
        self._metrics = metrics
        self._authenticate = authenticate
        self._networks = networks(allowed_networks)

    def reconfigure(self, allowed_networks: Iterable[str]) -> None:
        """New ``metrics.allowed_networks`` (live reload)."""
        self._networks = networks(allowed_networks)

    def render(self, request):
        request_id(request)
        if request.method != b"GET":
            request.setHeader(b"Allow", b"GET")
            write_error(request, MethodNotAllowed(f"{request.method.decode('latin-1')} is not allowed here; use GET"))
            return server.NOT_DONE_YET
        d = Deferred.fromCoroutine(self._scrape(request))
        d.addErrback(lambda failure: write_failure(request, failure))
        return server.NOT_DONE_YET

    def _allow_listed(self, request) -> bool:
        client = getattr(request, "mcproxy_client", None) or peer_address(request)
        return within(parse_address(client), self._networks)

    async def _scrape(self, request) -> None:
        if not self._allow_listed(request):
            principal = await self._authenticate(request)
            if not principal.has(METRICS):
                raise Forbidden("scraping /metrics needs the 'metrics' or 'admin' permission")
        await self._metrics.refresh()
        if request.finished or getattr(request, "_disconnected", False):
            return
        body = generate_latest(self._metrics.registry)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(body)
        request.finish()
