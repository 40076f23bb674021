"""Network tools: list_network_requests, get_network_request (data from `mcproxy.browser.collect`).

Bodies are not collected; get_network_request asks Chrome for them. A small response body
(up to `BUFFERED_BODY_LIMIT`) comes from Chrome's buffer in one ``Network.getResponseBody``.
Chrome does not keep big bodies, and one reply holding 100 MB would sit whole in the
proxy's memory, so for a bigger GET response the proxy fetches the URL again through the
page (``Network.loadNetworkResource``: same frame, cookies and cache) and reads the stream
with ``IO.read`` in `CHUNK_BYTES` pieces: inline it stops after `BODY_TEXT_LIMIT`
characters, to a file each piece goes straight to the artifact writer.
"""

import base64
import codecs

from mcproxy.browser.entries import TRUNCATED, NetworkRequest, clip
from mcproxy.browser.page import EventTimeout
from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.collected import PAGINATION_SCHEMA, collected, in_chunks, listed, paging_schema, whole_id
from mcproxy.tools.declare import ToolSet

_HEADING = "## Network requests"
BODY_TEXT_LIMIT = 10_000
RAW_HEADERS_WAIT = 1.0
BUFFERED_BODY_LIMIT = 1024 * 1024
CHUNK_BYTES = 1024 * 1024
REFETCHED = "Note: Chrome does not keep bodies this big, so this one was fetched again from the same URL."
#: Inline, only the start is shown: read little at a time.
PREFIX_CHUNK_BYTES = 64 * 1024

RESOURCE_TYPES = (
    "document",
    "stylesheet",
    "image",
    "media",
    "font",
    "script",
    "texttrack",
    "xhr",
    "fetch",
    "prefetch",
    "eventsource",
    "websocket",
    "manifest",
    "signedexchange",
    "ping",
    "cspviolationreport",
    "preflight",
    "fedcm",
    "other",
)

NETWORK_OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "networkRequests": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "requestId": {"type": "integer"},
                    "method": {"type": "string"},
                    "url": {"type": "string"},
                    "status": {
                        "type": ["integer", "string"],
                        "description": 'The HTTP status, or "pending", or "failed - <reason>".',
                    },
                    "resourceType": {"type": "string"},
                },
                "required": ["requestId", "method", "url", "status"],
            },
        },
        "pagination": PAGINATION_SCHEMA,
    },
    "required": ["networkRequests"],
}


def _line(request: NetworkRequest) -> str:
    return f"reqid={request.id} {request.method} {request.url} [{request.status_label}]"


tools = ToolSet("network")


@tools.page_tool(
    "list_network_requests",
    title="List network requests",
    description=(
        "List the requests a page made since its last navigation, collected from the moment the page "
        "opened: method, URL and status, each with a reqid for get_network_request."
    ),
    params={
        **paging_schema("requests"),
        "resourceTypes": s.array(
            "Only requests of these resource types. Absent or empty: every type.",
            s.string("A resource type.", enum=RESOURCE_TYPES),
        ),
        "includePreservedRequests": s.boolean(
            "Also list the requests of the two previous navigations. Default false.", default=False
        ),
    },
    exclusive=False,
    dialog_safe=True,
    read_only=True,
    output_schema=NETWORK_OUTPUT_SCHEMA,
)
async def list_network_requests(call: ToolCall) -> Response:
    """The page's requests since its last navigation (or the last three), paged."""
    args = call.args
    page = listed(
        (await collected(call.page, call.clock)).network,
        args,
        preserved="includePreservedRequests",
        types="resourceTypes",
        type_of=lambda request: request.resource_type,
        what="requests",
    )
    response = Response()
    structured: dict = {"networkRequests": []}
    response.structured = structured
    if page is None:
        return response.add(f"{_HEADING}\nNo requests found.")
    chosen, found, structured["pagination"] = page
    # One section of text: the answer's is then the join below, not copied once more.
    lines = [_HEADING, *found]
    items = structured["networkRequests"]

    def render(requests: list[NetworkRequest]) -> None:
        lines.extend([_line(request) for request in requests])
        items.extend(
            [
                {
                    "requestId": request.id,
                    "method": request.method,
                    "url": request.url,
                    "status": request.status if request.status is not None else request.status_label,
                    "resourceType": request.resource_type,
                }
                for request in requests
            ]
        )

    await in_chunks(chosen, render, call.clock)
    return response.add("\n".join(lines))


def _find(call: ToolCall, network) -> NetworkRequest:
    if "reqid" not in call.args:
        raise ToolError(
            'Pass "reqid": this server has no DevTools Network panel whose selection could be used. '
            "Call list_network_requests to see the reqids."
        )
    reqid = whole_id(call.args["reqid"], "reqid")
    request = network.get(reqid)
    if request is not None:
        return request
    if network.issued(reqid):
        raise ToolError(
            f"Request {reqid} of page {call.page.page_id} is no longer kept: only the current and the two "
            f"previous navigations are ({network.limits()}). Call list_network_requests."
        )
    raise ToolError(f"No request with reqid {reqid} on page {call.page.page_id}. Call list_network_requests.")


def _headers(headers) -> list[str]:
    return [f"- {name}:{value}" for name, value in headers]


def _as_text(data: bytes) -> str:
    if not data:
        return "<empty response>"
    try:
        return clip(data.decode("utf-8"), BODY_TEXT_LIMIT)
    except UnicodeDecodeError:
        return "<binary data>"


def _require_store(call: ToolCall):
    if call.artifacts is None:
        raise ToolError("This server does not save files; call get_network_request without a file path.")
    return call.artifacts


async def _save(call: ToolCall, response: Response, path: str, data: bytes, mime_type: str | None, what: str) -> None:
    store = _require_store(call)
    artifact = await store.save(call.context.principal.user_id, path, data, mime_type or None)
    response.add_artifact(artifact, what)


async def _request_body(call: ToolCall, request: NetworkRequest, response: Response) -> None:
    if not request.has_post_data:
        return
    response.add("### Request Body")
    try:
        reply = await call.page.send("Network.getRequestPostData", {"requestId": request.cdp_id})
    except CDPError:
        response.add("<Request body not available anymore>")
        return
    text = reply.get("postData", "")
    data = base64.b64decode(text) if reply.get("base64Encoded") else text.encode("utf-8")
    path = call.args.get("requestFilePath")
    if path:
        await _save(call, response, path, data, None, "The request body")
    else:
        response.add(_as_text(data))


async def _buffered_body(call: ToolCall, request: NetworkRequest) -> bytes | None:
    """The body from Chrome's buffer, or None when Chrome no longer has it."""
    try:
        reply = await call.page.send("Network.getResponseBody", {"requestId": request.cdp_id})
    except CDPError:
        return None
    body = reply.get("body", "")
    return base64.b64decode(body) if reply.get("base64Encoded") else body.encode("utf-8")


async def _open_stream(call: ToolCall, request: NetworkRequest) -> str | None:
    """An IO stream handle over the resource fetched again by the page, or None."""
    url = request.url
    refetchable = url.startswith(("http://", "https://")) and not url.endswith(TRUNCATED)
    if request.method != "GET" or not request.frame_id or not refetchable:
        return None
    try:
        reply = await call.page.send(
            "Network.loadNetworkResource",
            {
                "frameId": request.frame_id,
                "url": request.url,
                "options": {"disableCache": False, "includeCredentials": True},
            },
            timeout=call.timeout(),
        )
    except CDPError:
        return None
    resource = reply.get("resource", {})
    return resource.get("stream") if resource.get("success") else None


async def _pump(call: ToolCall, handle: str, sink, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Feed the stream to ``sink(chunk)`` piece by piece until it ends or ``sink`` returns False."""
    try:
        while True:
            part = await call.page.send("IO.read", {"handle": handle, "size": chunk_bytes})
            data = part.get("data", "")
            chunk = base64.b64decode(data) if part.get("base64Encoded") else data.encode("utf-8")
            if not sink(chunk) or part.get("eof"):
                return
    finally:
        call.page.send("IO.close", {"handle": handle}).addErrback(lambda _: None)


class _TextPrefix:
    """A sink keeping the first `BODY_TEXT_LIMIT` characters of a UTF-8 stream (or noticing binary)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.parts: list[str] = []
        self.size = 0
        self.binary = False
        self.seen = 0

    def __call__(self, chunk: bytes) -> bool:
        self.seen += len(chunk)
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError:
            self.binary = True
            return False
        self.parts.append(text)
        self.size += len(text)
        return self.size <= BODY_TEXT_LIMIT

    def text(self) -> str:
        if self.binary:
            return "<binary data>"
        if not self.seen:
            return "<empty response>"
        return clip("".join(self.parts), BODY_TEXT_LIMIT)


async def _streamed_body(call: ToolCall, request: NetworkRequest, response: Response, path: str | None) -> bool:
    """The body fetched again and streamed: its start inline, or all of it to ``path``."""
    if not path:
        handle = await _open_stream(call, request)
        if handle is None:
            return False
        prefix = _TextPrefix()
        await _pump(call, handle, prefix, PREFIX_CHUNK_BYTES)
        response.add(prefix.text())
        response.add(REFETCHED)
        return True
    # The writer first: a refused file name must not leave a stream open in Chrome.
    writer = _require_store(call).writer(call.context.principal.user_id, path, request.mime_type or None)

    def write(chunk: bytes) -> bool:
        writer.write(chunk)
        return True

    try:
        handle = await _open_stream(call, request)
        if handle is None:
            writer.abort()
            return False
        await _pump(call, handle, write)
        artifact = await writer.finish()
    except BaseException:
        writer.abort()
        raise
    response.add_artifact(artifact, "The response body")
    response.add(REFETCHED)
    return True


async def _response_body(call: ToolCall, request: NetworkRequest, response: Response) -> None:
    if request.status is None or request.redirected:
        return
    response.add("### Response Body")
    if not request.finished:
        response.add("<Response body not available yet: the response is still loading>")
        return
    path = call.args.get("responseFilePath")
    data = await _buffered_body(call, request) if request.body_size <= BUFFERED_BODY_LIMIT else None
    if data is not None:
        if path:
            await _save(call, response, path, data, request.mime_type, "The response body")
        else:
            response.add(_as_text(data))
        return
    if not await _streamed_body(call, request, response, path):
        response.add("<Response body not available anymore>")


async def _raw_headers(page, request) -> None:
    """Give the raw response headers (Set-Cookie and all) a moment to arrive: Chrome sends
    them in an event of their own that may trail the response and even its end."""
    try:
        await page.wait_for_event(
            "Network.responseReceivedExtraInfo",
            lambda params: params.get("requestId") == request.cdp_id,
            timeout=RAW_HEADERS_WAIT,
        )
    except EventTimeout:
        request.extra_info_due = False  # Chrome will not send them after all; show what we have


@tools.page_tool(
    "get_network_request",
    title="Get network request",
    description=(
        "Show one request in full: request and response headers (Cookie and Set-Cookie included unless "
        "the server redacts them), bodies (inline up to 10,000 characters, or saved whole to a file you "
        "can read with resources/read), failure and redirect chain."
    ),
    params={
        "reqid": s.number("The reqid of the request, from list_network_requests."),
        "requestFilePath": s.string(
            "Save the request body to this file (a relative name in your artifact directory) instead of showing it."
        ),
        "responseFilePath": s.string(
            "Save the whole response body to this file (a relative name in your artifact "
            "directory) instead of showing its start."
        ),
    },
    exclusive=False,
)
async def get_network_request(call: ToolCall) -> Response:
    """One request in full: headers, bodies (inline, truncated, or saved), failure, redirects."""
    network = (await collected(call.page, call.clock)).network
    request = _find(call, network)
    if request.extra_info_due:
        await _raw_headers(call.page, request)
    response = Response()
    response.add(f"## Request {request.url}\nStatus: {request.status_label}")
    response.add("\n".join(["### Request Headers", *_headers(request.request_headers)]))
    await _request_body(call, request, response)
    if request.status is not None:
        response.add("\n".join(["### Response Headers", *_headers(request.response_headers)]))
    await _response_body(call, request, response)
    if request.failure is not None:
        response.add(f"### Request failed with\n{request.failure}")
    chain = request.redirect_chain()
    if chain:
        lines = ["### Redirect chain"]
        for depth, hop in enumerate(chain):
            kept = network.get(hop.id) is hop
            lines.append("  " * depth + (_line(hop) if kept else f"{hop.method} {hop.url} [{hop.status_label}]"))
        response.add("\n".join(lines))
    return response
