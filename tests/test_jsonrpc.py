"""JSON-RPC framing: what is a message, and how errors are spelled."""

import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from mcp_types import JSONRPCError, JSONRPCNotification, JSONRPCRequest, JSONRPCResponse, jsonrpc_message_adapter
from pydantic import ValidationError

from mcproxy.mcp.jsonrpc import (
    Notification,
    Reply,
    Request,
    RpcError,
    encode,
    error_message,
    notification_message,
    parse_message,
    result_message,
)
from mcproxy.testing.fuzz import fuzz_settings


def test_parses_requests_notifications_and_replies():
    assert parse_message(b'{"jsonrpc":"2.0","id":7,"method":"ping"}') == Request(7, "ping")
    assert parse_message('{"jsonrpc":"2.0","id":"a","method":"m","params":{"k":[1]}}') == Request("a", "m", {"k": [1]})
    assert parse_message('{"jsonrpc":"2.0","method":"notifications/initialized","params":null}') == Notification(
        "notifications/initialized"
    )
    assert parse_message(b'{"jsonrpc":"2.0","id":"a","result":{}}') == Reply("a")
    assert parse_message(b'{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"no"}}') == Reply(None)


@pytest.mark.parametrize(
    "body, code, rid",
    [
        (b"{nope", -32700, None),
        (b"", -32700, None),
        (b"[]", -32600, None),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600, None),
        (b'"text"', -32600, None),
        (b'{"jsonrpc":"1.0","id":3,"method":"ping"}', -32600, 3),
        (b'{"jsonrpc":"2.0","id":3}', -32600, 3),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":4,"method":7}', -32600, 4),
        (b'{"jsonrpc":"2.0","id":5,"method":"m","params":[1]}', -32600, 5),
        (b'{"jsonrpc":"2.0","method":"m","id":null}', -32600, None),
        (b'{"jsonrpc":"2.0","id":6,"result":[]}', -32600, 6),
        (b'{"jsonrpc":"2.0","id":7,"error":{"code":"x","message":"m"}}', -32600, 7),
        (b'{"jsonrpc":"2.0","id":8,"error":{"code":1}}', -32600, 8),
        (b'{"jsonrpc":"2.0","id":9}', -32600, 9),
        (b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"x":NaN}}', -32700, None),
        (b"\xff", -32700, None),
    ],
)
def test_refusals(body, code, rid):
    with pytest.raises(RpcError) as caught:
        parse_message(body)
    assert caught.value.code == code
    message = caught.value.to_message()
    assert message["id"] == rid and message["error"]["code"] == code
    assert "id" in json.loads(encode(message))


def test_refusals_name_the_problem():
    with pytest.raises(RpcError, match=r'jsonrpc must be "2\.0"'):
        parse_message(b'{"jsonrpc":"1.0","id":3,"method":"ping"}')
    with pytest.raises(RpcError, match="params must be an object"):
        parse_message(b'{"jsonrpc":"2.0","id":3,"method":"ping","params":3}')
    with pytest.raises(RpcError, match="method is missing"):
        parse_message(b'{"jsonrpc":"2.0","id":3}')


_ID = st.none() | st.booleans() | st.integers(-2, 2) | st.floats(-2, 2) | st.sampled_from(["", "a"])
_FIELD = (
    _ID
    | st.sampled_from(["2.0", "1.0"])
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
_ERROR = st.fixed_dictionaries({}, optional={"code": _ID, "message": _ID | st.just("m"), "data": _FIELD})
_ENVELOPE = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "1.0", 2]),
        "id": _ID,
        "method": st.sampled_from(["ping", "tools/call"]) | _ID,
        "params": _FIELD,
    },
)
_REPLY = st.fixed_dictionaries(
    {},
    optional={"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0"]), "id": _ID, "result": _FIELD, "error": _ERROR | _FIELD},
)
_KINDS = {JSONRPCRequest: Request, JSONRPCNotification: Notification, JSONRPCResponse: Reply, JSONRPCError: Reply}


@fuzz_settings(400)
@given(_ENVELOPE | _REPLY)
def test_parse_message_accepts_what_mcp_types_accepts(message):
    """Checked by hand, a message is valid, and of a kind, exactly when mcp_types' own
    validator says so; but an error code must be an integer here, where pydantic reads a
    boolean or a whole float as one."""
    error = message.get("error")
    assume(not (isinstance(error, dict) and isinstance(error.get("code"), (bool, float))))
    try:
        theirs = type(jsonrpc_message_adapter.validate_python(message))
    except ValidationError:
        theirs = None
    if theirs is JSONRPCNotification and "id" in message:
        theirs = None  # the model ignores a malformed id; a notification has none
    try:
        ours = type(parse_message(json.dumps(message)))
    except RpcError as e:
        assert e.code == -32600
        ours = None
    assert ours is (theirs and _KINDS[theirs])


def test_batches_are_refused_with_a_clear_message():
    with pytest.raises(RpcError, match="Batches are not supported"):
        parse_message(b'[{"jsonrpc":"2.0","method":"x"}]')


def test_builders():
    assert result_message(1, {}) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert error_message(None, -32700, "bad") == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "bad"},
    }
    assert error_message(2, -1, "m", {"k": 1})["error"]["data"] == {"k": 1}
    assert notification_message("n") == {"jsonrpc": "2.0", "method": "n"}
    assert encode({"a": "é"}) == '{"a":"é"}'.encode()


@fuzz_settings(100)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_input_is_a_message_or_an_rpc_error(body):
    try:
        parse_message(body)
    except RpcError as e:
        assert e.code in (-32700, -32600)


def _values(integers):
    return st.recursive(
        st.none() | st.booleans() | integers | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
        max_leaves=30,
    )


@fuzz_settings(300)
@given(_values(st.integers(-(2**63), 2**64 - 1)))
def test_encoding_in_pieces_gives_the_same_bytes(value):
    """Big results are encoded with many small encoder calls (a thread lets go of the GIL
    between them); the bytes are exactly those of one call."""
    from mcproxy.mcp.jsonrpc import to_json, to_json_in_pieces

    assert to_json_in_pieces(value) == to_json(value)


@fuzz_settings(300)
@given(_values(st.integers()))
def test_encoding_in_pieces_keeps_what_orjson_refuses(value):
    """An integer beyond 64 bits sends its part to the standard encoder, which writes some
    floats differently (``1e-08`` for ``1e-8``): the pieces hold the same JSON value."""
    from mcproxy.mcp.jsonrpc import to_json, to_json_in_pieces

    assert json.loads(to_json_in_pieces(value)) == json.loads(to_json(value))


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_long_strings_are_encoded_in_pieces_to_the_same_bytes(extra):
    """A string longer than a piece (an image's base64) is encoded a piece at a time; escapes
    and characters beyond ASCII on either side of a cut come out as one call makes them."""
    from mcproxy.mcp.jsonrpc import STRING_PIECE, to_json, to_json_in_pieces

    text = ("a" * (STRING_PIECE - 1) + '"é\n\U0001f600\\') * 2 + "x" * extra
    value = {"contents": [{"blob": text}]}
    assert to_json_in_pieces(value) == to_json(value)
    assert to_json_in_pieces(text) == to_json(text)


@pytest.mark.parametrize("extra", [-1, 0, 1, 257])
def test_long_lists_are_encoded_in_runs_to_the_same_bytes(extra):
    """A long list (10,000 console messages) is encoded `LIST_PIECE` items per call; the runs
    join into the bytes of one call, whatever the length, and a long string in it keeps its
    own pieces."""
    from mcproxy.mcp.jsonrpc import LIST_PIECE, STRING_PIECE, to_json, to_json_in_pieces

    items = [{"id": n, "text": f'line "{n}"\n é', "args": [n, None, True]} for n in range(3 * LIST_PIECE + extra)]
    value = {"structuredContent": {"messages": items}}
    assert to_json_in_pieces(value) == to_json(value)
    with_a_long_string = [*items, "b" * (STRING_PIECE + 1)]
    assert to_json_in_pieces(with_a_long_string) == to_json(with_a_long_string)
