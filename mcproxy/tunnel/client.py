"""``mcproxy-connect``: run next to Chrome, dial the proxy's ``/tunnel``, relay CDP both ways.

The browser side is either a Chrome that listens on loopback (``--browser-url``: each
``open`` of the proxy opens a fresh DevTools WebSocket, found through ``/json/version``) or
a Chrome this program starts with ``--remote-debugging-pipe`` (``--launch``: fds 3 and 4,
NUL-separated JSON, no DevTools port at all), stopped when this program ends.

The tunnel comes back by itself, after 1 s, 2 s, 4 s ... up to 30 s, when the proxy
restarts or the network drops; it gives up only when the proxy says it never will accept
it (a bad token, a missing permission, a newer tunnel of the same user), with a message
and an exit code of its own (`EXIT_CODES`).
"""

import argparse
import ipaddress
import json
import os
import signal
import sys
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS

from mcproxy.browser import pipe
from mcproxy.tunnel import wire

#: Seconds before each reconnect: doubled from the first up to the last.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: The size cap of one CDP message (the proxy's ``browser.max_message_bytes`` by default).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Seconds to connect (TCP, TLS and the WebSocket handshake) to the proxy or to Chrome.
CONNECT_TIMEOUT = 10.0

EXIT_USAGE = 2
EXIT_BAD_TOKEN = 3
EXIT_FORBIDDEN = 4
EXIT_REPLACED = 5
EXIT_BROWSER = 6
EXIT_NO_TUNNEL_ENDPOINT = 7
EXIT_UNREGISTERED = 8
#: What each final close code of the proxy means to the user, and the exit code it ends with.
EXIT_CODES = {
    wire.CLOSE_UNAUTHORIZED: (EXIT_BAD_TOKEN, "the proxy refused the token"),
    wire.CLOSE_FORBIDDEN: (EXIT_FORBIDDEN, "the token may not open a tunnel (it needs 'tunnel' or 'register')"),
    wire.CLOSE_REPLACED: (EXIT_REPLACED, "another mcproxy-connect of the same user replaced this one"),
    wire.CLOSE_UNREGISTERED: (EXIT_UNREGISTERED, "the user was unregistered on the proxy (DELETE /api/users)"),
}


class Finished(Exception):
    """The program ends with ``code`` after saying ``message``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Status:
    """One line of status on a terminal (rewritten in place), one line per change otherwise."""

    def __init__(self, stream=sys.stderr):
        self._stream = stream
        self._tty = stream.isatty()

    def say(self, text: str) -> None:
        if self._tty:
            self._stream.write(f"\r\x1b[Kmcproxy-connect: {text}")
        else:
            self._stream.write(f"mcproxy-connect: {text}\n")
        self._stream.flush()

    def done(self, text: str) -> None:
        """The last word, on a line of its own."""
        if self._tty:
            self._stream.write("\n")
        self._stream.write(f"mcproxy-connect: {text}\n")
        self._stream.flush()


class Relay(Protocol):
    """What a browser side tells the tunnel."""

    def to_proxy(self, message: bytes) -> None: ...

    def browser_closed(self, reason: str) -> None: ...


class BrowserSide(Protocol):
    """A browser behind the tunnel: a fresh CDP browser connection on `open`, messages both ways."""

    mode: str
    product: str

    def describe(self) -> str:
        """Which browser, for the status line."""
        ...

    def open(self, relay: Relay) -> Deferred: ...

    def send(self, message: bytes) -> None: ...

    def close(self) -> None: ...

    def stop(self) -> Deferred: ...


# -- a Chrome listening on loopback ------------------------------------------------------


class _ChromeSocket(WebSocketClientProtocol):
    """One DevTools WebSocket to Chrome, relayed as it is."""

    relay: Relay | None = None

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred = Deferred()

    def connectionMade(self) -> None:
        wire.no_delay(self.transport)
        super().connectionMade()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.relay is not None and not isBinary:
            self.relay.to_proxy(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        why = reason or getattr(self, "wasNotCleanReason", None) or f"closed with code {code}"
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"the DevTools WebSocket did not open: {why}"))
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.browser_closed(why)


def loopback_url(url: str) -> tuple[str, int]:
    """The host and port of ``--browser-url``, which must be on this machine's loopback."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        port = parts.port
    except ValueError:
        loopback, port = False, None
    if parts.scheme != "http" or not loopback or port is None:
        raise Finished(
            EXIT_USAGE,
            f"--browser-url must be http://127.0.0.1:PORT (a Chrome started with --remote-debugging-port=PORT"
            f" that listens on loopback only), not {url!r}",
        )
    return host, port


class PortBrowser:
    """A Chrome started with ``--remote-debugging-port`` on loopback."""

    mode = "port"
    product = "Chrome"

    def __init__(self, reactor, browser_url: str):
        self.reactor = reactor
        self.host, self.port = loopback_url(browser_url)
        self.browser_url = f"http://{self.host}:{self.port}"
        self._socket: _ChromeSocket | None = None

    def describe(self) -> str:
        return self.browser_url

    def open(self, relay: Relay) -> Deferred:
        return Deferred.fromCoroutine(self._open(relay))

    async def _open(self, relay: Relay) -> None:
        self.close()
        response = await treq.get(f"{self.browser_url}/json/version", timeout=CONNECT_TIMEOUT, persistent=False)
        version = json.loads(await response.content())
        self.product = str(version.get("Browser") or self.product)
        ws_url = version["webSocketDebuggerUrl"]
        factory = WebSocketClientFactory(ws_url, reactor=self.reactor)
        factory.protocol = _ChromeSocket
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            openHandshakeTimeout=CONNECT_TIMEOUT,
            closeHandshakeTimeout=1,
            perMessageCompressionOffers=[],
        )
        # Chrome's host check accepts an IP literal or localhost, which the loopback rule ensures.
        endpoint = HostnameEndpoint(self.reactor, self.host, self.port, timeout=CONNECT_TIMEOUT)
        socket = cast(_ChromeSocket, await endpoint.connect(factory))
        await socket.opened
        socket.relay = relay
        self._socket = socket

    def send(self, message: bytes) -> None:
        if self._socket is not None:
            wire.send(self._socket, message, binary=False)

    def close(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.relay = None
            socket.dropConnection(abort=True)

    def stop(self) -> Deferred:
        self.close()
        return defer.succeed(None)


# -- a Chrome this program launches, over a pipe ------------------------------------------


def find_chrome() -> str:
    """The Chrome binary of this machine, or Finished saying to pass --chrome."""
    found = pipe.find_chrome()
    if found is None:
        raise Finished(EXIT_USAGE, "no Chrome found on this machine: give its path with --chrome")
    return found


class PipeBrowser:
    """A Chrome launched with ``--remote-debugging-pipe`` and a profile of its own."""

    mode = "pipe"
    product = "Chrome (launched by mcproxy-connect)"

    def __init__(self, reactor, chrome: str, profile: str, *, headless: bool, extra: list[str], on_exit):
        if sys.platform == "win32":
            raise Finished(EXIT_USAGE, "--launch is not available on Windows yet: use --browser-url")
        self.reactor = reactor
        self.argv = pipe.pipe_argv(chrome, profile, headless=headless, extra=extra)
        self.profile = profile
        self._on_exit = on_exit
        self._relay: Relay | None = None
        self._numbers = pipe.Renumbering()
        self._process: pipe.PipeProcess | None = None

    def start(self) -> None:
        os.makedirs(self.profile, mode=0o700, exist_ok=True)
        self._process = pipe.PipeProcess.spawn(self.reactor, self.argv, self.from_chrome, self.chrome_ended)

    def describe(self) -> str:
        pid = self._process.pid if self._process is not None else None
        return f"the Chrome it launched (pid {pid}, no DevTools port)"

    def open(self, relay: Relay) -> Deferred:
        self.close()
        if self._process is None or not self._process.running:
            return defer.fail(ConnectionError("Chrome is not running"))
        self._relay = relay
        return defer.succeed(None)

    def send(self, message: bytes) -> None:
        call = self._numbers.outgoing(message)
        if call is not None and self._process is not None and self._relay is not None:
            self._process.write(call)

    def from_chrome(self, message: bytes) -> None:
        relayed = self._numbers.incoming(message)
        if relayed is not None and self._relay is not None:
            self._relay.to_proxy(relayed)

    def close(self) -> None:
        if self._relay is None:
            return
        self._relay = None
        if self._process is not None:
            for message in self._numbers.closing():
                self._process.write(message)

    def chrome_ended(self, last_words: str) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.browser_closed("Chrome exited")
        self._on_exit("Chrome exited" + (f": {last_words}" if last_words else ""))

    def stop(self) -> Deferred:
        """End Chrome by its PID: TERM, then KILL after 5 s."""
        if self._process is None:
            return defer.succeed(None)
        return self._process.stop(self.reactor)


# -- the tunnel ----------------------------------------------------------------------------


class TunnelClientProtocol(WebSocketClientProtocol):
    """The client's end of the tunnel: control messages in binary frames, CDP in text frames."""

    connector: "Connector"

    def connectionMade(self) -> None:
        wire.no_delay(self.transport)
        super().connectionMade()

    def onOpen(self) -> None:
        browser = self.connector.browser
        hello = wire.encode("hello", v=wire.VERSION, product=browser.product, mode=browser.mode)
        wire.send(self, hello, binary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        browser = self.connector.browser
        if not isBinary:
            browser.send(payload)
            return
        try:
            message = wire.decode(payload)
        except wire.BadControl as e:
            self.sendClose(wire.CLOSE_PROTOCOL, str(e)[:120])
            return
        kind = message["t"]
        if kind == "welcome":
            self.connector.welcomed(message.get("user") or "?")
        elif kind == "open":
            browser.open(self).addCallbacks(
                lambda _: wire.send(self, wire.encode("opened"), binary=True),
                self._not_opened,
            )
        elif kind == "close":
            browser.close()

    def _not_opened(self, failure) -> None:
        why = failure.getErrorMessage() or repr(failure.value)
        self.connector.status.say(f"connected, but the browser does not answer: {why}")
        wire.send(self, wire.encode("error", msg=why), binary=True)

    def to_proxy(self, message: bytes) -> None:
        wire.send(self, message, binary=False)

    def browser_closed(self, reason: str) -> None:
        wire.send(self, wire.encode("closed", reason=reason), binary=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.connector.browser.close()
        status = (getattr(self, "http_status_line", "") or "").split()
        self.connector.lost(
            code, reason or getattr(self, "wasNotCleanReason", None) or "", status[1] if len(status) > 1 else None
        )


class Connector:
    """Keeps the tunnel up: dials, reconnects with backoff, and says how it goes."""

    def __init__(self, reactor, proxy: str, token: str, browser: BrowserSide, status: Status, trust_root: Any = None):
        self.reactor = reactor
        #: The CA the proxy's certificate must come from (None: the system's trusted CAs).
        self._trust_root = trust_root
        self.browser = browser
        self.status = status
        self.proxy = proxy
        self.url = tunnel_url(proxy)
        parts = urlsplit(self.url)
        self._secure = parts.scheme == "wss"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._secure else 80)
        self._token = token
        self._failures = 0
        self._retry: Any = None
        self._protocol: TunnelClientProtocol | None = None
        self.finished: Deferred = Deferred()

    def start(self) -> None:
        self._dial()

    def _dial(self) -> None:
        self._retry = None
        factory = WebSocketClientFactory(
            self.url,
            reactor=self.reactor,
            protocols=[wire.SUBPROTOCOL],
            headers={"Authorization": f"Bearer {self._token}"},
        )
        factory.protocol = TunnelClientProtocol
        factory.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            autoPingInterval=wire.PING_INTERVAL,
            autoPingTimeout=wire.PING_INTERVAL,
            openHandshakeTimeout=CONNECT_TIMEOUT,
            closeHandshakeTimeout=1,
            perMessageCompressionOffers=[],
        )
        endpoint: Any = HostnameEndpoint(self.reactor, self._host, self._port, timeout=CONNECT_TIMEOUT)
        if self._secure:
            endpoint = wrapClientTLS(optionsForClientTLS(self._host, trustRoot=self._trust_root), endpoint)
        dialing = endpoint.connect(factory)

        def connected(protocol: TunnelClientProtocol) -> None:
            protocol.connector = self
            self._protocol = protocol

        dialing.addCallbacks(connected, lambda failure: self.lost(None, failure.getErrorMessage(), None))

    def welcomed(self, user: str) -> None:
        self._failures = 0
        self.status.say(f"connected to {self.proxy} as {user}, relaying to {self.browser.describe()}")

    def lost(self, code: int | None, reason: str, http_status: str | None) -> None:
        self._protocol = None
        if self.finished.called:
            return
        if code in EXIT_CODES:
            exit_code, meaning = EXIT_CODES[code]
            self.finish(exit_code, f"{meaning}: {reason}" if reason else meaning)
            return
        if http_status in ("401", "403"):
            self.finish(EXIT_BAD_TOKEN, f"the proxy refused the token (HTTP {http_status})")
            return
        if http_status in ("400", "404", "405"):
            self.finish(
                EXIT_NO_TUNNEL_ENDPOINT,
                f"{self.url} is no tunnel endpoint (HTTP {http_status}): is --proxy the address of an mcproxy"
                " that accepts tunnels?",
            )
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**self._failures)
        self._failures += 1
        why = reason or (f"HTTP {http_status}" if http_status else f"closed with code {code}")
        self.status.say(f"reconnecting in {delay:g} s ({why})")
        self._retry = self.reactor.callLater(delay, self._dial)

    def browser_gone(self, why: str) -> None:
        """A launched Chrome ended: so does this program."""
        self.finish(EXIT_BROWSER, why)

    def finish(self, code: int, message: str) -> None:
        if not self.finished.called:
            self.finished.errback(Finished(code, message))

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        protocol = self._protocol
        if protocol is None:
            return
        if protocol.state == protocol.STATE_OPEN:
            protocol.sendClose(1000, "mcproxy-connect stops")
        else:  # still in its opening handshake
            protocol.dropConnection(abort=True)


def tunnel_url(proxy: str) -> str:
    """``wss://host/tunnel`` for ``https://host``, ``ws://`` for ``http://``."""
    parts = urlsplit(proxy)
    schemes = {"https": "wss", "http": "ws"}
    if parts.scheme not in schemes or not parts.hostname:
        raise Finished(EXIT_USAGE, f"--proxy must be the proxy's https:// (or http://) address, not {proxy!r}")
    return f"{schemes[parts.scheme]}://{parts.netloc}{parts.path.rstrip('/')}{wire.PATH}"


def read_token(args: argparse.Namespace, environ: dict[str, str], status: Status) -> str:
    """The token from ``MCPROXY_TOKEN``, ``--token-file``, or (warned against) ``--token``."""
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise Finished(EXIT_USAGE, f"cannot read --token-file: {e}") from None
    elif args.token:
        status.done("warning: --token shows your token to every user of this machine (ps); use MCPROXY_TOKEN")
        token = args.token
    else:
        token = environ.get("MCPROXY_TOKEN", "").strip()
    if not token:
        raise Finished(EXIT_USAGE, "no token: set MCPROXY_TOKEN or give --token-file PATH")
    return token


def read_trust_root(path: str | None) -> Any:
    """The CA certificate in ``path`` (PEM) that the proxy's certificate must come from; None
    (the system's trusted CAs) without a path."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return Certificate.loadPEM(f.read())
    except OSError as e:
        raise Finished(EXIT_USAGE, f"cannot read --ca-file: {e.strerror}") from None
    except Exception as e:  # pyOpenSSL's errors for what is no PEM certificate
        raise Finished(EXIT_USAGE, f"--ca-file holds no PEM certificate: {e}") from None


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(
        prog="mcproxy-connect",
        description="Connect your Chrome to an mcproxy: dial out to the proxy and relay the DevTools protocol.",
        epilog="The token comes from MCPROXY_TOKEN or --token-file. Exit codes: 2 usage, 3 token refused,"
        " 4 permission missing, 5 replaced by another mcproxy-connect, 6 Chrome ended, 7 not a tunnel endpoint.",
    )
    arguments.add_argument("--proxy", required=True, help="the proxy's address, e.g. https://proxy.example:3000")
    arguments.add_argument("--token-file", help="a file holding the token (better than --token)")
    arguments.add_argument("--token", help="the token itself: visible to other users of this machine; avoid")
    arguments.add_argument(
        "--ca-file",
        metavar="PEM",
        help="for an https:// proxy whose certificate comes from a CA of your own: that CA's certificate"
        " (default: the CAs this system trusts)",
    )
    browser = arguments.add_mutually_exclusive_group()
    browser.add_argument(
        "--browser-url",
        default="http://127.0.0.1:9222",
        help="a Chrome started with --remote-debugging-port, on loopback (default http://127.0.0.1:9222)",
    )
    browser.add_argument("--launch", action="store_true", help="start Chrome with no DevTools port (over a pipe)")
    arguments.add_argument("--chrome", help="with --launch: the Chrome binary (default: found on this machine)")
    arguments.add_argument("--headless", action="store_true", help="with --launch: a Chrome without windows")
    arguments.add_argument(
        "--profile",
        default=os.path.join(os.path.expanduser("~"), ".mcproxy-connect", "profile"),
        help="with --launch: the profile directory, used by this Chrome alone (default ~/.mcproxy-connect/profile)",
    )
    arguments.add_argument(
        "--chrome-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="with --launch: one more command-line flag for Chrome (repeatable)",
    )
    return arguments


async def run(reactor, argv: list[str], environ: dict[str, str], status: Status) -> None:
    args = parser().parse_args(argv)
    token = read_token(args, environ, status)
    connector: Connector | None = None

    def chrome_exited(why: str) -> None:
        if connector is not None:
            connector.browser_gone(why)

    browser: BrowserSide
    if args.launch:
        launched = PipeBrowser(
            reactor,
            args.chrome or find_chrome(),
            args.profile,
            headless=args.headless,
            extra=args.chrome_arg,
            on_exit=chrome_exited,
        )
        browser = launched
    else:
        browser = PortBrowser(reactor, args.browser_url)
    connector = Connector(reactor, args.proxy, token, browser, status, read_trust_root(args.ca_file))
    if args.launch:
        launched.start()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: reactor.callFromThread(connector.finish, 0, "stopped"))
    connector.start()
    try:
        await connector.finished
    finally:
        connector.stop()
        await browser.stop()


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    from twisted.internet.task import react

    status = Status()

    async def program(reactor) -> None:
        try:
            await run(reactor, sys.argv[1:] if argv is None else argv, dict(os.environ), status)
        except Finished as e:
            status.done(e.message)
            if e.code:
                raise SystemExit(e.code) from None

    react(lambda reactor: Deferred.fromCoroutine(program(reactor)))
