"""The HTTP front door: one Site, one root resource, JSON everywhere.

The root assigns every request an id, refuses bodies over the limit before they are
buffered, refuses clients outside the address lists or over their address rate, and hands each path to the resource that owns it: the MCP transports at
``/sse``, ``/message`` and ``/mcp``; the admin API (``/health``, ``/api/...``) otherwise.
"""

import io

from twisted.web import resource, server

from mcproxy import logs
from mcproxy.errors import MCProxyError, NotFound, PayloadTooLarge
from mcproxy.web.http import INTERNAL, log_unhandled, request_id, write_error
from mcproxy.web.network import ClientPolicy


class _Discard(io.BytesIO):
    """A body sink that keeps nothing: the body of a request we will refuse with 413."""

    def write(self, data):
        return len(data)


class ProxyRequest(server.Request):
    """A request that counts its body against the site's limit and never renders HTML."""

    too_large = False
    _received = 0

    def gotLength(self, length):
        limit = self.channel.site.max_body_bytes
        if length is not None and length > limit:
            self.too_large = True
            self.content = _Discard()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body_bytes:
            self.too_large = True
            self.content.close()
            self.content = _Discard()
            return
        super().handleContentChunk(data)

    def process(self):
        """Handle the request in a context of its own, so its id is on every event it causes."""
        site = self.channel.site
        if site.metrics is not None:
            self.notifyFinish().addBoth(lambda _: site.metrics.http_request(self.path, self.code))
        logs.in_request(request_id(self), self._process)

    def _process(self):
        if self.too_large:
            self.setHeader(b"Connection", b"close")
            limit = self.channel.site.max_body_bytes
            write_error(self, PayloadTooLarge(f"request body is over the limit of {limit} bytes"))
            return
        site = self.channel.site
        if site.hsts_max_age and self.isSecure():
            self.setHeader(b"Strict-Transport-Security", b"max-age=%d" % site.hsts_max_age)
        self.mcproxy_client = site.client_policy.client_address(self)
        try:
            site.client_policy.admit(self.mcproxy_client)
            site.check_address(self.mcproxy_client)
        except MCProxyError as e:
            write_error(self, e)
            return
        super().process()

    def processingFailed(self, reason):
        """A bug escaped a resource: log it, answer a JSON 500, never a traceback."""
        log_unhandled(self, reason)
        if not self.finished and not self._disconnected:
            if not self.startedWriting:
                write_error(self, INTERNAL)
            else:
                self.finish()
        return reason


class ProxySite(server.Site):
    """The daemon's Site: `ProxyRequest`s, no tracebacks, a body limit, the client checks,
    and HSTS on TLS listeners (``hsts_max_age`` seconds; 0 sends none).

    ``check_address(address)`` raises RateLimited for a client over its address limit.
    """

    requestFactory = ProxyRequest
    displayTracebacks = False

    def __init__(
        self,
        root,
        *,
        max_body_bytes: int,
        client_policy: ClientPolicy | None = None,
        check_address=lambda address: None,
        hsts_max_age: int = 0,
        metrics=None,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.max_body_bytes = max_body_bytes
        self.hsts_max_age = hsts_max_age
        self.metrics = metrics
        self.client_policy = client_policy or ClientPolicy()
        self.check_address = check_address


class Root(resource.Resource):
    """Dispatches by the first path segment; unknown paths get a JSON 404."""

    def __init__(self, children: dict[bytes, resource.Resource], fallback: resource.Resource):
        super().__init__()
        self._children = children
        self._fallback = fallback

    def getChild(self, path, request):
        child = self._children.get(path)
        if child is not None:
            return child
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._fallback

    def render(self, request):
        return self._fallback.render(request)


class JSONNotFound(resource.Resource):
    """A leaf that answers every method with the JSON 404."""

    isLeaf = True

    def render(self, request):
        write_error(request, NotFound(f"no such endpoint: {request.path.decode('latin-1')}"))
        return server.NOT_DONE_YET
