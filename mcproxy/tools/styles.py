"""get_css_styles: the CSS rules that apply to an element, in cascade order, paged.

Chrome gives the matched rules (``CSS.getMatchedStylesForNode``) in ascending precedence
and the inherited rules per ancestor; which declarations win is worked out here: important
before normal, the element's own rules before its ancestors' (of which only inherited
properties count), a shorthand losing only when all its longhands lost. Source lines come
from the stylesheet headers Chrome announces once the CSS domain is enabled.
"""

import attrs
from twisted.internet.defer import CancelledError

from mcproxy.errors import CDPError, ToolError
from mcproxy.tools import schema as s
from mcproxy.tools.call import Response, ToolCall
from mcproxy.tools.declare import ToolSet
from mcproxy.tools.page_state import tool_state
from mcproxy.tools.snapshot import element_error, resolve_uid, stale_error

INHERITED_PROPERTIES = frozenset(
    """accent-color border-collapse border-spacing caption-side caret-color color color-scheme cursor
    direction empty-cells fill fill-opacity fill-rule font font-family font-feature-settings font-kerning
    font-optical-sizing font-palette font-size font-size-adjust font-stretch font-style font-synthesis
    font-variant font-variant-alternates font-variant-caps font-variant-east-asian font-variant-ligatures
    font-variant-numeric font-variant-position font-variation-settings font-weight hyphens
    image-orientation image-rendering letter-spacing line-break line-height list-style list-style-image
    list-style-position list-style-type orphans overflow-wrap paint-order pointer-events quotes
    stroke stroke-dasharray stroke-dashoffset stroke-linecap stroke-linejoin stroke-miterlimit
    stroke-opacity stroke-width tab-size text-align text-align-last text-anchor text-decoration-skip-ink
    text-emphasis text-emphasis-color text-emphasis-position text-emphasis-style text-indent
    text-justify text-orientation text-rendering text-shadow text-size-adjust text-transform
    text-underline-offset text-underline-position text-wrap visibility white-space widows word-break
    word-spacing word-wrap writing-mode -webkit-font-smoothing -webkit-text-fill-color
    -webkit-text-stroke -webkit-text-stroke-color -webkit-text-stroke-width""".split()
)
_BUILT_IN = "(a value built into Chrome)"
# Logical longhands as physical ones, for horizontal left-to-right text (the common case).
_LOGICAL = (("block-start", "top"), ("block-end", "bottom"), ("inline-start", "left"), ("inline-end", "right"))
_ORIGINS = {"user-agent": "user agent stylesheet", "injected": "injected stylesheet", "inspector": "added in DevTools"}

# Describes the element and its ancestors (flat tree, nearest first) for the headings;
# null for an element no longer in the document.
_DESCRIBE_CHAIN = """function () {
  if (!this.isConnected) return null;
  const describe = el => el.localName + (el.id ? '#' + el.id : '') +
    Array.from(el.classList).map(c => '.' + c).join('');
  const chain = [];
  for (let el = this; el; el = el.parentElement || (el.getRootNode().host || null)) chain.push(describe(el));
  return chain;
}"""


@attrs.define
class StyleSheets:
    """The page's stylesheet headers by id, valid for the session that enabled CSS."""

    session_id: str | None = None
    headers: dict[str, dict] = attrs.field(factory=dict)


@attrs.define
class _Declaration:
    name: str
    value: str
    important: bool
    valid: bool = True
    overloaded: bool = False

    def render(self) -> str:
        tag = "[overloaded] " if self.overloaded else "[invalid] " if not self.valid else ""
        important = " !important" if self.important else ""
        return f"  {tag}{self.name}: {self.value}{important};"


@attrs.define
class _Section:
    """One rule (or inline style) with its declarations, as shown to the model."""

    title: str
    wrappers: list[str]
    declarations: list[_Declaration]
    longhands: dict[str, list[str]]
    inherited_from: str | None = None

    def render(self) -> str:
        heading = f"### {self.title}"
        if self.inherited_from is not None:
            heading = f"### Inherited from {self.inherited_from}: {self.title}"
        return "\n".join([heading, *self.wrappers, *(d.render() for d in self.declarations)])


async def _enable(page) -> dict[str, dict]:
    """Enable DOM and CSS once per DevTools session; the stylesheet headers seen so far."""
    state = tool_state(page)
    sheets = state.styles
    if sheets is None:
        sheets = state.styles = StyleSheets()

        def added(_: str, params: dict) -> None:
            sheets.headers[params["header"]["styleSheetId"]] = params["header"]

        def navigated(_: str, params: dict) -> None:
            # Chrome announces no removal when a document goes away; its sheets go with it.
            frame = params.get("frame", {})
            for sheet_id, header in list(sheets.headers.items()):
                if not frame.get("parentId") or header.get("frameId") == frame.get("id"):
                    del sheets.headers[sheet_id]

        page.subscribe("CSS.styleSheetAdded", added)
        page.subscribe("CSS.styleSheetRemoved", lambda _, params: sheets.headers.pop(params["styleSheetId"], None))
        page.subscribe("Page.frameNavigated", navigated)
    if sheets.session_id != page.session_id:
        sheets.headers.clear()
        await page.send("DOM.enable")
        # Chrome announces every existing stylesheet before answering CSS.enable.
        await page.send("CSS.enable")
        sheets.session_id = page.session_id
    return sheets.headers


def _source(rule: dict, headers: dict[str, dict]) -> str:
    origin = rule.get("origin", "regular")
    if origin in _ORIGINS:
        return _ORIGINS[origin]
    header = headers.get(rule.get("styleSheetId", ""))
    if header is None:
        return "stylesheet"
    url = header.get("sourceURL") or ""
    name = url.split("?")[0].split("#")[0].rstrip("/").rsplit("/", 1)[-1] or url or "<style>"
    ranges = [sel.get("range") for sel in rule.get("selectorList", {}).get("selectors", ())]
    where = next((r for r in ranges if r), rule.get("style", {}).get("range"))
    if where is None:
        return name
    return f"{name}:{header.get('startLine', 0) + where['startLine'] + 1}"


def _wrappers(rule: dict) -> list[str]:
    """The at-rules around a rule (@layer, @media, @container, @supports, @scope)."""
    lines = [f"@layer {layer['text']}" for layer in rule.get("layers", ()) if layer.get("text")]
    lines += [
        f"@media {media['text']}"
        for media in rule.get("media", ())
        if media.get("source") in ("mediaRule", "importRule")
    ]
    lines += [
        f"@container {' '.join(filter(None, (query.get('name'), query.get('text'))))}"
        for query in rule.get("containerQueries", ())
    ]
    lines += [f"@supports {supports['text']}" for supports in rule.get("supports", ())]
    lines += [f"@scope {scope['text']}" for scope in rule.get("scopes", ())]
    return lines


def _declarations(style: dict, keep) -> tuple[list[_Declaration], dict[str, list[str]]]:
    """The declarations as written, and the longhands of those Chrome cannot show split.

    A style without source text (the user agent's) lists Chrome's longhands; those without
    a value come from a shorthand set to a keyword such as ``-webkit-small-control``, and are
    shown as that shorthand.
    """
    properties = [p for p in style.get("cssProperties", ()) if not p.get("disabled")]
    if any("range" in p for p in properties):
        properties = [p for p in properties if "range" in p]
    declarations: list[_Declaration] = []
    hidden: dict[str, list[str]] = {}
    for p in properties:
        if not keep(p["name"]):
            continue
        if p.get("value") or "range" in p:
            declarations.append(
                _Declaration(p["name"], p.get("value", ""), bool(p.get("important")), p.get("parsedOk", True))
            )
            continue
        shorthand = next((e for e in style.get("shorthandEntries", ()) if not e.get("value")), None)
        if shorthand is None:
            continue
        if shorthand["name"] not in hidden:
            hidden[shorthand["name"]] = []
            declarations.append(_Declaration(shorthand["name"], _BUILT_IN, bool(shorthand.get("important"))))
        hidden[shorthand["name"]].append(p["name"])
    return declarations, hidden


async def _longhands(page, style: dict, cache: dict) -> dict[str, list[str]]:
    """For each shorthand written in ``style``: the longhands it sets.

    Chrome lists a style's declarations as written (with a source range) and then expanded
    into longhands (without); a written name missing from the expansion is a shorthand.
    """
    properties = style.get("cssProperties", ())
    expanded = {p["name"] for p in properties if "range" not in p}
    found = {}
    for p in properties:
        name = p["name"]
        if "range" not in p or name in expanded or name.startswith("--") or not p.get("parsedOk", True):
            continue
        key = (name, p.get("value", ""))
        if key not in cache:
            try:
                reply = await page.send("CSS.getLonghandProperties", {"shorthandName": key[0], "value": key[1]})
                cache[key] = [longhand["name"] for longhand in reply.get("longhandProperties", ())]
            except CDPError:
                cache[key] = []
        found[name] = cache[key]
    return found


def _is_inherited(name: str) -> bool:
    return name.startswith("--") or name in INHERITED_PROPERTIES


async def _sections(page, matched: dict, headers: dict, chain: list[str]) -> list[_Section]:
    """Every rule that applies, highest cascade precedence first."""
    cache: dict = {}

    async def section(style: dict, title: str, wrappers: list[str], keep, inherited_from=None):
        declarations, hidden = _declarations(style, keep)
        longhands = {**await _longhands(page, style, cache), **hidden}
        return _Section(title, wrappers, declarations, longhands, inherited_from)

    async def rules_of(inline: dict | None, rules: list[dict], keep, inherited_from=None) -> list[_Section]:
        found = []
        if inline and inline.get("cssProperties"):
            found.append(await section(inline, "element.style", [], keep, inherited_from))
        for match in reversed(rules):
            rule = match["rule"]
            title = f"{rule['selectorList']['text']} ({_source(rule, headers)})"
            found.append(await section(rule["style"], title, _wrappers(rule), keep, inherited_from))
        return found

    sections = await rules_of(matched.get("inlineStyle"), matched.get("matchedCSSRules", []), lambda _: True)
    attributes = matched.get("attributesStyle")
    if attributes and attributes.get("cssProperties"):
        sections.append(await section(attributes, f"{chain[0]} (attributes style)", [], lambda _: True))
    for depth, inherited in enumerate(matched.get("inherited", ()), start=1):
        ancestor = chain[depth] if depth < len(chain) else f"ancestor {depth}"
        found = await rules_of(
            inherited.get("inlineStyle"), inherited.get("matchedCSSRules", []), _is_inherited, ancestor
        )
        sections.extend(section for section in found if section.declarations)
    return sections


def _physical(name: str) -> str:
    for logical, physical in _LOGICAL:
        name = name.replace(logical, physical)
    return name.replace("inset-", "") if name.startswith("inset-") else name


def _mark_overloaded(sections: list[_Section]) -> None:
    """Tag the declarations that lose the cascade: important ones are weighed first, and
    an ancestor's declarations only against what the element and nearer ancestors set."""
    claimed: set[str] = set()
    groups: list[list[_Section]] = []
    for section in sections:
        if groups and groups[-1][0].inherited_from == section.inherited_from:
            groups[-1].append(section)
        else:
            groups.append([section])
    for group in groups:
        for important in (True, False):
            for section in group:
                for declaration in reversed(section.declarations):
                    if declaration.important != important or not declaration.valid:
                        continue
                    names = {_physical(name) for name in section.longhands.get(declaration.name) or [declaration.name]}
                    fresh = [name for name in names if name not in claimed]
                    declaration.overloaded = not fresh
                    claimed.update(fresh)


tools = ToolSet("debugging")


@tools.page_tool(
    "get_css_styles",
    title="Get CSS styles",
    description=(
        "The CSS that applies to an element (by snapshot uid): inline style (element.style), matched "
        "rules with their at-rule wrappers (@layer, @media, @container, @supports, @scope), inherited "
        "rules and custom properties. Rules come highest cascade precedence first, each with its "
        "source line (e.g. index.html:12); declarations that lose the cascade are tagged [overloaded], "
        "winning ones have no tag. Ends with the computed values of the properties shown. Paged, 10 "
        "rules per page by default (pageIdx for more). This is the complete cascade: rely on it."
    ),
    params={
        "uid": s.uid("The uid of the element to inspect, from the page's latest take_snapshot."),
        "pageSize": {
            "type": "integer",
            "default": 10,
            "exclusiveMinimum": 0,
            "maximum": s.MAX_SAFE_INTEGER,
            "description": "How many rules per page. Default 10.",
        },
        "pageIdx": {
            "type": "integer",
            "default": 0,
            "minimum": 0,
            "maximum": s.MAX_SAFE_INTEGER,
            "description": "Which page of rules to return, from 0 (the default).",
        },
    },
    required=("uid",),
    read_only=True,
)
async def get_css_styles(call: ToolCall) -> Response:
    """The element's matched, inline and inherited rules with winners marked, paged."""
    page = call.page
    uid = call.args["uid"]
    page_size = call.args.get("pageSize", 10)
    page_index = call.args.get("pageIdx", 0)
    if page_size < 1:
        raise ToolError("pageSize must be at least 1.")
    backend = resolve_uid(page, uid)
    headers = await _enable(page)
    try:
        await page.send("DOM.getDocument", {"depth": 0})
        pushed = await page.send("DOM.pushNodesByBackendIdsToFrontend", {"backendNodeIds": [backend]})
        node_id = pushed["nodeIds"][0]
        if not node_id:
            raise stale_error(page, uid)
        matched = await page.send("CSS.getMatchedStylesForNode", {"nodeId": node_id})
        computed = await page.send("CSS.getComputedStyleForNode", {"nodeId": node_id})
        resolved = await page.send("DOM.resolveNode", {"nodeId": node_id, "objectGroup": "mcproxy-styles"})
        chain_reply = await page.send(
            "Runtime.callFunctionOn",
            {"objectId": resolved["object"]["objectId"], "functionDeclaration": _DESCRIBE_CHAIN, "returnByValue": True},
        )
    except CancelledError:
        raise
    except CDPError as e:
        raise element_error(page, uid, e) from None
    finally:
        page.send("Runtime.releaseObjectGroup", {"objectGroup": "mcproxy-styles"}).addErrback(lambda _: None)
    chain = chain_reply.get("result", {}).get("value")
    if not chain:
        raise stale_error(page, uid)
    sections = await _sections(page, matched, headers, chain)
    _mark_overloaded(sections)
    total = len(sections)
    pages = max(1, -(-total // page_size))
    if page_index >= pages:
        raise ToolError(f"pageIdx {page_index} is past the end: {total} rules make {pages} page(s) of {page_size}.")
    shown = sections[page_index * page_size : (page_index + 1) * page_size]
    lines = [f"## CSS styles of uid={uid} ({chain[0]})"]
    if shown:
        start = page_index * page_size + 1
        lines.append(f"Showing {start}-{start + len(shown) - 1} of {total} (Page {page_index + 1} of {pages}).")
    else:
        lines.append("No CSS rules apply to this element.")
    if page_index + 1 < pages:
        lines.append(f"Next page: {page_index + 1}")
    if page_index > 0:
        lines.append(f"Previous page: {page_index - 1}")
    lines.extend(section.render() for section in shown)
    values = {p["name"]: p["value"] for p in computed.get("computedStyle", ())}
    names: list[str] = []
    for section in shown:
        for declaration in section.declarations:
            for name in section.longhands.get(declaration.name) or [declaration.name]:
                if name in values and name not in names:
                    names.append(name)
    if names:
        lines.append("### Computed values of these properties")
        lines.extend(f"  {name}: {values[name]};" for name in names)
    return Response().add("\n".join(lines))
