"""Navigation tools: list/select/open/close pages, navigate, wait for text."""

import json

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import deferLater

from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.dialogs import dialog_note
from mcproxy.tools.extension_targets import add_service_workers, targets_of
from mcproxy.tools.settle import first
from mcproxy.tools.snapshot import take_snapshot

_RETRY_DELAY = 0.05
#: Seconds a reload that closes a dialog gets before it is sent again.
DIALOG_RELOAD_GRACE = 3.0
_TIMEOUT = s.timeout_ms("Longest wait in milliseconds; 0 or absent uses the server's default.")

# Installed in the page: resolves with the first text found, checking again on every
# DOM mutation; ``cancel`` stops it. Nothing polls.
_WAIT_FOR_TEXT = """function (texts) {
  let done, observer;
  const promise = new Promise(resolve => { done = resolve; });
  const present = () => {
    const body = document.body ? document.body.innerText : '';
    return texts.find(t => body.includes(t) ||
      document.querySelector('[aria-label="' + CSS.escape(t) + '"]') !== null);
  };
  const check = () => {
    const found = present();
    if (found !== undefined) { observer.disconnect(); done(found); }
  };
  observer = new MutationObserver(check);
  observer.observe(document, {childList: true, subtree: true, characterData: true, attributes: true});
  check();
  return {promise, cancel: () => observer.disconnect()};
}"""


#: The structured content of list_pages.
PAGES_OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "pages": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "number"},
                    "url": {"type": "string"},
                    "title": {"type": "string"},
                    "selected": {"type": "boolean"},
                },
                "required": ["id", "url", "title", "selected"],
            },
        }
    },
    "required": ["pages"],
}


tools = ToolSet("navigation")


@tools.browser_tool(
    "list_pages",
    title="List pages",
    description=(
        "List the browser pages (tabs) you can use, with their ids (the selected one is marked), and the "
        "browser's extension service workers with theirs."
    ),
    read_only=True,
    output_schema=PAGES_OUTPUT_SCHEMA,
)
async def list_pages(call: ToolCall) -> Response:
    """The pages in the caller's scope and the browser's extension service workers, as text and
    as structured content; one ``Target.getTargets`` serves both."""
    try:
        infos = await targets_of(call.browser).targets()
    except CDPError:
        infos = None
    response = await Response().add_pages(call, structured=True, infos=infos or [])
    return await add_service_workers(call, response, infos)


@tools.page_tool(
    "select_page",
    title="Select page",
    description="Make a page the selected one for this session, optionally bringing its tab to the front.",
    params={
        "bringToFront": s.boolean("Also focus the tab and bring it to the front."),
    },
    page_id=s.page_id("The id of the page to select (from list_pages)."),
    exclusive=False,
    dialog_safe=True,
    read_only=True,
)
async def select_page(call: ToolCall) -> Response:
    """Remember the page as this session's selected one."""
    page = call.page
    if call.args.get("bringToFront"):
        await page.send("Page.bringToFront")
    call.context.session.selected_page_id = page.page_id
    return await Response().add_pages(call)


@tools.browser_tool(
    "new_page",
    title="New page",
    description="Open a new tab, load a URL in it and select it.",
    params={
        "url": s.string("The URL to load in the new tab.", max_length=s.MAX_SCRIPT_LENGTH),
        "background": s.boolean("Open the tab without bringing it to the front. Default false."),
        "isolatedContext": s.string(
            "Open the tab in the isolated browser context of this name, created on first use. Tabs "
            "of one context share cookies and storage; different contexts (and the default one) "
            "share nothing, which gives clean-slate cookies and logins."
        ),
        "timeout": _TIMEOUT,
    },
    required=("url",),
)
async def new_page(call: ToolCall) -> Response:
    """Open a tab owned by this session and select it, in a named isolated context if asked."""
    session = call.context.session
    call.policy.check(call.args["url"])
    options = {}
    if call.args.get("isolatedContext"):
        options["isolated_context"] = call.args["isolatedContext"]
    page = await call.browser.new_page(
        call.args["url"],
        background=bool(call.args.get("background")),
        opener=session.session_id,
        timeout=call.timeout(),
        **options,
    )
    session.opened_page_ids.add(page.page_id)
    session.selected_page_id = page.page_id
    return await Response().add_pages(call)


@tools.page_tool(
    "close_page",
    title="Close page",
    description="Close a page (tab) by id. The browser's last open page stays open.",
    page_id=s.page_id("The id of the page to close (from list_pages)."),
    exclusive=False,
    dialog_safe=True,
)
async def close_page(call: ToolCall) -> Response:
    """Close a tab, never the browser's last one (Chrome would have no window left)."""
    page = call.page
    if len(call.browser.pages()) <= 1:
        raise ToolError("The last open page cannot be closed. Open another page with new_page first.")
    await call.browser.close_page(page.page_id)
    session = call.context.session
    session.opened_page_ids.discard(page.page_id)
    if session.selected_page_id == page.page_id:
        session.selected_page_id = None
    return await Response().add_pages(call)


async def wait_for_load(page, seconds: float, start: Deferred) -> None:
    """Await ``start`` (the CDP call that navigates) and then the new document's load.

    The load waiter is armed before the call so a fast load cannot be missed. A
    same-document navigation or a page restored from the back/forward cache fires no
    load event; those count as done too.
    """
    waits = [
        page.wait_for_event("Page.loadEventFired", timeout=seconds),
        page.wait_for_event(
            "Page.navigatedWithinDocument", lambda p: p.get("frameId") == page.target_id, timeout=seconds
        ),
        page.wait_for_event(
            "Page.frameNavigated",
            lambda p: p.get("type") == "BackForwardCacheRestore" and not p["frame"].get("parentId"),
            timeout=seconds,
        ),
    ]
    try:
        reply = await start
        if reply.get("errorText"):
            raise ToolError(f"Navigation failed: {reply['errorText']}.")
        try:
            await first(waits)
        except ToolError:
            raise ToolError(f"The page did not finish loading within {seconds:g} s.") from None
    finally:
        for waiter in waits:
            if not waiter.called:
                waiter.cancel()
            waiter.addErrback(lambda _: None)


async def _current_url(page) -> str:
    result = await page.send("Runtime.evaluate", {"expression": "location.href", "returnByValue": True})
    return result.get("result", {}).get("value", page.url)


@tools.page_tool(
    "navigate_page",
    title="Navigate page",
    description="Load a URL in a page, go back or forward in its history, or reload it; waits for the load.",
    params={
        "type": s.string(
            'What to do: "url" (load url), "back", "forward" or "reload".',
            enum=("url", "back", "forward", "reload"),
        ),
        "url": s.string('The URL to load (type "url" only).', max_length=s.MAX_SCRIPT_LENGTH),
        "ignoreCache": s.boolean("Bypass the cache when reloading."),
        "handleBeforeUnload": s.string(
            'Answer to a "leave this page?" (beforeunload) prompt during the navigation. Default accept.',
            enum=("accept", "dismiss"),
        ),
        "initScript": s.string(
            "JavaScript to run in the next document before its own scripts.", max_length=s.MAX_SCRIPT_LENGTH
        ),
        "timeout": _TIMEOUT,
    },
    # Navigating (or reloading) is how a page blocked by a dialog gets going again.
    dialog_safe=True,
)
async def navigate_page(call: ToolCall) -> Response:
    """Load a URL, move in history or reload, and wait for the load."""
    page = call.page
    kind = call.args.get("type") or ("url" if "url" in call.args else None)
    if kind is None:
        raise ToolError('Say where to go: type "url" with a url, or type "back", "forward" or "reload".')
    if kind == "url" and call.args.get("url"):
        call.policy.check(call.args["url"])
    seconds = call.timeout()
    script_id = None
    if call.args.get("initScript"):
        added = await page.send("Page.addScriptToEvaluateOnNewDocument", {"source": call.args["initScript"]})
        script_id = added["identifier"]
    accept_unload = call.args.get("handleBeforeUnload", "accept") == "accept"

    def on_dialog(_: str, params: dict) -> None:
        if params.get("type") == "beforeunload":
            page.send("Page.handleJavaScriptDialog", {"accept": accept_unload}).addErrback(lambda _: None)

    unsubscribe = page.subscribe("Page.javascriptDialogOpening", on_dialog)
    try:
        if kind == "url":
            url = call.args.get("url")
            if not url:
                raise ToolError('navigate_page with type "url" needs a "url".')
            await wait_for_load(page, seconds, page.send("Page.navigate", {"url": url}, timeout=seconds))
            message = f"Successfully navigated to {url}."
        elif kind == "reload":
            params = {"ignoreCache": bool(call.args.get("ignoreCache"))}
            # A reload that closes a JavaScript dialog is sometimes dropped by Chrome (the
            # dialog goes, no document comes): give it a short while, then ask once more.
            blocked = dialog_note(page) is not None
            try:
                grace = min(seconds, DIALOG_RELOAD_GRACE) if blocked else seconds
                await wait_for_load(page, grace, page.send("Page.reload", params, timeout=seconds))
            except ToolError:
                if not blocked:
                    raise
                await wait_for_load(page, seconds, page.send("Page.reload", params, timeout=seconds))
            message = "Successfully reloaded the page."
        else:
            history = await page.send("Page.getNavigationHistory")
            index = history["currentIndex"] + (-1 if kind == "back" else 1)
            entries = history["entries"]
            if not 0 <= index < len(entries):
                where = "previous" if kind == "back" else "next"
                raise ToolError(f"Cannot navigate {kind}: there is no {where} page in this page's history.")
            entry = {"entryId": entries[index]["id"]}
            await wait_for_load(page, seconds, page.send("Page.navigateToHistoryEntry", entry, timeout=seconds))
            message = f"Successfully navigated {kind} to {await _current_url(page)}."
    finally:
        unsubscribe()
        if script_id is not None:
            page.send("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script_id}).addErrback(lambda _: None)
    return await Response().add(message).add_pages(call)


@tools.page_tool(
    "wait_for",
    title="Wait for text",
    description="Wait until any of the given texts appears on the page, then return a snapshot.",
    params={
        "text": s.array("Texts to wait for; the first one to appear ends the wait.", s.string("A text."), min_items=1),
        "timeout": _TIMEOUT,
    },
    required=("text",),
    read_only=True,
)
async def wait_for(call: ToolCall) -> Response:
    """Wait (event-driven, across navigations) for one of the texts to appear."""
    page = call.page
    texts = call.args["text"]
    seconds = call.timeout()
    deadline = call.clock.seconds() + seconds
    shown = json.dumps(texts, ensure_ascii=False, separators=(",", ":"))
    while True:
        remaining = deadline - call.clock.seconds()
        if remaining <= 0:
            raise ToolError(f"Timed out after {seconds * 1000:g} ms waiting for any of {shown} to appear.")
        if await _wait_in_document(page, texts, remaining, call.clock):
            break
    return Response().add(f"Element matching one of {shown} found.").add_snapshot(await take_snapshot(page))


async def _wait_in_document(page, texts: list[str], seconds: float, clock) -> bool:
    """Wait for a text in the current document; False if the document went away first."""
    watcher_id = None
    try:
        watcher = await page.send(
            "Runtime.evaluate",
            {"expression": f"({_WAIT_FOR_TEXT})({json.dumps(texts)})", "objectGroup": "mcproxy-wait"},
        )
        watcher_id = watcher["result"]["objectId"]
        found = page.send(
            "Runtime.callFunctionOn",
            {
                "objectId": watcher_id,
                "functionDeclaration": "function () { return this.promise; }",
                "awaitPromise": True,
            },
            timeout=seconds + 1,
        )
        found.addTimeout(seconds, clock)
        await found
        return True
    except TimeoutError:
        return False
    except CDPError as e:
        if "context" not in str(e).lower():
            raise
        # The document was replaced (a navigation): look again once the new one exists.
        await deferLater(clock, min(_RETRY_DELAY, seconds), lambda: None)
        return False
    finally:
        if watcher_id is not None:
            page.send(
                "Runtime.callFunctionOn",
                {"objectId": watcher_id, "functionDeclaration": "function () { this.cancel(); }"},
            ).addErrback(lambda _: None)
        page.send("Runtime.releaseObjectGroup", {"objectGroup": "mcproxy-wait"}).addErrback(lambda _: None)
