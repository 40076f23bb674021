"""Debugging tools: take_snapshot, evaluate_script, take_screenshot; memory: take_heapsnapshot."""

import base64
import json
from typing import Any

from mcproxy.artifacts.names import guess_mime_type, is_text
from mcproxy.browser.cdp.messages import THREAD_DECODE_BYTES
from mcproxy.errors import CDPError, ToolError
from mcproxy.threads import b64decode_in_pieces, thread_runner
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.extension_targets import worker_for
from mcproxy.tools.settle import act_and_settle
from mcproxy.tools.snapshot import element_error, resolve_element, resolve_uid, take_snapshot

_MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
#: Characters of JSON a script returns inline; a bigger result stays in the page (only its
#: size crosses), unless ``filePath`` asks for it as a file. Megabytes of text help no model
#: and would cost every other user a slow reactor turn to encode.
INLINE_RESULT_CHARS = 1_000_000
#: Bytes of image returned inline (as chrome-devtools-mcp does); a bigger screenshot is saved
#: as an artifact instead.
INLINE_IMAGE_BYTES = 2_000_000


def _artifact_store(call: ToolCall, name: str | None = None):
    """Where the ``filePath`` result goes; checked before any work, so a bad name costs nothing."""
    return call.file_store(name or call.args["filePath"])


async def _save(call: ToolCall, data: bytes, mime_type: str, name: str | None = None):
    """Save ``data`` as the caller's ``filePath`` artifact (or as ``name``)."""
    name = name or call.args["filePath"]
    store = _artifact_store(call, name)
    return await store.save(call.context.principal.user_id, name, data, mime_type)


tools = ToolSet("debugging")


@tools.page_tool(
    "take_snapshot",
    title="Take snapshot",
    description=(
        "Describe the page as text from its accessibility tree: one line per element with a uid that "
        "click, fill, evaluate_script and take_screenshot accept. Prefer it to a screenshot; "
        "uids come from the latest snapshot."
    ),
    params={
        "verbose": s.boolean("Include every node of the accessibility tree, not only the useful ones. Default false."),
        "filePath": s.string(
            "Save the snapshot as a text file instead of returning it: a name relative to your own "
            "artifact directory (e.g. 'snapshots/home.txt'), returned as a resource to read."
        ),
    },
)
async def take_snapshot_tool(call: ToolCall) -> Response:
    """Render the page's accessibility tree as the latest snapshot, inline or saved as a text file."""
    if call.args.get("filePath"):
        _artifact_store(call)
    snapshot = await take_snapshot(call.page, verbose=bool(call.args.get("verbose")))
    file_path = call.args.get("filePath")
    if not file_path:
        return Response().add_snapshot(snapshot)
    mime_type = guess_mime_type(file_path)
    artifact = await _save(call, snapshot.encode("utf-8"), mime_type if is_text(mime_type) else "text/plain")
    return Response().add_artifact(artifact, "Snapshot")


def _script_error(details: dict) -> ToolError:
    exception = details.get("exception", {})
    text = exception.get("description") or details.get("text") or "unknown error"
    return ToolError(f"The script failed: {text}")


@tools.page_tool(
    "evaluate_script",
    title="Evaluate script",
    description=(
        "Run a JavaScript function in the page and return its JSON-serializable result, e.g. "
        "`() => document.title`, or `(el) => el.innerText` with args naming snapshot uids."
    ),
    params={
        "function": s.string(
            'The JavaScript function (or, with format "script", the script) to run.',
            max_length=s.MAX_SCRIPT_LENGTH,
        ),
        "sourcePath": s.string(
            "A file with the source on the server's disk: refused here (the server is shared); "
            'pass the source as "function".'
        ),
        "format": s.string(
            '"function" (default): a function, called with args; "script": classic code, no args.',
            enum=("function", "script"),
        ),
        "args": s.array("Element uids from the latest snapshot, passed to the function in order.", s.uid()),
        "filePath": s.string(
            "Save the JSON result as an artifact of this name (read it with resources/read) "
            "instead of returning it inline."
        ),
        "dialogAction": s.string(
            'How to answer dialogs the script opens: "accept" (default), "dismiss", or the text for a prompt.'
        ),
        "waitForStableDom": s.boolean("Wait for the page to settle after the script. Default true."),
        "serviceWorkerId": s.string(
            "Run in this extension service worker (an id from list_pages) instead of a page; "
            "pageId can then be left out, and args (element uids) cannot be used."
        ),
    },
    page_id=s.page_id("The id of the page to run the script in (from list_pages). Required."),
    # Left out when serviceWorkerId names where to run (the registry checks one of them is there).
    page_optional=True,
)
async def evaluate_script(call: ToolCall) -> Response:
    """Run the caller's function in the page (elements as arguments); JSON result."""
    args = call.args
    if args.get("sourcePath"):
        raise ToolError(
            '"sourcePath" would name a file on this server, which is shared and not your machine; '
            'pass the script itself as "function".'
        )
    if args.get("filePath"):
        _artifact_store(call)
    source = args.get("function")
    if not source:
        raise ToolError('Missing required argument "function": the JavaScript to run.')
    uids = args.get("args") or []
    as_script = args.get("format") == "script"
    if as_script and uids:
        raise ToolError('"args" needs format "function": a classic script cannot receive arguments.')
    worker_id = args.get("serviceWorkerId")
    if worker_id:
        if uids:
            raise ToolError('"args" (element uids) cannot be used with "serviceWorkerId": a service worker has no DOM.')
        return await _evaluate_in_worker(call, worker_id, source, as_script)
    page = call.page
    elements = [(await resolve_element(page, uid))[1] for uid in uids]
    method, params = _script_call(source, as_script, elements, _result_limit(call))
    outcome: dict = {}

    async def run() -> None:
        outcome.update(await page.send(method, params, timeout=call.config.navigation_timeout))

    dialog_action = args.get("dialogAction", "accept")

    def answer_dialog(_: str, event: dict) -> None:
        reply = {"accept": dialog_action != "dismiss"}
        if event.get("type") == "prompt" and dialog_action not in ("accept", "dismiss"):
            reply["promptText"] = dialog_action
        page.send("Page.handleJavaScriptDialog", reply).addErrback(lambda _: None)

    unsubscribe = page.subscribe("Page.javascriptDialogOpening", answer_dialog)
    try:
        if args.get("waitForStableDom", True):
            await act_and_settle(
                page, call.clock, run, navigation_timeout=call.config.navigation_timeout, stop_on_dialog=False
            )
        else:
            await run()
    finally:
        unsubscribe()
    return await _script_answer(call, outcome, as_script, "page")


def _result_limit(call: ToolCall) -> int | None:
    """How much JSON the script may send back: inline results are bounded, files are not."""
    return None if call.args.get("filePath") else INLINE_RESULT_CHARS


def _script_call(source: str, as_script: bool, elements: list[str], limit: int | None) -> tuple[str, dict]:
    """The CDP call that runs the caller's source (elements as the function's arguments).

    A function's result is JSON text made in the page; over ``limit`` characters only
    ``{"tooLarge": length}`` comes back, so the browser never sends what would be refused."""
    bounded = (
        "json" if limit is None else f"(json !== undefined && json.length > {limit} ? {{tooLarge: json.length}} : json)"
    )
    method: str
    params: dict[str, Any]
    if as_script:
        method, params = "Runtime.evaluate", {"expression": source}
    elif elements:
        method, params = (
            "Runtime.callFunctionOn",
            {
                "objectId": elements[0],
                "functionDeclaration": (
                    f"async function (...elements) {{ const fn = ({source}\n);"
                    f" const json = JSON.stringify(await fn(...elements)); return {bounded}; }}"
                ),
                "arguments": [{"objectId": element} for element in elements],
            },
        )
    else:
        method, params = (
            "Runtime.evaluate",
            {
                "expression": (
                    f"(async () => {{ const fn = ({source}\n);"
                    f" const json = JSON.stringify(await fn()); return {bounded}; }})()"
                )
            },
        )
    params.update(awaitPromise=True, returnByValue=True, userGesture=True)
    return method, params


async def _script_answer(call: ToolCall, outcome: dict, as_script: bool, where: str) -> Response:
    """The script's JSON result (inline, or saved as the ``filePath`` artifact), or its
    exception as a ToolError."""
    if "exceptionDetails" in outcome:
        raise _script_error(outcome["exceptionDetails"])
    result = outcome.get("result", {})
    if not as_script and isinstance(result.get("value"), dict):
        raise ToolError(
            f"The script's result is {result['value'].get('tooLarge')} characters of JSON, more than the"
            f" {INLINE_RESULT_CHARS} returned inline. Return less (a summary, a slice), or pass"
            ' "filePath" to save the whole result as a file you read with resources/read.'
        )
    if "value" not in result:
        text = "undefined"
    elif as_script:
        text = json.dumps(result["value"], ensure_ascii=False, separators=(",", ":"))
    else:
        text = result["value"]
    if call.args.get("filePath"):
        artifact = await _save(call, text.encode("utf-8"), "application/json")
        return Response().add_artifact(artifact, f"The result of the script (run on {where})")
    return Response().add(f"Script ran on {where} and returned:\n```json\n{text}\n```")


async def _evaluate_in_worker(call: ToolCall, worker_id: str, source: str, as_script: bool) -> Response:
    """Run the source in an extension service worker (no DOM, so no settling and no dialogs)."""
    worker = await worker_for(call, worker_id)
    method, params = _script_call(source, as_script, [], _result_limit(call))
    outcome = await worker.send(method, params, timeout=call.config.navigation_timeout)
    return await _script_answer(call, outcome, as_script, f"service worker {worker_id}")


@tools.page_tool(
    "take_screenshot",
    title="Take screenshot",
    description="Capture the viewport, the full page, or one element (uid) as an image.",
    params={
        "format": s.string('Image format. Default "png".', enum=("png", "jpeg", "webp"), default="png"),
        "quality": s.number("JPEG/WebP quality, 0-100 (ignored for PNG).", minimum=0, maximum=100),
        "uid": s.uid("Capture only this element (a uid from the latest snapshot)."),
        "fullPage": s.boolean("Capture the whole page, not just the viewport. Not with uid."),
        "filePath": s.string(
            "Save the image instead of attaching it: a name relative to your own artifact directory "
            "(e.g. 'shots/home.png'), returned as a resource to read."
        ),
    },
)
async def take_screenshot(call: ToolCall) -> Response:
    """Capture the viewport, the full page or one element, inline or saved as an image file."""
    args = call.args
    if args.get("filePath"):
        _artifact_store(call)
    uid = args.get("uid")
    if uid and args.get("fullPage"):
        raise ToolError('"uid" and "fullPage" cannot be used together: screenshot either an element or the page.')
    page = call.page
    image_format = args.get("format", "png")
    params: dict = {"format": image_format}
    if image_format != "png" and "quality" in args:
        params["quality"] = round(args["quality"])
    if uid:
        params["clip"] = await _element_clip(page, uid)
        message = f'Took a screenshot of node with uid "{uid}".'
    elif args.get("fullPage"):
        metrics = await page.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        params["captureBeyondViewport"] = True
        message = "Took a screenshot of the full current page."
    else:
        message = "Took a screenshot of the current page's viewport."
    shot = await page.send("Page.captureScreenshot", params, timeout=call.config.navigation_timeout)
    size = len(shot["data"]) * 3 // 4
    if args.get("filePath") or size > INLINE_IMAGE_BYTES:
        name = args.get("filePath")
        if name is None:
            message += f" It is {size} bytes, too big to return inline, so it was saved as a file."
            name = f"screenshots/screenshot-{round(call.clock.seconds() * 1000)}.{image_format}"
        artifact = await _save(call, await _decoded(call, shot["data"]), _MIME_TYPES[image_format], name)
        return Response().add(message).add_artifact(artifact, "Screenshot")
    return Response().add(message).add_image(shot["data"], _MIME_TYPES[image_format])


async def _decoded(call: ToolCall, data: str) -> bytes:
    """Base64 ``data`` decoded, in a thread when it is big (a tall page's screenshot is tens
    of MB, which would hold the reactor)."""
    run = thread_runner(call.clock) if len(data) >= THREAD_DECODE_BYTES else None
    return await run(b64decode_in_pieces, data) if run is not None else base64.b64decode(data)


@tools.page_tool(
    "take_heapsnapshot",
    category="memory",
    title="Take heap snapshot",
    description=(
        "Record a heap snapshot of the page's JavaScript objects, for finding memory leaks and what "
        "holds memory. It is saved as a file you read with resources/read."
    ),
    params={
        "filePath": s.string(
            "Where to save the .heapsnapshot file: a name relative to your own artifact directory "
            "(e.g. 'heap/home.heapsnapshot')."
        ),
    },
    required=("filePath",),
)
async def take_heapsnapshot(call: ToolCall) -> Response:
    """Save a heap snapshot of the page as an artifact, chunk by chunk as Chrome streams it.

    The snapshot is never held whole (they reach hundreds of MB); the CDP call is bounded by
    ``browser.call_timeout``. Past ``artifacts.max_bytes`` the partial file is removed.
    """
    store = _artifact_store(call)
    page = call.page
    writer = store.writer(call.context.principal.user_id, call.args["filePath"], "application/json")
    too_big: list[ToolError] = []

    def on_chunk(_: str, event: dict) -> None:
        if too_big:
            return
        try:
            writer.write(event["chunk"].encode("utf-8"))
        except ToolError as e:  # the writer removed the file already
            too_big.append(e)

    unsubscribe = page.subscribe("HeapProfiler.addHeapSnapshotChunk", on_chunk)
    try:
        await page.send("HeapProfiler.takeHeapSnapshot", {"reportProgress": False})
    except BaseException:
        writer.abort()
        raise
    finally:
        unsubscribe()
    if too_big:
        raise too_big[0]
    return Response().add_artifact(await writer.finish(), "Heap snapshot")


async def _element_clip(page, uid: str) -> dict:
    """The element's border box in page coordinates, after scrolling it into view."""
    backend = resolve_uid(page, uid)
    try:
        await page.send("DOM.scrollIntoViewIfNeeded", {"backendNodeId": backend})
        box = await page.send("DOM.getBoxModel", {"backendNodeId": backend})
    except CDPError as e:
        raise element_error(page, uid, e) from None
    metrics = await page.send("Page.getLayoutMetrics")
    viewport = metrics["cssVisualViewport"]
    quad = box["model"]["border"]
    xs, ys = quad[0::2], quad[1::2]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    if width < 1 or height < 1:
        raise ToolError(f'Element uid "{uid}" has no visible box on page {page.page_id}, so it cannot be captured.')
    return {
        "x": min(xs) + viewport["pageX"],
        "y": min(ys) + viewport["pageY"],
        "width": width,
        "height": height,
        "scale": 1,
    }
