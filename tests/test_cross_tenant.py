"""Bob against Alice: generated cross-tenant attempts on one daemon, each user with a Chromium
of their own.

Alice has real state: a legacy SSE session and a Streamable HTTP session (official MCP SDK
clients, held open for the whole module), three pages she opened, a screenshot artifact and
two tokens (her API token and the session token her registration minted). Hypothesis then
makes Bob try everything a tenant can name: her page ids in every tool that takes
``pageId``, her session ids on both transports, her artifact URIs, her token ids, her status
and registration, her browser under many URL forms, and ids near all of these; with his
token, his registration session token, tokens lacking permissions, ``X-User-Id: alice`` and
forged tokens on her token ids. Each attempt must be refused (4xx, a JSON-RPC error or an
``isError`` result), reveal nothing of hers, and leave her state (and his) as it was; the
last test checks that through her own clients and counts the attempts.
"""

import asyncio
import base64
import contextlib
import json
import os
import re
import string
from collections import Counter
from urllib.parse import quote

import attrs
import pytest
import pytest_twisted
import treq
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from mcproxy.testing.daemon import start_proxy
from mcproxy.testing.fuzz import examples, fuzz_settings

#: In every URL and file name of Alice's, so that any answer to Bob that shows one is caught.
SECRET = "alice-private"
SESSION_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"
#: Examples per test function below (at least 1,000 in all).
RUNS = {"pages": 350, "sessions": 250, "artifacts": 150, "tokens": 100, "registration": 100, "browser": 100}

attempts: dict[str, int] = dict.fromkeys(RUNS, 0)
successes: list[str] = []
refusals: Counter = Counter()  # (kind, how the daemon refused): printed at the end


def run_async(coro) -> Deferred:
    """Await an asyncio coroutine (MCP SDK code) from Twisted code."""
    return Deferred.fromFuture(asyncio.ensure_future(coro))


def _text(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


# -- Alice's and Bob's world -------------------------------------------------------------------


@attrs.define
class Alice:
    """Everything of Alice's that Bob aims at, and what it must still be afterwards."""

    token: str
    session_token: str
    browser_url: str
    browser_ws_url: str
    port: int
    legacy_id: str
    streamable_id: str
    legacy: object  # the SDK ClientSession of each transport
    streamable: object
    pages: dict[int, str]  # page id -> URL
    artifact: str
    artifact_path: str

    @property
    def token_ids(self) -> list[str]:
        return [_token_id(self.token), _token_id(self.session_token)]


@attrs.define(repr=False)
class World:
    proxy: object
    alice: Alice
    bob_url: str
    bob_session: str  # Bob's own Streamable HTTP session
    bob_tab_ids: list[int]  # Bob's own tabs that he did not open through the proxy
    credentials: dict[str, dict[str, str]]  # name -> request headers
    tokens: set  # (token id, revoked_at) of every token when the attacks start

    def __repr__(self) -> str:
        return "<Alice's and Bob's world>"

    def _repr_pretty_(self, printer, cycle) -> None:
        """What hypothesis prints for a failing example (rather than every token)."""
        printer.text(repr(self))


def _token_id(token: str) -> str:
    return token.split("_")[1]


@contextlib.asynccontextmanager
async def _streamable_transport(url: str, token: str, noted: list):
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def note(response):
        if response.headers.get("mcp-session-id"):
            noted.append(response.headers["mcp-session-id"])

    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    client.event_hooks["response"].append(note)
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


async def _hold(open_transport, ready: asyncio.Future, done: asyncio.Event) -> None:
    """Keep one SDK session open until ``done``; ``ready`` gets the session."""
    from mcp import ClientSession

    try:
        async with open_transport() as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                ready.set_result(session)
                await done.wait()
    except BaseException as e:
        if not ready.done():
            ready.set_exception(e)
        raise


async def _open_page(session, url: str) -> int:
    opened = await session.call_tool("new_page", {"url": url})
    assert not opened.is_error, _text(opened)
    return int(re.search(r"^(\d+): .*\[selected\]", _text(opened), re.M).group(1))


async def _ws_url(browser_url: str) -> str:
    response = await treq.get(browser_url + "/json/version", persistent=False)
    return json.loads(await response.content())["webSocketDebuggerUrl"]


async def _set_up_alice(proxy, chromium, fixture_site, data_dir, hold) -> Alice:
    """Alice registers her browser, opens a session on each transport and a page in each
    (and one without a session), and saves a screenshot."""
    from mcp import types
    from mcp.client.sse import sse_client

    token = await proxy.token_for("alice")
    session_token = (await proxy.register("alice", chromium.browser_url, token))["sessionToken"]
    legacy_ids, streamable_ids = [], []
    legacy = await hold(
        lambda: sse_client(
            proxy.base_url + "/sse", headers={"Authorization": f"Bearer {token}"}, on_session_created=legacy_ids.append
        )
    )
    streamable = await hold(lambda: _streamable_transport(proxy.base_url + "/mcp", session_token, streamable_ids))
    pages = {}
    for session, name in ((legacy, "legacy"), (streamable, "streamable")):
        url = fixture_site.url(f"index.html?{SECRET}={name}")
        pages[await run_async(_open_page(session, url))] = url
    url = fixture_site.url(f"second.html?{SECRET}=stateless")
    opened = await proxy.call_tool(token, "new_page", {"url": url})
    pages[int(re.search(r"^(\d+): .*\[selected\]", opened["result"]["content"][0]["text"], re.M).group(1))] = url

    async def screenshot():
        arguments = {"pageId": list(pages)[1], "filePath": f"{SECRET}/shot.png"}
        shot = await streamable.call_tool("take_screenshot", arguments)
        assert not shot.is_error, _text(shot)
        return next(str(b.uri) for b in shot.content if isinstance(b, types.ResourceLink))

    artifact = await run_async(screenshot())
    assert len(pages) == 3 and artifact.startswith("mcproxy://artifacts/")
    return Alice(
        token=token,
        session_token=session_token,
        browser_url=chromium.browser_url,
        browser_ws_url=await _ws_url(chromium.browser_url),
        port=chromium.port,
        legacy_id=legacy_ids[0],
        streamable_id=streamable_ids[0],
        legacy=legacy,
        streamable=streamable,
        pages=pages,
        artifact=artifact,
        artifact_path=next(
            os.path.join(where, name) for where, _, names in os.walk(data_dir) for name in names if name == "shot.png"
        ),
    )


async def _bobs_credentials(proxy, bob_browser_url: str, alice: Alice) -> dict[str, dict[str, str]]:
    """Bob registers his own browser; the headers of everything he may try to pass as a credential."""
    bob = await proxy.token_for("bob")
    session_token = (await proxy.register("bob", bob_browser_url, bob))["sessionToken"]
    secret_part = bob.split("_", 2)[2]
    as_alice = {"X-User-Id": "alice"}

    def bearer(value: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {value}"}

    return {
        "bob": bearer(bob),
        "bob as alice": {**bearer(bob), **as_alice},
        "bob's session token": bearer(session_token),
        "bob's session token as alice": {**bearer(session_token), **as_alice},
        "bob register-only": bearer(await proxy.token_for("bob", "register")),
        "bob metrics-only": bearer(await proxy.token_for("bob", "metrics")),
        "bob tools-only as alice": {**bearer(await proxy.token_for("bob", "tools:*")), **as_alice},
        "forged on alice's token id": bearer(f"mcpx_{alice.token_ids[0]}_{secret_part}"),
        "forged on alice's session token id": bearer(f"mcpx_{alice.token_ids[1]}_{secret_part}"),
    }


@pytest_twisted.async_yield_fixture(scope="module")
async def world(reactor, tmp_path_factory, chromium, fixture_site):
    """One daemon for the whole module: Alice on the shared Chromium, Bob on one of his own."""
    from mcproxy.testing.chromium import Chromium

    bobs_chromium = Chromium(reactor)  # like private_chromium, for the module
    await bobs_chromium.start()
    lifted = {"user_rate": 1e6, "user_burst": 10**6, "address_rate": 1e6, "address_burst": 10**6}
    data_dir = tmp_path_factory.mktemp("cross-tenant")
    proxy = await start_proxy(reactor, data_dir, ratelimit=lifted)
    done = asyncio.Event()
    holders = []

    def hold(open_transport) -> Deferred:
        ready = asyncio.get_running_loop().create_future()
        holders.append(asyncio.ensure_future(_hold(open_transport, ready, done)))
        return Deferred.fromFuture(ready)

    try:
        alice = await _set_up_alice(proxy, chromium, fixture_site, data_dir, hold)
        credentials = await _bobs_credentials(proxy, bobs_chromium.browser_url, alice)
        bob_browser = proxy.service.pool.existing("bob")
        await bob_browser.connected(10)
        state = World(
            proxy=proxy,
            alice=alice,
            bob_url=bobs_chromium.browser_url,
            bob_session=await _initialize(proxy, credentials["bob"]),
            bob_tab_ids=[page.page_id for page in bob_browser.pages()],
            credentials=credentials,
            tokens=await _tokens(proxy),
        )
        await _check_nothing_changed(state)
        yield state
        for page_id in alice.pages:
            await proxy.call_tool(alice.token, "close_page", {"pageId": page_id})
    finally:
        done.set()
        for holder in holders:
            with contextlib.suppress(Exception):
                await Deferred.fromFuture(holder)
        await proxy.stop()
        await bobs_chromium.stop()


async def _tokens(proxy) -> set:
    return {(t.token_id, t.revoked_at) for t in await proxy.service.store.list_tokens()}


async def _check_nothing_changed(world: World) -> None:
    """In-process: Alice's pages, sessions, artifact, tokens and registration are as they
    were, and Bob gained nothing (no tokens, no pages, no artifacts, the same browser)."""
    service, alice = world.proxy.service, world.alice
    browser = service.pool.existing("alice")
    assert browser is not None and browser.status == "connected"
    open_pages = {page.page_id: page.url for page in browser.pages() if not page.closed}
    assert {page_id: open_pages.get(page_id) for page_id in alice.pages} == alice.pages
    assert service.sessions.get(alice.legacy_id, "alice") is not None
    assert service.sessions.get(alice.streamable_id, "alice") is not None
    assert service.sessions.count_for_user("alice") == 2
    assert service.artifacts.get("alice", alice.artifact) is not None
    assert [a.id for a in service.artifacts.artifacts("bob")] == []
    assert await _tokens(world.proxy) == world.tokens
    assert (await service.store.get_user("alice")).browser_url == alice.browser_url
    assert (await service.store.get_user("bob")).browser_url == world.bob_url
    assert service.pool.existing("bob").status == "connected"
    assert [p.page_id for p in service.pool.existing("bob").pages() if p.via_proxy] == []


# -- talking to the daemon as Bob ----------------------------------------------------------------


@attrs.frozen
class Answer:
    """What the daemon answered one attempt."""

    code: int
    content_type: str
    text: str
    headers: object = attrs.field(default=None, eq=False, repr=False)

    def message(self) -> dict | None:
        """The JSON-RPC message in the body (plain JSON, or the last event of an SSE body)."""
        if "text/event-stream" in self.content_type:
            data = [line[5:].strip() for line in self.text.splitlines() if line.startswith("data:")]
            return json.loads(data[-1]) if data else None
        try:
            parsed = json.loads(self.text)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def describe(self) -> str:
        """How the daemon refused, in short: the HTTP status and the error it named."""
        message = self.message() or {}
        if "jsonrpc" not in message:
            return f"{self.code} {(message.get('error') or {}).get('code', '')}".strip()
        if "error" in message:
            error = message["error"]
            return f"{self.code} JSON-RPC {error['code']} {error.get('message', '').split(':')[0][:40]}"
        if "resources" in message.get("result", {}):
            return f"{self.code} listed {len(message['result']['resources'])} resources"
        text = (message.get("result") or {}).get("content", [{}])[0].get("text", "")
        return f"{self.code} isError: {re.sub(r'[0-9]+', 'N', text.splitlines()[0] if text else '')[:70]}"

    def refused(self) -> bool:
        """4xx, a JSON-RPC error or an ``isError`` tool result."""
        if 400 <= self.code < 500:
            return True
        message = self.message() or {}
        if "jsonrpc" in message:
            return "error" in message or bool((message.get("result") or {}).get("isError"))
        return False


class _Leave(Protocol):
    """Closes the connection of a response whose body it is given."""

    def connectionMade(self):
        self.transport.stopProducing()


async def _send(proxy, method: str, path: str, headers: dict, body=None) -> Answer:
    from twisted.internet import reactor

    data = None if body is None else json.dumps(body).encode()
    sent = {name: [value] for name, value in headers.items()}
    if data is not None:
        sent["Content-Type"] = ["application/json"]
    response = await treq.request(method, proxy.base_url + path, headers=sent, data=data, persistent=False, timeout=60)
    content_type = (response.headers.getRawHeaders("content-type") or [""])[0]
    if method == "GET" and "text/event-stream" in content_type:
        response.deliverBody(_Leave())  # a stream opened (the attempt got in): its status is enough
        return Answer(response.code, content_type, "", response.headers)
    raw = await response.content().addTimeout(60, reactor)
    return Answer(response.code, content_type, raw.decode("utf-8", "replace"), response.headers)


def _rpc(method: str, params: dict | None = None, rid: int | None = 1) -> dict:
    message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if rid is not None:
        message["id"] = rid
    return message


async def _mcp_post(proxy, headers: dict, message: dict, session_id: str | None) -> Answer:
    """POST one message to /mcp: in ``session_id`` (protocol 2025-11-25), or stateless (2026)."""
    sent = {**headers, "Accept": "application/json, text/event-stream"}
    if session_id is not None:
        sent.update({"Mcp-Session-Id": session_id, "MCP-Protocol-Version": SESSION_VERSION})
    else:
        meta = {
            "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        message = {**message, "params": {**message.get("params", {}), "_meta": meta}}
        sent.update({"MCP-Protocol-Version": STATELESS_VERSION, "Mcp-Method": message["method"]})
        named = {"tools/call": "name", "resources/read": "uri"}.get(message["method"])
        if named:
            sent["Mcp-Name"] = _header_value(message["params"][named])
    return await _send(proxy, "POST", "/mcp", sent, message)


def _header_value(value: str) -> str:
    """``value`` as a header: itself when it is plain printable ASCII, else base64-wrapped."""
    if value.isascii() and value.isprintable() and value == value.strip():
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode("ascii") + "?="


async def _initialize(proxy, credential: dict[str, str]) -> str:
    """Open a Streamable HTTP session over raw HTTP; its id."""
    headers = {**credential, "Accept": "application/json, text/event-stream"}
    hello = {"protocolVersion": SESSION_VERSION, "capabilities": {}, "clientInfo": {"name": "bob", "version": "1"}}
    answer = await _send(proxy, "POST", "/mcp", headers, _rpc("initialize", hello))
    assert answer.code == 200, answer
    session_id = answer.headers.getRawHeaders("mcp-session-id")[0]
    answer = await _mcp_post(proxy, headers, _rpc("notifications/initialized", rid=None), session_id)
    assert answer.code == 202, answer
    return session_id


async def _attempt(
    world: World, kind: str, request: str, answer: Answer, listing: bool = False, sent: str = ""
) -> None:
    """Count one attempt; it succeeded if it was not refused (a listing: if it showed
    anything of Alice's) or if the answer shows anything of Alice's but the value Bob
    ``sent`` echoed. Then nothing of Alice's may have changed."""
    attempts[kind] += 1
    leaked = SECRET in answer.text.replace(json.dumps(sent)[1:-1], "") if sent else SECRET in answer.text
    if leaked or (not listing and not answer.refused()):
        successes.append(f"{request} -> {answer.code} {answer.text[:300]}")
        raise AssertionError(f"cross-tenant attempt succeeded: {request} -> {answer.code} {answer.text[:1000]}")
    refusals[kind, answer.describe()] += 1
    await _check_nothing_changed(world)


# -- generated references to Alice's things -------------------------------------------------------

#: Bob's credentials, the ones that get past authentication more often than the others.
credential_names = st.sampled_from(
    [
        *["bob"] * 3,
        *["bob's session token"] * 2,
        "bob register-only",
        "bob metrics-only",
        "bob as alice",
        "bob's session token as alice",
        "bob tools-only as alice",
        "forged on alice's token id",
        "forged on alice's session token id",
    ]
)
#: How to change an id into one near it: (name, position).
mutations = st.tuples(
    st.sampled_from(["same", "same", "flip", "drop last", "append", "upper", "double", "prefix", "truncate"]),
    st.integers(min_value=0, max_value=200),
)
URLSAFE = string.ascii_letters + string.digits + "-_"


def _near(value: str, mutation: tuple[str, int]) -> str:
    """``value`` itself or a string close to it."""
    how, at = mutation
    i = at % len(value)
    if how == "flip":
        other = URLSAFE[(URLSAFE.index(value[i]) + 1) % len(URLSAFE)] if value[i] in URLSAFE else "A"
        return value[:i] + other + value[i + 1 :]
    if how == "drop last":
        return value[:-1]
    if how == "append":
        return value + URLSAFE[at % len(URLSAFE)]
    if how == "upper":
        return value.upper()
    if how == "double":
        return value + value
    if how == "prefix":
        return value[: max(1, i)]
    if how == "truncate":
        return value[i:] or value
    return value


def _percent_all(value: str) -> str:
    return "".join(f"%{b:02X}" for b in value.encode())


# -- pages --------------------------------------------------------------------------------------

#: Every tool that takes ``pageId``, with otherwise valid arguments.
PAGE_TOOLS = {
    "select_page": {},
    "close_page": {},
    "navigate_page": {"type": "url", "url": "about:blank"},
    "wait_for": {"text": ["x"], "timeout": 100},
    "click": {"uid": "1_1"},
    "fill": {"uid": "1_1", "value": "v"},
    "press_key": {"key": "Enter"},
    "type_text": {"text": "hello"},
    "hover": {"uid": "1_1"},
    "drag": {"from_uid": "1_1", "to_uid": "1_2"},
    "fill_form": {"elements": [{"uid": "1_1", "value": "v"}]},
    "upload_file": {"uid": "1_1", "filePaths": ["a.txt"]},
    "handle_dialog": {"action": "accept"},
    "take_snapshot": {},
    "evaluate_script": {"function": "() => document.title"},
    "take_screenshot": {},
    "take_heapsnapshot": {"filePath": "heap.heapsnapshot"},
    "emulate": {"colorScheme": "dark"},
    "resize_page": {"width": 800, "height": 600},
    "get_css_styles": {"uid": "1_1"},
    "list_console_messages": {},
    "get_console_message": {"msgid": 1},
    "list_network_requests": {},
    "get_network_request": {},
    "performance_start_trace": {},
    "performance_stop_trace": {},
    "performance_analyze_insight": {"insightSetId": "1", "insightName": "LCPBreakdown"},
    "screencast_start": {},
    "screencast_stop": {},
}
#: Which page: one of Alice's (index into her pages, plus a small offset), one of Bob's
#: own tabs that he never opened through the proxy, or any number.
page_refs = st.one_of(
    st.tuples(st.just("alice"), st.integers(0, 2), st.sampled_from([0, 0, 0, 1, -1, 2, 1000])),
    st.tuples(st.just("bob's tab"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("number"), st.integers(min_value=-(2**53), max_value=2**53), st.just(0)),
)
#: How the page id is spelled in the arguments.
page_forms = st.sampled_from(["int", "int", "int", "float", "string", "missing", "null"])


def _page_id(world: World, ref: tuple, form: str):
    source, index, offset = ref
    if source == "alice":
        value = sorted(world.alice.pages)[index] + offset
    elif source == "bob's tab":
        value = world.bob_tab_ids[index % len(world.bob_tab_ids)] if world.bob_tab_ids else index
    else:
        value = index
    return {"int": value, "float": float(value), "string": str(value), "null": None}.get(form, value)


@fuzz_settings(RUNS["pages"])
@given(
    credential=credential_names,
    in_own_session=st.booleans(),
    tool=st.sampled_from(sorted(PAGE_TOOLS)),
    ref=page_refs,
    form=page_forms,
)
@pytest_twisted.ensureDeferred
async def test_bob_cannot_use_alices_pages(world, credential, in_own_session, tool, ref, form):
    arguments = dict(PAGE_TOOLS[tool])
    if form != "missing":
        arguments["pageId"] = _page_id(world, ref, form)
    message = _rpc("tools/call", {"name": tool, "arguments": arguments})
    session_id = world.bob_session if in_own_session else None

    answer = await _mcp_post(world.proxy, world.credentials[credential], message, session_id)
    where = "in his own session" if in_own_session else "stateless"
    await _attempt(world, "pages", f"{credential} {where}: {json.dumps(message)}", answer)


@pytest.mark.fuzz
@pytest_twisted.ensureDeferred
async def test_every_page_tool_is_attacked(world):
    """New tools that take ``pageId`` must join `PAGE_TOOLS`."""
    answer = await _mcp_post(world.proxy, world.credentials["bob"], _rpc("tools/list"), None)
    listed = answer.message()["result"]["tools"]
    assert {t["name"] for t in listed if "pageId" in t["inputSchema"].get("properties", {})} == set(PAGE_TOOLS)


# -- sessions ---------------------------------------------------------------------------------------

#: What Bob sends into a session of Alice's (resolved against her state).
session_messages = st.sampled_from(
    [
        "list_pages",
        "new_page",
        "close_page",
        "navigate_page",
        "resources/list",
        "resources/read",
        "ping",
        "notifications/initialized",
        "notifications/cancelled",
    ]
)


def _session_message(world: World, name: str) -> dict:
    first = sorted(world.alice.pages)[0]
    return {
        "list_pages": _rpc("tools/call", {"name": "list_pages", "arguments": {}}),
        "new_page": _rpc("tools/call", {"name": "new_page", "arguments": {"url": "about:blank"}}),
        "close_page": _rpc("tools/call", {"name": "close_page", "arguments": {"pageId": first}}),
        "navigate_page": _rpc(
            "tools/call", {"name": "navigate_page", "arguments": {"pageId": first, "type": "url", "url": "about:blank"}}
        ),
        "resources/list": _rpc("resources/list", {}),
        "resources/read": _rpc("resources/read", {"uri": world.alice.artifact}),
        "ping": _rpc("ping"),
        "notifications/initialized": _rpc("notifications/initialized", rid=None),
        "notifications/cancelled": _rpc("notifications/cancelled", {"requestId": 1}, rid=None),
    }[name]


@fuzz_settings(RUNS["sessions"])
@given(
    credential=credential_names,
    which=st.sampled_from(["legacy", "streamable"]),
    mutation=mutations,
    how=st.sampled_from(["POST /message", "POST /message encoded", "POST /mcp", "GET /mcp", "DELETE /mcp"]),
    message_name=session_messages,
)
@pytest_twisted.ensureDeferred
async def test_bob_cannot_enter_alices_sessions(world, credential, which, mutation, how, message_name):
    alice = world.alice
    session_id = _near(alice.legacy_id if which == "legacy" else alice.streamable_id, mutation)
    headers = world.credentials[credential]
    message = _session_message(world, message_name)

    if how.startswith("POST /message"):
        spelled = _percent_all(session_id) if how.endswith("encoded") else quote(session_id, safe="")
        answer = await _send(world.proxy, "POST", f"/message?sessionId={spelled}", headers, message)
    elif how == "POST /mcp":
        answer = await _mcp_post(world.proxy, headers, message, session_id)
    else:
        sent = {**headers, "Mcp-Session-Id": session_id, "Accept": "text/event-stream"}
        answer = await _send(world.proxy, how.split()[0], "/mcp", sent)
    sent_message = "" if how in ("GET /mcp", "DELETE /mcp") else " " + json.dumps(message)
    await _attempt(world, "sessions", f"{credential}: {how} session {session_id!r} ({which}){sent_message}", answer)


# -- artifacts ------------------------------------------------------------------------------------

uri_forms = st.sampled_from(
    [
        "same",
        "near id",
        "upper id",
        "scheme case",
        "double slash",
        "trailing slash",
        "dot segment",
        "dot-dot",
        "percent id",
        "query",
        "fragment",
        "space",
        "nul",
        "by name",
        "file",
        "file uri",
    ]
)


def _artifact_uri(world: World, form: str, mutation: tuple[str, int]) -> str:
    uri = world.alice.artifact
    prefix, artifact_id = uri.rsplit("/", 1)
    return {
        "same": uri,
        "near id": f"{prefix}/{_near(artifact_id, mutation)}",
        "upper id": f"{prefix}/{artifact_id.upper()}",
        "scheme case": uri.replace("mcproxy://", "MCPROXY://"),
        "double slash": f"{prefix}//{artifact_id}",
        "trailing slash": uri + "/",
        "dot segment": f"{prefix}/./{artifact_id}",
        "dot-dot": f"{prefix}/../artifacts/{artifact_id}",
        "percent id": f"{prefix}/{_percent_all(artifact_id)}",
        "query": uri + "?user=alice",
        "fragment": uri + "#alice",
        "space": f" {uri} ",
        "nul": uri + "\x00",
        "by name": f"{prefix}/{SECRET}/shot.png",
        "file": world.alice.artifact_path,
        "file uri": "file://" + world.alice.artifact_path,
    }[form]


@fuzz_settings(RUNS["artifacts"])
@given(
    credential=credential_names,
    in_own_session=st.booleans(),
    listing=st.booleans(),
    form=uri_forms,
    mutation=mutations,
)
@pytest_twisted.ensureDeferred
async def test_bob_cannot_read_or_list_alices_artifacts(world, credential, in_own_session, listing, form, mutation):
    uri = _artifact_uri(world, form, mutation)
    message = _rpc("resources/list", {}) if listing else _rpc("resources/read", {"uri": uri})
    session_id = world.bob_session if in_own_session else None

    answer = await _mcp_post(world.proxy, world.credentials[credential], message, session_id)
    if listing and answer.code == 200:
        assert world.alice.artifact.rsplit("/", 1)[1] not in answer.text, answer.text
    await _attempt(world, "artifacts", f"{credential}: {json.dumps(message)}", answer, listing=listing, sent=uri)


# -- tokens ---------------------------------------------------------------------------------------


@fuzz_settings(RUNS["tokens"])
@given(
    credential=credential_names,
    action=st.sampled_from(["rotate", "rotate now", "revoke", "list", "create for alice"]),
    which=st.integers(0, 1),
    mutation=mutations,
)
@pytest_twisted.ensureDeferred
async def test_bob_cannot_touch_alices_tokens(world, credential, action, which, mutation):
    token_id = _near(world.alice.token_ids[which], mutation)
    headers = world.credentials[credential]
    method, path, body = {
        "rotate": ("POST", f"/api/tokens/{quote(token_id, safe='')}/rotate", None),
        "rotate now": ("POST", f"/api/tokens/{quote(token_id, safe='')}/rotate", {"graceSeconds": 0}),
        "revoke": ("DELETE", f"/api/tokens/{quote(token_id, safe='')}", None),
        "list": ("GET", "/api/tokens", None),
        "create for alice": ("POST", "/api/tokens", {"userId": "alice", "permissions": ["tools:*", "register"]}),
    }[action]

    answer = await _send(world.proxy, method, path, headers, body)
    await _attempt(world, "tokens", f"{credential}: {method} {path} {json.dumps(body)}", answer)


# -- status, registration and browser --------------------------------------------------------------

#: Alice's user id as it may appear in a path or a body, and ids near it.
user_ids = st.one_of(
    st.sampled_from(["alice", "alice/", "Alice", "ALICE", "%61lice", "alice%00", "alice%2F", " alice", "alice "]),
    mutations.map(lambda mutation: _near("alice", mutation)),
)


def _browser_url_forms(alice: Alice) -> list[str]:
    """Alice's browser under the spellings a URL parser, a resolver or Chrome accept."""
    port, ws = alice.port, alice.browser_ws_url
    return [
        alice.browser_url,
        f"http://localhost:{port}",
        f"http://127.0.0.1:{port}/",
        f"HTTP://LOCALHOST:{port}",
        f"http://127.1:{port}",
        f"http://0x7f.0.0.1:{port}",
        f"http://2130706433:{port}",
        f"http://0177.0.0.1:{port}",
        f"http://127.0.0.1.:{port}",
        f"http://localhost.:{port}",
        f"http://[::ffff:127.0.0.1]:{port}",
        f"http://[::1]:{port}",
        f"http://127.0.0.1:0{port}",
        f"http://user@127.0.0.1:{port}",
        f"http://127.0.0.1:{port}/json/version",
        f"http://127.0.0.1:{port}#x",
        f"https://127.0.0.1:{port}",
        ws,
        ws.replace("127.0.0.1", "localhost"),
        ws.upper().replace("WS://", "ws://"),
        ws + "/",
    ]


@fuzz_settings(RUNS["registration"])
@given(
    credential=credential_names,
    action=st.sampled_from(["status", "delete", "list users", "dashboard", "register as alice"]),
    user_id=user_ids,
)
@pytest_twisted.ensureDeferred
async def test_bob_cannot_see_or_change_alices_registration(world, credential, action, user_id):
    path_user = quote(user_id, safe="%/")
    method, path, body = {
        "status": ("GET", f"/api/users/{path_user}/status", None),
        "delete": ("DELETE", f"/api/users/{path_user}", None),
        "list users": ("GET", "/api/users", None),
        "dashboard": ("GET", "/admin/api/overview", None),
        "register as alice": ("POST", "/api/register", {"userId": user_id, "browserURL": world.bob_url}),
    }[action]
    answer = await _send(world.proxy, method, path, world.credentials[credential], body)
    await _attempt(world, "registration", f"{credential}: {method} {path} {json.dumps(body)}", answer)


@fuzz_settings(RUNS["browser"])
@given(
    credential=credential_names,
    form=st.integers(min_value=0, max_value=100),
    claimed=st.sampled_from([None, None, "bob", "bob", "alice", "Alice"]),
)
@pytest_twisted.ensureDeferred
async def test_bob_cannot_register_alices_browser(world, credential, form, claimed):
    forms = _browser_url_forms(world.alice)
    body = {"browserURL": forms[form % len(forms)]}
    if claimed is not None:
        body["userId"] = claimed
    answer = await _send(world.proxy, "POST", "/api/register", world.credentials[credential], body)
    await _attempt(world, "browser", f"{credential}: POST /api/register {json.dumps(body)}", answer)


# -- afterwards -------------------------------------------------------------------------------------


@pytest.mark.fuzz
@pytest_twisted.ensureDeferred
async def test_every_attempt_failed_and_alice_is_unharmed(world, fixture_site):
    """Runs last: the attempts above ran (as many as asked), none succeeded, and Alice's
    sessions, pages, artifact, tokens and browser all still work for her."""
    print(f"\nCross-tenant attempts: {attempts}; refused as:")
    for (kind, how), count in sorted(refusals.items()):
        print(f"  {kind:13} {count:5}  {how}")
    assert successes == []
    for kind, usual in RUNS.items():
        assert attempts[kind] >= examples(usual), (kind, attempts)
    assert sum(attempts.values()) >= examples(1000)
    await _check_nothing_changed(world)
    alice, proxy = world.alice, world.proxy

    async def her_sessions():
        listed = {}
        for name, session in (("legacy", alice.legacy), ("streamable", alice.streamable)):
            listed[name] = _text(await session.call_tool("list_pages", {}))
        read = await alice.streamable.read_resource(alice.artifact)
        return listed, read

    listed, read = await run_async(her_sessions())
    urls = sorted(alice.pages.values())
    assert f"{SECRET}=legacy" in listed["legacy"] and f"{SECRET}=streamable" in listed["streamable"]
    assert base64.b64decode(read.contents[0].blob).startswith(b"\x89PNG\r\n\x1a\n")
    for token in (alice.token, alice.session_token):
        stateless = await proxy.call_tool(token, "list_pages")
        text = stateless["result"]["content"][0]["text"]
        assert all(url in text for url in urls), text
        code, status, _ = await proxy.api("GET", "/api/users/alice/status", token=token)
        assert code == 200 and status["browserStatus"] == "connected" and status["browserURL"] == alice.browser_url
        assert status["activeSessions"] == 2
    targets = await (await treq.get(alice.browser_url + "/json/list", persistent=False)).json()
    assert set(urls) <= {target["url"] for target in targets}
