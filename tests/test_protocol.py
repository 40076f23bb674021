"""The sans-IO MCP session layer, on a deterministic clock."""

import json

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from mcproxy.auth.principal import Principal
from mcproxy.calls import SessionView
from mcproxy.mcp.envelope import modern_envelope
from mcproxy.mcp.jsonrpc import RpcError, encode, parse_message
from mcproxy.mcp.protocol import McpServer, McpSession
from mcproxy.testing.fake_tools import FakeToolProvider

ALICE = Principal("alice", frozenset({"tools:*"}))
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def msg(method, params=None, rid=None):
    body = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        body["params"] = params
    if rid is not None:
        body["id"] = rid
    return parse_message(json.dumps(body))


class Harness:
    def __init__(self, max_in_flight=16):
        self.clock = Clock()
        self.tools = FakeToolProvider(self.clock)
        self.server = McpServer(self.tools, max_in_flight=max_in_flight)
        self.session = McpSession(self.server, ALICE, SessionView("s1"))
        self.notes = []
        self.next_id = 100

    def send(self, method, params=None, rid=None):
        """Handle a request; returns the Deferred."""
        if rid is None:
            self.next_id += 1
            rid = self.next_id
        return self.session.handle(msg(method, params, rid), self.notes.append)

    def answer(self, method, params=None, rid=None):
        d = self.send(method, params, rid)
        results = []
        d.addBoth(results.append)
        assert results, f"{method} did not answer synchronously"
        return results[0]

    def notify(self, method, params=None):
        self.session.handle(msg(method, params), self.notes.append)

    def initialize(self, version="2025-11-25"):
        answer = self.answer(
            "initialize",
            {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}},
        )
        self.notify("notifications/initialized")
        return answer


@pytest.fixture
def h():
    return Harness()


def test_requests_before_initialize_are_refused_but_ping_works(h):
    refused = h.answer("tools/list")
    assert refused["error"]["code"] == -32600
    assert "initialize" in refused["error"]["message"]
    assert h.answer("ping") == {"jsonrpc": "2.0", "id": h.next_id, "result": {}}


@pytest.mark.parametrize(
    "requested, negotiated",
    [
        ("2024-11-05", "2024-11-05"),
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2026-07-28", "2025-11-25"),
        ("1999-01-01", "2025-11-25"),
    ],
)
def test_version_negotiation(h, requested, negotiated):
    result = h.initialize(requested)["result"]
    assert result["protocolVersion"] == negotiated
    assert result["serverInfo"]["name"] == "mcproxy"
    assert result["capabilities"]["tools"] == {"listChanged": False}
    assert result["capabilities"]["logging"] == {}
    assert "resources" in result["capabilities"] and result["instructions"]
    assert h.session.protocol_version == negotiated


def test_second_initialize_and_bad_initialize_params(h):
    assert h.answer("initialize", {"protocolVersion": 5})["error"]["code"] == -32602
    h.initialize()
    assert h.answer("initialize", {})["error"]["code"] == -32600


def test_unknown_methods_and_bad_params(h):
    h.initialize()
    assert h.answer("nope/nope")["error"]["code"] == -32601
    assert h.answer("server/discover")["error"]["code"] == -32601  # not a handshake-era method
    assert h.answer("prompts/list")["error"]["code"] == -32601  # not offered
    bad = h.answer("tools/call", {"name": 5})["error"]
    assert bad["code"] == -32602 and "name" in bad["message"]
    assert h.answer("logging/setLevel", {"level": "loud"})["error"]["code"] == -32602


def wire(answer):
    """An answer as the client reads it (a ``tools/list`` result comes encoded already)."""
    return json.loads(encode(answer))


def test_tools_list_and_call(h):
    h.initialize("2025-06-18")
    tools = wire(h.answer("tools/list"))["result"]
    assert "ttlMs" not in tools and len(tools["tools"]) == 6
    echoed = h.answer("tools/call", {"name": "echo", "arguments": {"text": "hi"}})["result"]
    assert echoed["content"] == [{"type": "text", "text": "hi"}]
    failed = h.answer("tools/call", {"name": "fail"})["result"]
    assert failed["isError"] is True
    context = h.tools.calls[0][2]
    assert context.principal == ALICE and context.session.session_id == "s1"
    assert context.protocol_version == "2025-06-18" and context.request_id == str(h.next_id - 1)


@pytest.mark.parametrize(
    "params, problem",
    [
        (None, "params are required"),
        ({}, "name must be a string"),
        ({"name": None}, "name must be a string"),
        ({"name": "echo", "arguments": [1]}, "arguments must be an object"),
        ({"name": "echo", "arguments": "text"}, "arguments must be an object"),
        ({"name": "echo", "_meta": 5}, "_meta must be an object"),
        ({"name": "echo", "_meta": {"progressToken": 1.5}}, "_meta.progressToken must be a string or an integer"),
        ({"name": "echo", "_meta": {"progressToken": None}}, "_meta.progressToken must be a string or an integer"),
        ({"name": "echo", "_meta": {"progressToken": True}}, "_meta.progressToken must be a string or an integer"),
    ],
)
def test_tool_call_params_are_checked(h, params, problem):
    h.initialize()
    error = h.answer("tools/call", params)["error"]
    assert error == {"code": -32602, "message": f"Invalid params for tools/call: {problem}"}
    assert h.tools.calls == []


def test_tool_call_params_may_leave_out_arguments_and_carry_more(h):
    h.initialize()
    params = {"name": "echo", "arguments": None, "_meta": {"progressToken": "t", "other": 1}, "task": None}
    assert h.answer("tools/call", params)["result"]["content"] == [{"type": "text", "text": ""}]
    assert h.tools.calls[0][1] == {}


def test_tools_list_is_encoded_once_per_version_and_offer():
    class Offering(FakeToolProvider):
        """Lists every tool to alice, the echo tool alone to bob."""

        def list_tools(self, principal):
            self.listed += 1
            tools = super().list_tools(principal)
            return tools if principal.user_id == "alice" else [t for t in tools if t.name == "echo"]

    tools = Offering(Clock())
    tools.listed = 0
    server = McpServer(tools)

    def listing(principal, version="2025-11-25"):
        session = McpSession(server, principal, SessionView("s"))
        session.handle(
            msg(
                "initialize",
                {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
                1,
            ),
            lambda n: None,
        )
        return session.handle(msg("tools/list", None, 2), lambda n: None).result["result"]

    first = listing(ALICE)
    assert listing(Principal("alice", frozenset({"tools:*"}))) is first  # encoded once
    bob = listing(Principal("bob", frozenset({"tools:echo"})))
    assert [tool["name"] for tool in json.loads(bob)["tools"]] == ["echo"]
    older = listing(ALICE, "2025-03-26")
    assert older is not first and json.loads(older) == json.loads(first)
    assert tools.listed == 4  # who may call what is asked every time
    server.forget_listings()
    again = listing(ALICE)
    assert again is not first and again == first


def test_resources_hook_is_empty_for_now(h):
    h.initialize()
    assert h.answer("resources/list")["result"]["resources"] == []
    missing = h.answer("resources/read", {"uri": "mcproxy://artifacts/x"})["error"]
    assert missing["code"] == -32602 and "mcproxy://artifacts/x" in missing["message"]


def test_cancel_notification_cancels_the_work_and_nothing_is_answered(h):
    h.initialize()
    d = h.send("tools/call", {"name": "slow", "arguments": {"seconds": 10}}, rid="r1")
    results = []
    d.addBoth(results.append)
    assert not results and h.session.in_flight == 1
    h.notify("notifications/cancelled", {"requestId": "r1", "reason": "user"})
    assert results == [None]
    assert h.tools.cancelled == ["slow"] and h.session.in_flight == 0


def test_transport_cancelling_the_deferred_cancels_the_work(h):
    h.initialize()
    d = h.send("tools/call", {"name": "slow", "arguments": {"seconds": 10}})
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert failures and failures[0].check(CancelledError)
    assert h.tools.cancelled == ["slow"]


def test_cancel_of_unknown_or_finished_request_is_ignored(h):
    h.initialize()
    d = h.send("tools/call", {"name": "slow", "arguments": {"seconds": 1}}, rid=5)
    h.clock.advance(1)
    assert d.result["result"]["content"][0]["text"] == "waited 1.0s"
    h.notify("notifications/cancelled", {"requestId": 5})
    h.notify("notifications/cancelled", {"requestId": "never"})
    assert h.tools.cancelled == []


def test_progress_only_with_a_token(h):
    h.initialize()
    h.answer("tools/call", {"name": "progress", "arguments": {"steps": 2}})
    assert h.notes == []
    h.answer("tools/call", {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "tok"}})
    assert [n["method"] for n in h.notes] == ["notifications/progress"] * 2
    assert h.notes[1]["params"] == {
        "progressToken": "tok",
        "progress": 2,
        "total": 2,
        "message": "step 2 of 2",
    }


def test_progress_message_field_is_left_out_for_2024(h):
    h.initialize("2024-11-05")
    h.answer("tools/call", {"name": "progress", "arguments": {"steps": 1}, "_meta": {"progressToken": 1}})
    assert h.notes[0]["params"] == {"progressToken": 1, "progress": 1, "total": 1}


def test_logging_is_off_until_set_level_then_filtered(h):
    h.initialize()
    h.answer("tools/call", {"name": "log"})
    assert h.notes == []
    assert h.answer("logging/setLevel", {"level": "warning"})["result"] == {}
    h.answer("tools/call", {"name": "log"})
    assert [n["params"]["level"] for n in h.notes] == ["warning", "error", "critical", "alert", "emergency"]
    assert h.notes[0] == {
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": {"level": "warning", "data": "a warning message"},
    }


def test_in_flight_cap():
    h = Harness(max_in_flight=2)
    h.initialize()
    first = h.send("tools/call", {"name": "slow", "arguments": {"seconds": 5}})
    h.send("tools/call", {"name": "slow", "arguments": {"seconds": 5}})
    refused = h.answer("tools/call", {"name": "echo"})
    assert refused["error"]["code"] == -32010 and "limit 2" in refused["error"]["message"]
    assert "result" in h.answer("ping")
    h.clock.advance(5)
    assert "result" in first.result
    assert "result" in h.answer("tools/call", {"name": "echo"})


def test_duplicate_in_flight_id_is_refused(h):
    h.initialize()
    h.send("tools/call", {"name": "slow", "arguments": {"seconds": 5}}, rid=1)
    assert h.answer("ping", rid=1)["error"]["code"] == -32600


def test_close_cancels_everything(h):
    h.initialize()
    d = h.send("tools/call", {"name": "slow", "arguments": {"seconds": 5}})
    d.addErrback(lambda f: f.trap(CancelledError))
    h.session.close()
    assert h.tools.cancelled == ["slow"]
    assert h.answer("ping")["error"]["code"] == -32600


def test_notifications_and_responses_are_never_answered(h):
    h.initialize()
    assert h.session.handle(msg("notifications/whatever"), h.notes.append).result is None
    response = parse_message(b'{"jsonrpc":"2.0","id":1,"result":{}}')
    assert h.session.handle(response, h.notes.append).result is None


def test_a_provider_crash_is_an_internal_error_without_details(h):
    class Broken(FakeToolProvider):
        def call_tool(self, name, arguments, context):
            raise RuntimeError("secret detail")

    h.server.tools = Broken(h.clock)
    h.initialize()
    error = h.answer("tools/call", {"name": "echo"})["error"]
    assert error["code"] == -32603 and "secret" not in error["message"]


# --- 2026-07-28 ---------------------------------------------------------------


def modern(method, params=None, headers=None, rid=1):
    params = dict(params or {})
    params["_meta"] = {**MODERN_META, **params.get("_meta", {})}
    message = msg(method, params, rid)
    return message, modern_envelope(message, headers)


def test_modern_request_needs_no_handshake():
    clock = Clock()
    tools = FakeToolProvider(clock)
    server = McpServer(tools)
    message, envelope = modern("tools/list")
    session = McpSession(server, ALICE, SessionView(None), modern=envelope)
    result = wire(session.handle(message, lambda n: None).result)["result"]
    assert result["resultType"] == "complete" and result["ttlMs"] == 0 and len(result["tools"]) == 6
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mcproxy"


def test_discover_lists_every_version():
    message, envelope = modern("server/discover")
    session = McpSession(McpServer(FakeToolProvider(Clock())), ALICE, SessionView(None), modern=envelope)
    result = session.handle(message, lambda n: None).result["result"]
    assert result["supportedVersions"] == [
        "2024-11-05",
        "2025-03-26",
        "2025-06-18",
        "2025-11-25",
        "2026-07-28",
    ]
    assert "tools" in result["capabilities"] and "logging" not in result["capabilities"]
    assert result["instructions"]


def test_modern_log_level_comes_from_the_request():
    message, envelope = modern("tools/call", {"name": "log", "_meta": {"io.modelcontextprotocol/logLevel": "alert"}})
    notes = []
    session = McpSession(McpServer(FakeToolProvider(Clock())), ALICE, SessionView(None), modern=envelope)
    session.handle(message, notes.append)
    assert [n["params"]["level"] for n in notes] == ["alert", "emergency"]


def test_modern_methods_removed_in_2026_are_not_found():
    message, envelope = modern("ping")
    session = McpSession(McpServer(FakeToolProvider(Clock())), ALICE, SessionView(None), modern=envelope)
    assert session.handle(message, lambda n: None).result["error"]["code"] == -32601


@pytest.mark.parametrize(
    "params, headers, code",
    [
        ({"name": "echo"}, None, -32602),
        ({"name": "echo", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}, None, -32602),
        ({"name": "echo", "_meta": MODERN_META}, {"mcp-protocol-version": "2025-11-25"}, -32020),
        (
            {"name": "echo", "_meta": MODERN_META},
            {"mcp-protocol-version": "2026-07-28", "mcp-method": "x"},
            -32020,
        ),
        (
            {"name": "echo", "_meta": MODERN_META},
            {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "fail"},
            -32020,
        ),
        (
            {
                "name": "echo",
                "_meta": {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2030-01-01"},
            },
            None,
            -32022,
        ),
        (
            {"name": "echo", "_meta": {**MODERN_META, "io.modelcontextprotocol/logLevel": "loud"}},
            None,
            -32602,
        ),
    ],
)
def test_modern_envelope_refusals(params, headers, code):
    with pytest.raises(RpcError) as caught:
        modern_envelope(msg("tools/call", params, 1), headers)
    assert caught.value.code == code
    if code == -32022:
        assert caught.value.data == {
            "supported": ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"],
            "requested": "2030-01-01",
        }


def test_modern_envelope_accepts_matching_headers():
    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    envelope = modern_envelope(msg("tools/call", {"name": "echo", "_meta": MODERN_META}, 1), headers)
    assert envelope.protocol_version == "2026-07-28" and envelope.log_level is None


def test_modern_mcp_name_may_be_base64_wrapped():
    params = {"name": "écho", "_meta": MODERN_META}
    headers = {
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "=?base64?w6ljaG8=?=",
    }
    assert modern_envelope(msg("tools/call", params, 1), headers).protocol_version == "2026-07-28"
    with pytest.raises(RpcError):
        modern_envelope(msg("tools/call", params, 1), {**headers, "mcp-name": "=?base64?!!?="})


def test_heavy_results_and_params_are_handled_off_the_reactor(h):
    """A result of megabytes is shaped and encoded by ``run_blocking`` (a thread in the
    daemon), and the params of megabytes of a method mcp_types validates are validated
    there; small ones in the reactor, with no thread hop."""
    from twisted.internet.defer import maybeDeferred

    from mcproxy.mcp.jsonrpc import Encoded, encode
    from mcproxy.mcp.shaping import OFF_REACTOR_WEIGHT

    shaped = []

    def run_blocking(f, *args):
        shaped.append(f)
        return maybeDeferred(f, *args)

    h.server.run_blocking = run_blocking
    h.initialize()
    small = h.answer("tools/call", {"name": "big", "arguments": {"size": 1024}})
    assert shaped == [] and small["result"]["content"][0]["type"] == "image"
    big = h.answer("tools/call", {"name": "big", "arguments": {"size": OFF_REACTOR_WEIGHT}})
    assert len(shaped) == 1 and isinstance(big["result"], Encoded)  # encoded there too
    wire = json.loads(encode(big))
    assert wire["id"] == big["id"] and len(wire["result"]["content"][0]["data"]) >= OFF_REACTOR_WEIGHT
    # A big echo is shaped there (a tool checks its own arguments).
    echoed = h.answer("tools/call", {"name": "echo", "arguments": {"text": "e" * OFF_REACTOR_WEIGHT}})
    assert len(shaped) == 2 and json.loads(encode(echoed))["result"]["content"][0]["text"].startswith("eee")
    # Megabytes of params for mcp_types to validate are validated there.
    level = h.answer("logging/setLevel", {"level": "info", "padding": "p" * OFF_REACTOR_WEIGHT})
    assert len(shaped) == 3 and level["result"] == {}


def test_a_heavy_resource_read_is_encoded_off_the_reactor(h):
    """A read resource of megabytes (a saved screenshot's base64) is shaped and encoded by
    ``run_blocking``, as a heavy tool result is."""
    import mcp_types
    from twisted.internet.defer import maybeDeferred, succeed

    from mcproxy.mcp.jsonrpc import Encoded, encode
    from mcproxy.mcp.shaping import OFF_REACTOR_WEIGHT

    blob = "QUJD" * OFF_REACTOR_WEIGHT
    uri = "mcproxy://artifacts/shot"

    class BigResource:
        def list_resources(self, principal):
            return []

        def read_resource(self, principal, uri):
            contents = [mcp_types.BlobResourceContents(uri=uri, mime_type="image/png", blob=blob)]
            return succeed(mcp_types.ReadResourceResult(contents=contents))

    shaped = []

    def run_blocking(f, *args):
        shaped.append(f)
        return maybeDeferred(f, *args)

    h.server.resources = BigResource()
    h.server.run_blocking = run_blocking
    h.initialize()
    answer = h.answer("resources/read", {"uri": uri})
    assert len(shaped) == 1 and isinstance(answer["result"], Encoded)
    assert json.loads(encode(answer))["result"]["contents"][0]["blob"] == blob
