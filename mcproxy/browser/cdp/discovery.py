"""Finding the browser WebSocket behind a DevTools HTTP endpoint (``/json/version``).

Every failure becomes an error that tells the user what to change on their side.
"""

import json

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, ConnectionRefusedError, DNSLookupError
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from mcproxy.browser.urls import BrowserURL, parse_browser_url
from mcproxy.errors import BrowserUnavailable, InvalidBrowserURL

MAX_VERSION_BODY = 64 * 1024
HOST_REJECTED = "Host header is specified and is not an IP address or localhost"


async def discover(http_client, browser_url: str | BrowserURL, *, timeout: float, clock) -> str:
    """The browser WebSocket URL for ``browser_url``.

    ``http_client`` is treq, a treq ``HTTPClient`` or a twisted.web ``IAgent``. ws(s)
    URLs are returned as they are. For http(s) the request goes to the pinned address
    when ``browser_url`` was validated, with a Host header Chrome accepts.
    """
    if not hasattr(http_client, "get"):
        http_client = HTTPClient(http_client)
    target = browser_url if isinstance(browser_url, BrowserURL) else parse_browser_url(browser_url)
    if target.is_websocket:
        return target.url
    host = target.connect_host
    literal = f"[{host}]" if ":" in host else host
    url = f"{target.scheme}://{literal}:{target.port}/json/version"
    shown = f"{target.scheme}://{target.host}:{target.port}"

    async def fetch() -> tuple[int, bytes]:
        response = await http_client.get(
            url,
            headers={b"Host": [target.host_header.encode("ascii")], b"Accept": [b"application/json"]},
            allow_redirects=False,
        )
        chunks: list[bytes] = []

        def collect(data: bytes) -> None:
            chunks.append(data)
            if sum(map(len, chunks)) > MAX_VERSION_BODY:
                raise ValueError("the answer is too large")

        try:
            await treq.collect(response, collect)
        except ValueError:
            pass  # a body this large is no DevTools answer; judged below by its start
        return response.code, b"".join(chunks)

    def timed_out(result, seconds):
        return Failure(
            BrowserUnavailable(
                f"{shown} did not answer within {seconds:g} s; is Chrome running there with "
                f"--remote-debugging-port={target.port}, and reachable from the proxy?"
            )
        )

    request = Deferred.fromCoroutine(fetch())
    request.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
    try:
        code, body = await request
    except (CancelledError, BrowserUnavailable):
        raise
    except Exception as e:
        if isinstance(e, ConnectingCancelledError) or (
            isinstance(e, ResponseNeverReceived) and any(r.check(CancelledError) for r in e.reasons)
        ):
            raise CancelledError() from None
        raise _connect_error(e, target, shown) from None
    return _websocket_url(code, body, shown)


def _connect_error(error: Exception, target: BrowserURL, shown: str) -> Exception:
    if isinstance(error, ResponseNeverReceived):
        reasons = [r.value for r in error.reasons]
        error = reasons[0] if reasons else error
    if isinstance(error, ConnectionRefusedError):
        return BrowserUnavailable(
            f"nothing listens at {shown}; start Chrome with "
            f"--remote-debugging-port={target.port} (and --remote-debugging-address if the "
            "proxy runs on another machine)"
        )
    if isinstance(error, DNSLookupError):
        return InvalidBrowserURL(f"the host name in {shown} does not resolve")
    if isinstance(error, ConnectError):
        return BrowserUnavailable(f"cannot connect to {shown}: {error}")
    return BrowserUnavailable(f"{shown} did not answer like Chrome DevTools ({error.__class__.__name__}: {error})")


def _websocket_url(code: int, body: bytes, shown: str) -> str:
    text = body[:MAX_VERSION_BODY].decode("utf-8", "replace")
    if HOST_REJECTED in text:
        raise InvalidBrowserURL(
            f"Chrome at {shown} refused the request because of its Host header; register the "
            "browser by IP address (e.g. http://127.0.0.1:PORT) instead of a host name"
        )
    not_devtools = (
        f"{shown} is not a Chrome DevTools endpoint (GET /json/version answered {code}); "
        "give the http://host:port of Chrome started with --remote-debugging-port=PORT"
    )
    if code != 200:
        raise InvalidBrowserURL(not_devtools)
    try:
        version = json.loads(text)
    except ValueError:
        raise InvalidBrowserURL(not_devtools.replace(f"answered {code}", "did not answer JSON")) from None
    ws_url = version.get("webSocketDebuggerUrl") if isinstance(version, dict) else None
    if not isinstance(ws_url, str) or not ws_url.startswith(("ws://", "wss://")):
        raise InvalidBrowserURL(not_devtools.replace(f"answered {code}", "has no webSocketDebuggerUrl"))
    return ws_url
