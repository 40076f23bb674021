"""Extension tools: list, install, uninstall, reload, trigger the action, read storage.

chrome-devtools-mcp offers these only for a Chrome it launches itself; here they work on a
browser reached over its DevTools endpoint. Extensions are found two ways: from the target
list (service workers and pages at ``chrome-extension://<id>/...``, always visible) and
from ``Extensions.getExtensions`` (unpacked extensions, with name, version, path and
enabled state; Chrome may refuse the ``Extensions`` domain unless started with
``--enable-unsafe-extension-debugging``, and then the errors say so).

The extensions' service workers and their ids are `mcproxy.tools.extension_targets`.

reload_extension loads the extension's folder again (``Extensions.loadUnpacked``: a real
reload that needs no Developer mode); without the Extensions domain it asks the worker to
call ``chrome.runtime.reload()``, which Chrome turns into "disabled" unless Developer mode
is on (measured with Chromium 156).
"""

import json

from twisted.internet import defer
from twisted.internet.defer import Deferred

from mcproxy.browser.page import Page
from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.extension_targets import Extension, ServiceWorker, extension_id_of, targets_of
from mcproxy.tools.scope import visible_pages

FLAG = "--enable-unsafe-extension-debugging"
STORAGE_AREAS = ("local", "sync", "session")
#: Chrome's answer to a method it does not implement.
_UNKNOWN_METHOD = -32601
#: How long reload_extension waits for the extension's new service worker.
RELOAD_WAIT = 5.0

# -- knowing the installed extensions ---------------------------------------------------------


def _refused(error: CDPError) -> bool:
    """Chrome keeps its Extensions domain off (not started with the flag) or lacks the method."""
    text = error.message.lower()
    return error.cdp_code == _UNKNOWN_METHOD or "not available" in text or "not allowed" in text


def _domain_error(error: CDPError, doing: str) -> ToolError:
    """``error`` from an Extensions.* call, with what to do about it."""
    if error.cdp_code == _UNKNOWN_METHOD:
        return ToolError(
            f"Cannot {doing}: this Chrome has no such DevTools method ({error.message}); a more recent Chrome has it."
        )
    if _refused(error):
        return ToolError(
            f"Chrome refused to {doing} ({error.message}): start Chrome with {FLAG} "
            "next to --remote-debugging-port to allow extension debugging over DevTools."
        )
    return ToolError(f"Chrome could not {doing}: {error.message}")


async def installed_extensions(call: ToolCall) -> tuple[dict[str, Extension], str | None]:
    """Every extension Chrome reveals, by id, and a note when the list may be incomplete."""
    registry = targets_of(call.browser)
    infos = await registry.targets()
    workers = await registry.workers(infos)
    found: dict[str, Extension] = {}
    note = None
    try:
        listed = await call.browser.send("Extensions.getExtensions")
    except CDPError as e:
        advice = f" Start Chrome with {FLAG} to see every unpacked extension." if _refused(e) else ""
        note = (
            f"Chrome did not list its installed extensions ({e.message}); shown are those with a running "
            f"service worker or open page.{advice}"
        )
    else:
        for item in listed.get("extensions", ()):
            found[item["id"]] = Extension(
                item["id"], item.get("name", ""), item.get("version", ""), item.get("enabled", True), item.get("path")
            )
    for worker in workers:
        extension = found.setdefault(worker.extension_id, Extension(worker.extension_id))
        extension.workers.append(worker)
        if not extension.name:
            manifest = await registry.manifest(worker)
            extension.name = manifest.get("name", "")
            extension.version = manifest.get("version", "")
    for info in infos:
        extension_id = extension_id_of(info.get("url", ""))
        if extension_id is not None and extension_id not in found:
            found[extension_id] = Extension(extension_id)
    return found, note


async def known_extension(call: ToolCall) -> Extension:
    """The extension the ``id`` argument names; ToolError listing the installed ones otherwise."""
    extension_id = call.args["id"]
    found, _ = await installed_extensions(call)
    extension = found.get(extension_id)
    if extension is None:
        known = ", ".join(f'{e.id} ("{e.name}")' if e.name else e.id for e in found.values())
        raise ToolError(
            f'No extension with id "{extension_id}" in this browser. '
            + (f"Installed: {known}." if known else "No extensions were found.")
            + " Call list_extensions to see them."
        )
    return extension


async def _first_worker(call: ToolCall, extension: Extension, doing: str) -> Page:
    """A session on the extension's running service worker, the only context the proxy can run code in."""
    if not extension.workers:
        raise ToolError(
            f"Cannot {doing}: extension {extension.id} has no running service worker. Wake it (open one of "
            "its pages or use its action) and call the tool again; list_pages shows the workers."
        )
    return await targets_of(call.browser).attach(extension.workers[0])


# -- the tools --------------------------------------------------------------------------------


tools = ToolSet("extensions")


@tools.browser_tool(
    "list_extensions",
    title="List extensions",
    description=(
        "List the Chrome extensions installed in the browser: id, name, version, whether enabled, and the "
        "ids of their running service workers (for evaluate_script and list_console_messages)."
    ),
    read_only=True,
    output_schema={
        "type": "object",
        "properties": {"extensions": {"type": "array", "items": {"type": "object"}}},
        "required": ["extensions"],
    },
)
async def list_extensions(call: ToolCall) -> Response:
    """The installed extensions: id, name, version, enabled, their service workers."""
    found, note = await installed_extensions(call)
    extensions = sorted(found.values(), key=lambda e: (e.name.lower(), e.id))
    response = Response()
    response.structured = {"extensions": [extension.structured() for extension in extensions]}
    if not extensions:
        response.add("No extensions installed.")
    else:
        response.add("## Extensions\n" + "\n".join(extension.line() for extension in extensions))
    if note:
        response.add(note)
    return response


@tools.browser_tool(
    "install_extension",
    title="Install extension",
    description="Install an unpacked Chrome extension from a folder on the browser's machine.",
    params={
        "path": s.string("Absolute path of the unpacked extension's folder, on the machine Chrome runs on."),
    },
    required=("path",),
)
async def install_extension(call: ToolCall) -> Response:
    """Load an unpacked extension from a folder on the browser's machine."""
    path = call.args["path"]
    try:
        reply = await call.browser.send("Extensions.loadUnpacked", {"path": path}, timeout=call.timeout())
    except CDPError as e:
        if _refused(e):
            raise _domain_error(e, "install an extension") from None
        raise ToolError(
            f"Chrome could not load an unpacked extension from {path}: {e.message}. The path names a folder "
            "with a manifest.json on the machine the browser runs on, not on this server."
        ) from None
    return Response().add(f"Extension installed. Id: {reply['id']}")


@tools.browser_tool(
    "uninstall_extension",
    title="Uninstall extension",
    description="Uninstall a Chrome extension (one loaded unpacked) by its id.",
    params={
        "id": s.string("Id of the extension to uninstall (from list_extensions)."),
    },
    required=("id",),
)
async def uninstall_extension(call: ToolCall) -> Response:
    """Remove an extension that was loaded unpacked."""
    extension = await known_extension(call)
    try:
        await call.browser.send("Extensions.uninstall", {"id": extension.id}, timeout=call.timeout())
    except CDPError as e:
        if "not an unpacked" in e.message:
            raise ToolError(
                f"Chrome uninstalls only extensions loaded unpacked (install_extension or Load unpacked) over "
                f"DevTools; {extension.id} was installed another way (a store or --load-extension). Remove it "
                "in chrome://extensions."
            ) from None
        raise _domain_error(e, f"uninstall extension {extension.id}") from None
    for worker in extension.workers:
        targets_of(call.browser).forget(worker.target_id)
    return Response().add(f"Extension uninstalled. Id: {extension.id}")


@tools.browser_tool(
    "reload_extension",
    title="Reload extension",
    description="Reload an unpacked Chrome extension by its id, e.g. after changing its files.",
    params={
        "id": s.string("Id of the extension to reload (from list_extensions)."),
    },
    required=("id",),
)
async def reload_extension(call: ToolCall) -> Response:
    """Reload an extension: load its folder again, or ask its worker to reload itself."""
    extension = await known_extension(call)
    if not extension.enabled:
        raise ToolError(f"Extension {extension.id} is disabled; enable it in chrome://extensions first.")
    restarted = _new_worker(call, extension)
    try:
        how = await _reload(call, extension)
        worker = await restarted if extension.workers else None
    finally:
        if not restarted.called:
            restarted.cancel()
        restarted.addErrback(lambda _: None)
    response = Response().add(f"Extension reloaded. Id: {extension.id}")
    if how:
        response.add(how)
    if worker is not None:
        response.add(f"Its service worker restarted as {worker.id} ({worker.url}).")
    elif extension.workers:
        response.add(
            f"Its service worker has not restarted within {RELOAD_WAIT:g} s; list_pages shows it once it runs."
        )
    return response


async def _reload(call: ToolCall, extension: Extension) -> str | None:
    """Do the reload; a note on how, when it was the fallback."""
    if extension.path:
        try:
            await call.browser.send("Extensions.loadUnpacked", {"path": extension.path}, timeout=call.timeout())
            return None
        except CDPError as e:
            if not _refused(e):
                raise _domain_error(e, f"reload extension {extension.id}") from None
    page = await _first_worker(call, extension, f"reload extension {extension.id}")
    # Deferred to the worker's next task so that our evaluate is answered before it goes away.
    await page.send("Runtime.evaluate", {"expression": "setTimeout(() => chrome.runtime.reload(), 0); true"})
    return (
        "Its service worker called chrome.runtime.reload(). If Chrome then shows the extension disabled, "
        "turn on Developer mode in chrome://extensions: Chrome disables unpacked extensions that reload without it."
    )


def _new_worker(call: ToolCall, extension: Extension) -> Deferred:
    """Deferred[ServiceWorker | None]: the extension's next new service worker, within RELOAD_WAIT."""
    registry = targets_of(call.browser)
    old = {worker.target_id for worker in extension.workers}
    waiting: Deferred = Deferred()

    def created(_: str, params: dict) -> None:
        info = params.get("targetInfo", {})
        if (
            not waiting.called
            and info.get("type") == "service_worker"
            and info.get("targetId") not in old
            and extension_id_of(info.get("url", "")) == extension.id
        ):
            waiting.callback(info)

    link = call.browser.cdp
    unsubscribe = link.subscribe("Target.targetCreated", created) if link is not None else (lambda: None)
    waiting.addTimeout(RELOAD_WAIT, call.clock)

    async def named(info: dict) -> ServiceWorker | None:
        workers = await registry.workers()
        return next((w for w in workers if w.target_id == info["targetId"]), None)

    def finish(result):
        unsubscribe()
        if isinstance(result, dict):
            return Deferred.fromCoroutine(named(result))
        if result is not None and result.check(defer.TimeoutError):
            return None
        return result

    return waiting.addBoth(finish)


@tools.browser_tool(
    "trigger_extension_action",
    title="Trigger extension action",
    description=(
        "Trigger an extension's default action, as clicking its toolbar button does (opens its popup or "
        "fires action.onClicked), in the tab of the selected page."
    ),
    params={
        "id": s.string("Id of the extension whose action to trigger (from list_extensions)."),
    },
    required=("id",),
)
async def trigger_extension_action(call: ToolCall) -> Response:
    """Click the extension's toolbar action (opens its popup or fires action.onClicked)."""
    extension = await known_extension(call)
    if not extension.enabled:
        raise ToolError(f"Extension {extension.id} is disabled, so its action cannot be triggered.")
    tab = await _tab_target(call)
    try:
        await call.browser.send("Extensions.triggerAction", {"id": extension.id, "targetId": tab})
    except CDPError as e:
        raise _domain_error(e, f"trigger the action of extension {extension.id}") from None
    return Response().add(f"Extension action triggered. Id: {extension.id}")


async def _tab_target(call: ToolCall) -> str:
    """The tab target (not the page target) of the caller's selected or first page."""
    reply = await call.browser.send("Target.getTargets", {"filter": [{"type": "tab"}]})
    tabs = [info for info in reply.get("targetInfos", ()) if info.get("type") == "tab"]
    if not tabs:
        raise ToolError("The browser has no open tab to trigger the action in. Open one with new_page.")
    pages = visible_pages(call)
    selected = call.context.session.selected_page_id
    pages.sort(key=lambda page: page.page_id != selected)
    for page in pages:
        for tab in tabs:
            if tab.get("url") == page.url:
                return tab["targetId"]
    return tabs[0]["targetId"]


@tools.browser_tool(
    "get_extension_storage",
    title="Get extension storage",
    description="Read everything an extension keeps in one chrome.storage area, as JSON.",
    params={
        "id": s.string("Id of the extension (from list_extensions)."),
        "area": s.string('The storage area. Default "local".', enum=STORAGE_AREAS, default="local"),
    },
    required=("id",),
    read_only=True,
)
async def get_extension_storage(call: ToolCall) -> Response:
    """The extension's chrome.storage area as JSON, read through its service worker."""
    extension = await known_extension(call)
    area = call.args.get("area", "local")
    page = await _first_worker(call, extension, f"read the storage of extension {extension.id}")
    try:
        reply = await page.send("Extensions.getStorageItems", {"id": extension.id, "storageArea": area})
        items = reply.get("data", {})
    except CDPError:
        # A Chrome without getStorageItems (or refusing it here): ask the extension itself.
        reply = await page.send(
            "Runtime.evaluate",
            {"expression": f"chrome.storage.{area}.get(null)", "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            raise ToolError(f"Reading chrome.storage.{area} of extension {extension.id} failed: {text}") from None
        items = reply.get("result", {}).get("value") or {}
    text = json.dumps(items, ensure_ascii=False, indent=2, sort_keys=True)
    response = Response().add(f"## chrome.storage.{area} of extension {extension.id}\n```json\n{text}\n```")
    response.structured = {"id": extension.id, "area": area, "items": items}
    return response
