"""A scripted fake Chrome DevTools endpoint, in memory or over a real loopback WebSocket.

It knows just enough of the Target domain for a `UserBrowser` to connect, list, open
and close pages (attached on request or automatically, ``Target.setAutoAttach``), and
lets a test script the edge cases: error replies, calls that are never answered, abrupt
disconnects, huge messages, refused handshakes.
"""

import json
from collections.abc import Callable
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import ITCPTransport

from mcproxy.browser.cdp.connection import CDPConnection

HANG = object()  # a handler returning HANG never answers


class FakeCDPError(Exception):
    """Raised by a handler to answer with a CDP error."""

    def __init__(self, message: str, code: int = -32000):
        super().__init__(message)
        self.message = message
        self.code = code


Handler = Callable[[dict, str | None], Any]


class FakeChrome:
    """The browser side: answers CDP calls from handlers and emits Target events.

    ``handlers[method](params, session_id)`` returns a result dict, `HANG`, or raises
    `FakeCDPError`. ``calls`` records every (method, params, session_id) received.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, str | None]] = []
        self.targets: dict[str, dict] = {}
        self._next_target = 0
        self._sessions: dict[str, int] = {}
        #: Whether pages are attached as they appear (``Target.setAutoAttach``).
        self.auto_attach = False
        self._outputs: list[Callable[[str | bytes], None]] = []
        self.handlers: dict[str, Handler] = {
            "Browser.getVersion": lambda p, s: {"product": "FakeChrome/1.0", "protocolVersion": "1.3"},
            "Target.setDiscoverTargets": self._discover,
            "Target.getTargets": lambda p, s: {"targetInfos": list(self.targets.values())},
            "Target.attachToTarget": self._attach,
            "Target.setAutoAttach": self._auto_attach,
            "Target.createTarget": self._create,
            "Target.closeTarget": self._close,
        }
        self.add_target("about:blank")

    def add_target(self, url: str, *, type: str = "page", title: str = "") -> str:
        """Create a target (emits Target.targetCreated); returns its id."""
        self._next_target += 1
        target_id = f"T{self._next_target}"
        info = {
            "targetId": target_id,
            "type": type,
            "url": url,
            "title": title or url,
            "attached": False,
            "browserContextId": "C1",
        }
        self.targets[target_id] = info
        self.emit("Target.targetCreated", {"targetInfo": info})
        if self.auto_attach and type == "page":
            self._attached(info, waiting=True)
        return target_id

    def connect(self, output: Callable[[str | bytes], None]) -> Callable[[], None]:
        """Attach a client writer; returns the detach callable."""
        self._outputs.append(output)
        return lambda: self._outputs.remove(output) if output in self._outputs else None

    def emit(self, method: str, params: dict, *, session_id: str | None = None) -> None:
        """Send an event to every connected client."""
        message: dict[str, Any] = {"method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        self._write(message)

    def _write(self, message: dict) -> None:
        self.send_raw(json.dumps(message))

    def send_raw(self, data: str | bytes) -> None:
        """Send one message as it is, JSON or not, to every connected client."""
        for output in list(self._outputs):
            output(data)

    def receive(self, text: str | bytes) -> None:
        """Handle one client message."""
        message = json.loads(text)
        method, params, session_id = message["method"], message.get("params") or {}, message.get("sessionId")
        self.calls.append((method, params, session_id))
        handler = self.handlers.get(method, lambda p, s: {})
        try:
            result = handler(params, session_id)
        except FakeCDPError as e:
            self._write({"id": message["id"], "error": {"code": e.code, "message": e.message}})
            return
        if result is HANG:
            return
        reply: dict[str, Any] = {"id": message["id"], "result": result}
        if session_id is not None:
            reply["sessionId"] = session_id
        self._write(reply)

    def methods(self) -> list[str]:
        """The methods received so far, in order."""
        return [method for method, _, _ in self.calls]

    def _discover(self, params: dict, session_id: str | None) -> dict:
        for info in self.targets.values():
            self.emit("Target.targetCreated", {"targetInfo": info})
        return {}

    def _attach(self, params: dict, session_id: str | None) -> dict:
        target_id = params["targetId"]
        if target_id not in self.targets:
            raise FakeCDPError(f"No target with given id found: {target_id}")
        return {"sessionId": self._new_session(target_id)}

    def _new_session(self, target_id: str) -> str:
        """Session ids "S-<target>-<n>": the n-th attach to that target."""
        self._sessions[target_id] = self._sessions.get(target_id, 0) + 1
        return f"S-{target_id}-{self._sessions[target_id]}"

    def _auto_attach(self, params: dict, session_id: str | None) -> dict:
        self.auto_attach = bool(params.get("autoAttach"))
        if self.auto_attach:
            for info in list(self.targets.values()):
                if info["type"] == "page":
                    self._attached(info, waiting=False)
        return {}

    def _attached(self, info: dict, *, waiting: bool) -> None:
        session = self._new_session(info["targetId"])
        self.emit("Target.attachedToTarget", {"sessionId": session, "targetInfo": info, "waitingForDebugger": waiting})

    def _create(self, params: dict, session_id: str | None) -> dict:
        return {"targetId": self.add_target(params.get("url", "about:blank"))}

    def _close(self, params: dict, session_id: str | None) -> dict:
        target_id = params["targetId"]
        if self.targets.pop(target_id, None) is None:
            raise FakeCDPError(f"No target with given id found: {target_id}")
        self.emit("Target.targetDestroyed", {"targetId": target_id})
        return {"success": True}


# -- accessibility trees a hostile browser may send (Accessibility.getFullAXTree nodes) ----------


def ax_node(node_id: str, child_ids=(), *, parent: str | None = None, role: str = "generic", name: str = "") -> dict:
    """One AX node in Chrome's shape; its backend DOM node id is the number in its id."""
    node = {
        "nodeId": node_id,
        "role": {"type": "role", "value": role},
        "name": {"type": "computedString", "value": name},
        "childIds": list(child_ids),
        "backendDOMNodeId": int(node_id.lstrip("n")),
    }
    if parent is not None:
        node["parentId"] = parent
    return node


def ax_duplicated(levels: int) -> list[dict]:
    """A chain in which every node lists its child twice: 2**levels paths to the last one."""
    return [
        ax_node(f"n{i}", [f"n{i + 1}"] * 2 if i < levels else [], parent=f"n{i - 1}" if i else None, name=f"level {i}")
        for i in range(levels + 1)
    ]


def ax_cycle() -> list[dict]:
    """A root whose child n1 and grandchild n2 list each other (and the root) as children."""
    return [
        ax_node("n0", ["n1"], name="root"),
        ax_node("n1", ["n2"], parent="n0", name="one"),
        ax_node("n2", ["n1", "n0", "n2"], parent="n1", name="two"),
    ]


def ax_wide(count: int) -> list[dict]:
    """A root with ``count - 1`` children."""
    return [ax_node("n0", [f"n{i}" for i in range(1, count)], name="root")] + [
        ax_node(f"n{i}", parent="n0", role="button", name=f"b{i}") for i in range(1, count)
    ]


def ax_deep(count: int) -> list[dict]:
    """A chain of ``count`` nodes, each the only child of the one before."""
    return [
        ax_node(f"n{i}", [f"n{i + 1}"] if i + 1 < count else [], parent=f"n{i - 1}" if i else None, name=f"d{i}")
        for i in range(count)
    ]


def memory_link(chrome: FakeChrome, clock, *, default_timeout: float = 30.0) -> CDPConnection:
    """A CDPConnection wired to ``chrome`` in memory; ``abort()`` simulates a dropped socket."""
    detach: list[Callable[[], None]] = []

    def abort() -> None:
        for each in detach:
            each()
        link.connection_lost("connection aborted")

    link = CDPConnection(clock, chrome.receive, abort, default_timeout=default_timeout, description="FakeChrome")
    detach.append(chrome.connect(link.message_received))
    return link


class _FakeServerProtocol(WebSocketServerProtocol):
    def __init__(self) -> None:
        super().__init__()
        #: The CDP methods received on this connection, in order (proves it stayed silent).
        self.methods: list[str] = []

    def onConnect(self, request):
        self.factory.requests.append(request)
        if self.factory.refuse is not None:
            raise ConnectionDeny(*self.factory.refuse)
        return

    def onOpen(self):
        self._detach = self.factory.chrome.connect(
            lambda data: self.sendMessage(data if isinstance(data, bytes) else data.encode("utf-8"), isBinary=False)
        )
        self.factory.connections.append(self)
        self.factory.opened.append(self)

    def onMessage(self, payload, isBinary):
        self.methods.append(json.loads(payload).get("method"))
        self.factory.chrome.receive(payload.decode("utf-8"))

    def onClose(self, wasClean, code, reason):
        if getattr(self, "_detach", None) is not None:
            self._detach()
        if self in self.factory.connections:
            self.factory.connections.remove(self)


class FakeCDPServerFactory(WebSocketServerFactory):
    """Serves a `FakeChrome` over WebSocket (listen with ``reactor.listenTCP(0, factory)``).

    ``requests`` holds each handshake request (headers included); ``connections`` the
    open connections and ``opened`` every connection ever opened, in order (each lists
    the CDP ``methods`` it received); set ``refuse`` to ``(status, reason)`` to refuse
    handshakes; `drop_all` aborts every connection.
    """

    protocol = _FakeServerProtocol

    def __init__(self, chrome: FakeChrome, *, reactor):
        super().__init__("ws://127.0.0.1", reactor=reactor)
        self.chrome = chrome
        self.requests: list = []
        self.connections: list[_FakeServerProtocol] = []
        self.opened: list[_FakeServerProtocol] = []
        #: Where `serve_fake_chrome` listens.
        self.listening: Any = None
        self.port_number = 0
        self.url = ""
        self.refuse: tuple[int, str] | None = None
        self.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)

    def links(self) -> list[_FakeServerProtocol]:
        """The connections ever opened that were more than a finished probe (a registration's
        lone ``Browser.getVersion``): the CDP links a proxy held, in order."""
        return [
            connection
            for connection in self.opened
            if connection.methods != ["Browser.getVersion"] or connection in self.connections
        ]

    def drop_all(self) -> None:
        """Abort every client connection without a closing handshake."""
        for connection in list(self.connections):
            cast(ITCPTransport, connection.transport).abortConnection()


def serve_fake_chrome(reactor, chrome: FakeChrome | None = None) -> FakeCDPServerFactory:
    """A `FakeChrome` served on a free loopback port: the factory, with ``url`` (its
    DevTools browser URL, whose browser id is unique per port, as each Chrome run's is),
    ``port_number`` and ``listening`` (stop it with ``listening.stopListening()`` after
    `drop_all`)."""
    factory = FakeCDPServerFactory(chrome or FakeChrome(), reactor=reactor)
    factory.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.port_number = factory.listening.getHost().port
    factory.url = f"ws://127.0.0.1:{factory.port_number}/devtools/browser/fake-{factory.port_number}"
    return factory
