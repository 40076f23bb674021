"""The floor under the latency benchmark: the libraries mcproxy is built on, doing the least
a proxy of one tool call can do.

``python -m bench.floor PORT PAGE_SOCKET_URL`` serves ``POST /mcp`` with twisted.web and
answers each ``tools/call`` of ``evaluate_script`` with one ``Runtime.evaluate`` over an
autobahn WebSocket to the page: no authentication, sessions, validation, limits, logs or
metrics. Its CPU per call is what twisted.web, autobahn and JSON cost by themselves on
this machine, which the latency benchmark prints beside the daemon's.
"""

import asyncio
import itertools
import json
import sys

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred
from twisted.web import resource, server

from bench.procs import _get_json, _pinned, _stop_process, _wait_until, cpu_seconds, free_port


class PageSocket(WebSocketClientProtocol):
    """A page's DevTools socket: calls by id, answers matched back."""

    def onOpen(self) -> None:
        self.factory.page = self

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        waiting = self.factory.pending.pop(message.get("id"), None)
        if waiting is not None:
            waiting.callback(message.get("result", {}))

    def call(self, method: str, params: dict) -> Deferred:
        call_id = next(self.factory.ids)
        self.factory.pending[call_id] = answered = Deferred()
        self.sendMessage(json.dumps({"id": call_id, "method": method, "params": params}).encode())
        return answered


class Endpoint(resource.Resource):
    """``POST /mcp``: the handshake answered blindly, tool calls evaluated on the page."""

    isLeaf = True

    def __init__(self, factory: WebSocketClientFactory):
        super().__init__()
        self.factory = factory

    def render_GET(self, request) -> bytes:
        """Ready once the page's socket is open."""
        request.setResponseCode(200 if self.factory.page is not None else 503)
        return b"{}"

    def render_POST(self, request) -> bytes | int:
        message = json.loads(request.content.read())
        if "id" not in message:
            request.setResponseCode(202)
            return b""
        if message["method"] != "tools/call":
            request.setHeader(b"mcp-session-id", b"floor")
            return self._answer(request, message["id"], {})
        expression = f"({message['params']['arguments']['function']})()"
        evaluated = self.factory.page.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})

        def answer(result: dict) -> None:
            text = json.dumps(result.get("result", {}).get("value"))
            request.write(self._answer(request, message["id"], {"content": [{"type": "text", "text": text}]}))
            request.finish()

        evaluated.addCallback(answer)
        return server.NOT_DONE_YET

    @staticmethod
    def _answer(request, request_id, result: dict) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


class FloorServer:
    """`bench.floor` as a process of its own on a free port, driving the page at ``page_socket_url``."""

    def __init__(self, page_socket_url: str, cpus: set[int] | None = None):
        self.page_socket_url = page_socket_url
        self.cpus = cpus
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "FloorServer":
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.floor", str(self.port), self.page_socket_url,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=_pinned(self.cpus),
        )  # fmt: skip

        async def ready():
            status, _ = await _get_json(self.base_url, "/mcp")
            return status == 200

        await _wait_until(ready, self.process, "the floor server")
        return self

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    async def stop(self) -> None:
        if self.process is not None:
            await _stop_process(self.process)


class QuietSite(server.Site):
    """A Site that logs no line per request and leaves bodies unparsed, as mcproxy's does."""

    def __init__(self, root):
        super().__init__(root, parsePOSTFormSubmission=False)

    def log(self, request) -> None:
        pass


def main(port: str, page_socket_url: str) -> None:
    factory = WebSocketClientFactory(page_socket_url)
    factory.protocol = PageSocket
    factory.pending, factory.ids, factory.page = {}, itertools.count(1), None
    connectWS(factory)
    endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(QuietSite(Endpoint(factory)))
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:])
