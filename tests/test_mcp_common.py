"""What the MCP transports share: writing JSON-RPC answers."""

from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from mcproxy.mcp.jsonrpc import encode
from mcproxy.web.mcp_common import STREAMED_ANSWER_BYTES, write_rpc


def _request(clock: Clock) -> DummyRequest:
    request = DummyRequest([b"mcp"])
    request.gone = False
    request.deadline = clock.callLater(120, lambda: None)
    return request


def test_a_small_answer_is_written_at_once():
    clock = Clock()
    request = _request(clock)
    message = {"jsonrpc": "2.0", "id": 1, "result": {"text": "hi"}}
    write_rpc(request, 200, message)
    assert request.written == [encode(message)] and request.finished
    assert request.responseHeaders.getRawHeaders(b"content-length") == [str(len(encode(message))).encode()]


def test_a_big_answer_is_written_in_pieces_as_the_connection_takes_them():
    """Megabytes (a read image) go out through a producer, one piece per turn, and the
    answer under way no longer has a time limit, as one written whole would not."""
    clock = Clock()
    request = _request(clock)
    deadline = request.deadline
    message = {"jsonrpc": "2.0", "id": 1, "result": {"blob": "QUJD" * STREAMED_ANSWER_BYTES}}
    write_rpc(request, 200, message)
    assert request.finished and not deadline.active()
    assert b"".join(request.written) == encode(message)
    assert len(request.written) > 1 and max(map(len, request.written)) < STREAMED_ANSWER_BYTES
    assert request.responseHeaders.getRawHeaders(b"content-length") == [str(len(encode(message))).encode()]


def test_no_answer_once_answered():
    clock = Clock()
    request = _request(clock)
    request.gone = True
    write_rpc(request, 200, {"jsonrpc": "2.0", "id": 1, "result": {"blob": "x" * STREAMED_ANSWER_BYTES}})
    assert request.written == [] and not request.finished
