"""An extension's service workers and pages as the tools see them.

Each user's browser gets one `ExtensionTargets`, kept in a WeakKeyDictionary so it goes
with the browser. It gives extension service workers short ids that stay the same across
calls ("sw-1", as upstream's list_pages shows them) and attaches to a worker only when a
tool needs it. From that moment the worker's console is collected into the same bounded
journal pages use (`mcproxy.browser.collect`); attaching replays what Chrome kept of the
worker's earlier messages. Chrome does not stop a worker while DevTools is attached, so a
worker the proxy looked into stays running until it is reloaded or the connection ends.
"""

import json
from collections.abc import Callable
from weakref import WeakKeyDictionary, proxy

import attrs
from twisted.internet.defer import DeferredLock

from mcproxy.browser.collect import Collector, PageRecords
from mcproxy.browser.page import Page
from mcproxy.errors import ToolError
from mcproxy.tools.call import Response, ToolCall

SCHEME = "chrome-extension://"

#: Workers' console journals: the same bounds as a page's (10,000 messages, 8 MiB).
_COLLECTOR = Collector()


def extension_id_of(url: str) -> str | None:
    """The extension id of a ``chrome-extension://<id>/...`` URL, else None."""
    if not url.startswith(SCHEME):
        return None
    return url[len(SCHEME) :].split("/", 1)[0] or None


@attrs.frozen
class ServiceWorker:
    """An extension service worker as the tools name it."""

    id: str
    target_id: str
    url: str
    extension_id: str


@attrs.define
class Extension:
    """What is known of one installed extension."""

    id: str
    name: str = ""
    version: str = ""
    enabled: bool = True
    path: str | None = None
    workers: list[ServiceWorker] = attrs.field(factory=list)

    def line(self) -> str:
        """The list_extensions line (upstream's shape, plus the worker ids)."""
        name = json.dumps(self.name or "(name unknown)", ensure_ascii=False)
        version = f" v{self.version}" if self.version else ""
        line = f"id={self.id} {name}{version} {'Enabled' if self.enabled else 'Disabled'}"
        if self.workers:
            line += " serviceWorkers=" + ",".join(worker.id for worker in self.workers)
        return line

    def structured(self) -> dict:
        """The extension in list_extensions' structured content."""
        item = {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "enabled": self.enabled,
            "serviceWorkers": [worker.id for worker in self.workers],
        }
        if self.path is not None:
            item["path"] = self.path
        return item


class ExtensionTargets:
    """One browser's extension service workers: stable ids, sessions attached on demand.

    It (and its worker sessions) refer to the browser weakly: it is the value of a
    WeakKeyDictionary keyed by that browser, which a strong reference would keep alive.
    """

    def __init__(self, browser):
        self.browser = proxy(browser)
        self._ids: dict[str, str] = {}
        self._next_id = 1
        self._attached: dict[str, Page] = {}
        self._links: dict[str, object] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._manifests: dict[str, dict] = {}
        self._lock = DeferredLock()

    async def targets(self) -> list[dict]:
        """Chrome's current target list."""
        reply = await self.browser.send("Target.getTargets")
        return reply.get("targetInfos", [])

    async def workers(self, infos: list[dict] | None = None) -> list[ServiceWorker]:
        """The extension service workers running now, in id order; forgets the gone ones."""
        if infos is None:
            infos = await self.targets()
        found = []
        for info in infos:
            extension_id = extension_id_of(info.get("url", ""))
            if info.get("type") != "service_worker" or extension_id is None:
                continue
            target_id = info["targetId"]
            if target_id not in self._ids:
                self._ids[target_id] = f"sw-{self._next_id}"
                self._next_id += 1
            found.append(ServiceWorker(self._ids[target_id], target_id, info["url"], extension_id))
        alive = {worker.target_id for worker in found}
        for target_id in [t for t in self._ids if t not in alive]:
            self.forget(target_id)
        return sorted(found, key=lambda worker: int(worker.id[3:]))

    def forget(self, target_id: str) -> None:
        """Drop what is known of a worker that went away (its session, its console)."""
        self._ids.pop(target_id, None)
        self._manifests.pop(target_id, None)
        self._links.pop(target_id, None)
        unsubscribe = self._unsubscribe.pop(target_id, None)
        if unsubscribe is not None:
            unsubscribe()
        worker = self._attached.pop(target_id, None)
        if worker is not None:
            worker.mark_closed()

    async def session(self, worker_id: str) -> Page:
        """The worker named ``worker_id``, attached; ToolError listing the known ids otherwise."""
        workers = await self.workers()
        for worker in workers:
            if worker.id == worker_id:
                return await self.attach(worker)
        known = ", ".join(f"{worker.id} ({worker.url})" for worker in workers) or "none is running now"
        raise ToolError(
            f'No extension service worker with id "{worker_id}". Known service workers: {known}. '
            "Call list_pages to see them (a worker gets a new id when it restarts)."
        )

    async def attach(self, worker: ServiceWorker) -> Page:
        """A live session on ``worker`` (attaching once per connection); collection runs from then on."""
        await self._lock.acquire()
        try:
            link = self.browser.cdp
            page = self._attached.get(worker.target_id)
            if page is not None and page.session_id is not None and self._links.get(worker.target_id) is link:
                return page
            reply = await self.browser.send("Target.attachToTarget", {"targetId": worker.target_id, "flatten": True})
            if page is None:
                page = Page(self.browser, worker.id, worker.target_id, url=worker.url)
                records = page.state.records = PageRecords(_COLLECTOR)
                records.subscribe(page)
                self._attached[worker.target_id] = page
            else:
                reattached = page.state.records
                if reattached is not None:
                    reattached.reattached()
                self._unsubscribe.pop(worker.target_id, lambda: None)()
            page.session_id = reply["sessionId"]
            self._links[worker.target_id] = link
            self._unsubscribe[worker.target_id] = link.subscribe(None, page.dispatch, session_id=page.session_id)
        finally:
            self._lock.release()
        # Chrome replays the worker's kept console messages before it answers Runtime.enable.
        await page.send("Runtime.enable")
        return page

    async def manifest(self, worker: ServiceWorker) -> dict:
        """The extension's manifest, asked of its worker once (for name and version)."""
        known = self._manifests.get(worker.target_id)
        if known is None:
            page = await self.attach(worker)
            reply = await page.send(
                "Runtime.evaluate", {"expression": "chrome.runtime.getManifest()", "returnByValue": True}
            )
            known = self._manifests[worker.target_id] = reply.get("result", {}).get("value") or {}
        return known


_registries: "WeakKeyDictionary[object, ExtensionTargets]" = WeakKeyDictionary()


def targets_of(browser) -> ExtensionTargets:
    """The browser's `ExtensionTargets`, made on first use."""
    registry = _registries.get(browser)
    if registry is None:
        registry = _registries[browser] = ExtensionTargets(browser)
    return registry


async def worker_for(call: ToolCall, worker_id: str) -> Page:
    """The attached session of service worker ``worker_id`` (evaluate_script, list_console_messages)."""
    return await targets_of(call.browser).session(worker_id)


async def add_service_workers(call: ToolCall, response: Response, infos: list[dict] | None) -> Response:
    """list_pages' ``## Extension Service Workers`` section and ``extensionServiceWorkers`` (when
    any run), from Chrome's target list ``infos`` (None: Chrome did not answer)."""
    workers = await targets_of(call.browser).workers(infos) if infos is not None else []
    if workers:
        response.add("## Extension Service Workers\n" + "\n".join(f"{w.id}: {w.url}" for w in workers))
        if response.structured is not None:
            response.structured["extensionServiceWorkers"] = [{"id": w.id, "url": w.url} for w in workers]
    return response
