"""The core of every tool call: the call a tool receives and the response it builds."""

from typing import Any

import attrs
from mcp_types.version import is_version_at_least

from mcproxy.artifacts.names import split_path
from mcproxy.browser.emulation import timeout_factor
from mcproxy.calls import CallContext
from mcproxy.config import ToolsConfig
from mcproxy.errors import ToolError
from mcproxy.tools.scope import fresh_listing, page_line, visible_pages


@attrs.define
class ToolCall:
    """One tool invocation: arguments, caller, the caller's browser and (for page tools) the page.

    ``artifacts`` is the `mcproxy.artifacts.store.ArtifactStore` files produced by tools go to.
    """

    args: dict[str, Any]
    context: CallContext
    browser: Any
    config: ToolsConfig
    clock: Any
    page: Any = None
    artifacts: Any = None
    #: The caller's `mcproxy.browser.policy.BrowsingPolicy` (URLs tools may navigate to).
    policy: Any = None
    #: Argument names whose values must never be logged (e.g. text typed into a password field).
    sensitive: set[str] = attrs.field(factory=set)

    def timeout(self, name: str = "timeout") -> float:
        """Seconds to wait: the tool's ``timeout`` argument (ms), or the configured default
        stretched by the page's throttling (CPU or network emulation); never more than
        ``tools.max_timeout``."""
        value = self.args.get(name) or 0
        if value > 0:
            return min(value / 1000.0, self.config.max_timeout)
        stretched = self.config.navigation_timeout * (timeout_factor(self.page) if self.page is not None else 1)
        return min(stretched, self.config.max_timeout)

    def file_store(self, file_path: str):
        """The artifact store a ``filePath`` result goes to; checked (a store, an acceptable
        name) before any work, so a bad name costs nothing."""
        if self.artifacts is None:
            raise ToolError('This server does not keep files, so "filePath" cannot be used; call the tool without it.')
        split_path(file_path)
        return self.artifacts


@attrs.define
class Response:
    """A tool result under construction: text sections, images, resource links, structured
    content; content blocks are kept as they go on the wire."""

    lines: list[str] = attrs.field(factory=list)
    images: list[dict] = attrs.field(factory=list)
    links: list[dict] = attrs.field(factory=list)
    structured: dict | None = None

    def add(self, text: str) -> "Response":
        """Append a section of text (sections are joined by newlines)."""
        self.lines.append(text)
        return self

    def add_snapshot(self, snapshot_text: str) -> "Response":
        """Append a rendered snapshot under its upstream heading."""
        return self.add("## Latest page snapshot\n" + snapshot_text)

    def add_image(self, data: str, mime_type: str) -> "Response":
        """Attach a base64 image after the text."""
        self.images.append({"type": "image", "data": data, "mimeType": mime_type})
        return self

    def add_artifact(self, artifact, description: str) -> "Response":
        """Say where a saved file went and link it, so the client can fetch it with resources/read."""
        self.add(
            f"{description} saved as {artifact.uri} ({artifact.name}, {artifact.size} bytes); "
            "read it with resources/read."
        )
        self.links.append(
            {
                "type": "resource_link",
                "uri": artifact.uri,
                "name": artifact.name,
                "mimeType": artifact.mime_type,
                "size": artifact.size,
            }
        )
        return self

    async def add_pages(
        self, call: "ToolCall", *, structured: bool = False, infos: list[dict] | None = None
    ) -> "Response":
        """The ``## Pages`` section (and, for list_pages, the ``pages`` structured content);
        ``infos`` is Chrome's target list when the caller has it already."""
        listing = await fresh_listing(call, infos)
        selected = call.context.session.selected_page_id
        if listing:
            pages = {page.page_id: page for page in visible_pages(call)}
            lines = [
                page_line(page_id, url, title, page_id == selected, pages.get(page_id), call.browser)
                for page_id, url, title in listing
            ]
            self.add("## Pages\n" + "\n".join(lines))
        else:
            self.add("## Pages\nNo pages open. Call new_page to open one.")
        if structured:
            self.structured = {
                "pages": [
                    {"id": page_id, "url": url, "title": title, "selected": page_id == selected}
                    for page_id, url, title in listing
                ]
            }
        return self

    def to_result(self, protocol_version: str | None = None) -> dict:
        """The MCP ``tools/call`` result as it goes on the wire: one text block, then the
        images, then the resource links (the MCP layer adds what the 2026-07-28 revision
        puts around every result, see `mcproxy.mcp.shaping`).

        Resource links exist from protocol 2025-06-18 on, and mcp_types passes them to older
        clients unchanged, which may reject the whole result; those get the text line only.
        """
        content = [{"type": "text", "text": "\n".join(self.lines)}, *self.images]
        if self.links and (protocol_version is None or is_version_at_least(protocol_version, "2025-06-18")):
            content.extend(self.links)
        result: dict[str, Any] = {"content": content, "isError": False}
        if self.structured is not None:
            result["structuredContent"] = self.structured
        return result


def error_result(message: str) -> dict:
    """An ``isError`` result the model can read and act on, as it goes on the wire."""
    return {"content": [{"type": "text", "text": message}], "isError": True}
