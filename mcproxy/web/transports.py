"""The MCP endpoints the site mounts: legacy SSE, its message endpoint, and Streamable HTTP."""

from urllib.parse import urlsplit

from mcproxy.mcp.protocol import EmptyResources, McpServer
from mcproxy.web.legacy import MessageResource, SseResource
from mcproxy.web.mcp_common import listens_on_loopback_only
from mcproxy.web.streamable import StreamableResource


class McpTransports:
    """The MCP endpoints: ``sse_resource`` (GET /sse), ``message_resource`` (POST /message),
    ``mcp_resource`` (/mcp). ``authenticate`` is ``async (request) -> Principal``.

    ``allow_loopback_origins`` defaults to whether every ``server.listen`` endpoint is on
    loopback (see `mcproxy.web.mcp_common`).
    """

    def __init__(
        self,
        reactor,
        config,
        authenticate,
        tools,
        sessions,
        *,
        resources=None,
        allow_loopback_origins: bool | None = None,
    ):
        self.clock = reactor
        self.authenticate = authenticate
        self.sessions = sessions
        self.server = McpServer(tools, resources or EmptyResources(), config.session.max_in_flight)
        self.max_body = config.server.max_body_bytes
        self.keepalive = config.server.sse_keepalive
        self.allowed_origins = tuple(config.cors.allowed_origins)
        public_host = urlsplit(config.server.public_url).hostname if config.server.public_url else None
        hosts = [host.lower() for host in config.server.allowed_hosts]
        self.allowed_hosts = tuple(hosts + [public_host] if public_host else hosts)
        if allow_loopback_origins is None:
            allow_loopback_origins = listens_on_loopback_only(tuple(config.server.listen))
        self.allow_loopback_origins = allow_loopback_origins
        self.stateless_in_flight: dict[str, int] = {}
        self.sse_resource = SseResource(self)
        self.message_resource = MessageResource(self)
        self.mcp_resource = StreamableResource(self)
