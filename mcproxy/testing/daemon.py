"""Run a whole mcproxy in-process for tests and benchmarks, and talk to its admin API."""

import json
import os

import attrs
import treq
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from mcproxy import config as configuration
from mcproxy.mcp.envelope import NAME_BEARING
from mcproxy.service import MCProxyService


@attrs.define
class RunningProxy:
    """A started mcproxy listening on a free loopback port: an `MCProxyService` in this
    process, or (``service`` None) a daemon process."""

    service: MCProxyService | None
    base_url: str
    admin_token: str

    async def api(self, method: str, path: str, body=None, token: str | None = None, headers=None):
        """Call the admin API; returns ``(status, parsed JSON or None, response headers)``."""
        sent: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {token or self.admin_token}"}
        sent.update(headers or {})
        data = None if body is None else json.dumps(body).encode("utf-8")
        if data is not None:
            sent["Content-Type"] = "application/json"
        response = await treq.request(method, self.base_url + path, data=data, headers=sent, persistent=False)
        content = await response.content()
        parsed = json.loads(content) if content else None
        return response.code, parsed, response.headers

    async def token_for(self, user_id: str, *permissions: str) -> str:
        """Create an API token for ``user_id`` with ``permissions`` (default: all tools + register)."""
        code, body, _ = await self.api(
            "POST", "/api/tokens", {"userId": user_id, "permissions": list(permissions or ("tools:*", "register"))}
        )
        assert code == 201, body
        return body["token"]

    async def register(self, user_id: str, browser_url: str, token: str) -> dict:
        """Register ``browser_url`` for ``user_id``; returns the answer body (asserts 201)."""
        code, body, _ = await self.api("POST", "/api/register", {"userId": user_id, "browserURL": browser_url}, token)
        assert code == 201, body
        return body

    async def call_tool(self, token: str, name: str, arguments: dict | None = None, rid: int = 1) -> dict:
        """One stateless (2026-07-28) ``tools/call`` on /mcp; the parsed JSON-RPC answer."""
        answer, _ = await self.call_tool_with_headers(token, name, arguments, rid)
        return answer

    async def call_tool_with_headers(
        self, token: str, name: str, arguments: dict | None = None, rid: int = 1
    ) -> tuple[dict, Headers]:
        """`call_tool`, also returning the answer's headers (which node ran it, in a cluster)."""
        _, headers, answer = await self.post_tool_call(token, name, arguments, rid)
        return answer, headers

    async def post_tool_call(
        self, token: str, name: str, arguments: dict | None = None, rid: int = 1
    ) -> tuple[int, Headers, dict]:
        """One stateless ``tools/call`` as the client sees it: (HTTP status, headers, parsed body),
        whether it is a JSON-RPC answer or an HTTP error."""
        return await self.post_request(token, "tools/call", {"name": name, "arguments": arguments or {}}, rid)

    async def request_with_headers(self, token: str, method: str, params: dict, rid: int = 1) -> tuple[dict, Headers]:
        """One stateless (2026-07-28) request of ``method`` on /mcp: the parsed JSON-RPC answer
        and the answer's headers."""
        _, headers, answer = await self.post_request(token, method, params, rid)
        return answer, headers

    async def post_request(self, token: str, method: str, params: dict, rid: int = 1) -> tuple[int, Headers, dict]:
        """One stateless (2026-07-28) request of ``method`` on /mcp: (HTTP status, headers,
        parsed body)."""
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        headers: dict[bytes | str, list[bytes | str]] = {
            "Authorization": [f"Bearer {token}"],
            "Content-Type": ["application/json"],
            "Accept": ["application/json, text/event-stream"],
            "MCP-Protocol-Version": ["2026-07-28"],
            "Mcp-Method": [method],
        }
        if method in NAME_BEARING:
            headers["Mcp-Name"] = [params[NAME_BEARING[method]]]
        body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": {**params, "_meta": meta}})
        response = await treq.post(self.base_url + "/mcp", body.encode(), headers=headers, persistent=False)
        return response.code, response.headers, json.loads(await response.content())

    async def stop(self) -> None:
        """Stop the in-process service."""
        if self.service is None:
            raise RuntimeError("this proxy runs in another process: stop the process")
        await Deferred.fromCoroutine(self.service.stop())


async def open_legacy_stream(reactor, base_url: str, token: str, timeout: float = 10.0):
    """A legacy SSE stream (``GET /sse``) at ``base_url``, once its ``endpoint`` event came:
    (the chunks received so far, a Deferred that fires when the stream ends)."""
    from mcproxy.testing.tool_calls import until

    headers: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    response = await treq.get(
        base_url + "/sse",
        headers=headers,
        unbuffered=True,
        persistent=False,
    ).addTimeout(timeout, reactor)
    assert response.code == 200, response.code
    chunks: list[bytes] = []
    ended = treq.collect(response, chunks.append)
    await until(reactor, lambda: b"event: endpoint" in b"".join(chunks), timeout, what="the endpoint event")
    return chunks, ended


async def start_proxy(reactor, data_dir: str, **sections: dict) -> RunningProxy:
    """Start a proxy on ``tcp:0`` with a memory store (unless ``sections`` say otherwise)."""
    overrides: dict[str, dict] = {
        "server": {"listen": ["tcp:0:interface=127.0.0.1"], "data_dir": str(data_dir)},
        "store": {"url": "memory:"},
        "audit": {"path": os.path.join(str(data_dir), "audit.jsonl")},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    config = configuration.load(None, environ={}, overrides=overrides)
    service = MCProxyService.from_config(reactor, config)
    await service.start()
    port = service.ports[0].getHost().port
    with open(os.path.join(str(data_dir), "admin-token")) as f:
        admin_token = f.read().strip()
    return RunningProxy(service=service, base_url=f"http://127.0.0.1:{port}", admin_token=admin_token)
