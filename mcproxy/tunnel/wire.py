"""The tunnel protocol (``mcproxy-tunnel.v1``), spoken by both ends.

Text frames are CDP messages exactly as Chrome sends and receives them; binary frames are
control messages, JSON objects with a type ``t``:

- client to proxy: ``hello`` (``v``, ``product``, ``mode``: ``pipe`` or ``port``), ``opened``
  (the browser connection asked for is open), ``error`` (``msg``: it could not be opened),
  ``closed`` (``reason``: Chrome went away);
- proxy to client: ``welcome`` (``user``), ``open`` (open a fresh CDP browser connection),
  ``close`` (close it).

A tunnel carries one CDP browser connection at a time, between ``open`` and ``close``.
"""

import json

SUBPROTOCOL = "mcproxy-tunnel.v1"
PATH = "/tunnel"
VERSION = 1
MODES = ("pipe", "port")

#: Close codes: the token was refused, it lacks the permission, a newer tunnel of the same
#: user took over, the user was unregistered. The client gives up on these rather than
#: reconnecting.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_REPLACED = 4409
CLOSE_UNREGISTERED = 4410
#: The peer broke the protocol (a malformed control message, a hello missing); the proxy
#: stops (the client comes back once it returns). A frame over the size cap is closed with
#: the WebSocket's own 1009.
CLOSE_PROTOCOL = 4400
CLOSE_GOING_AWAY = 4503
FINAL_CLOSE_CODES = (CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_REPLACED, CLOSE_UNREGISTERED)

#: Seconds between WebSocket pings, both ways: a tunnel whose peer misses one is dropped.
PING_INTERVAL = 20.0
#: Control messages are small; a bigger binary frame is a broken peer.
MAX_CONTROL_BYTES = 4096
#: The longest text a control message carries (product names, error messages).
MAX_TEXT = 512

#: The fields each control message type may carry, with their types.
_FIELDS: dict[str, dict[str, type]] = {
    "hello": {"v": int, "product": str, "mode": str},
    "welcome": {"user": str},
    "open": {},
    "opened": {},
    "close": {},
    "closed": {"reason": str},
    "error": {"msg": str},
}


class BadControl(ValueError):
    """A binary frame that is no control message we know."""


def no_delay(transport) -> None:
    """Send small frames at once: CDP is request and answer, and Nagle's algorithm would hold
    each small frame for the peer's delayed ACK (40 ms a call on Linux). (The proxy's end is
    an HTTP connection first, which twisted.web sets so already.)"""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)  # TLS wrappers pass it on
    if set_no_delay is not None:
        set_no_delay(True)


def send(protocol, payload: bytes, *, binary: bool) -> bool:
    """Send one frame on an autobahn ``protocol`` if it is still open (autobahn raises on a
    closing one); whether it was sent. What is lost with a closing connection is told by
    its close."""
    if protocol.state != protocol.STATE_OPEN:
        return False
    protocol.sendMessage(payload, isBinary=binary)
    return True


def encode(kind: str, **fields) -> bytes:
    """A control message as the payload of a binary frame."""
    return json.dumps({"t": kind, **fields}, separators=(",", ":")).encode("utf-8")


def decode(payload: bytes) -> dict:
    """The control message in ``payload``, its fields checked (BadControl otherwise)."""
    if len(payload) > MAX_CONTROL_BYTES:
        raise BadControl(f"a control message of {len(payload)} bytes (at most {MAX_CONTROL_BYTES})")
    try:
        message = json.loads(payload.decode("utf-8"))
    except ValueError:
        raise BadControl("a binary frame that is not JSON") from None
    if not isinstance(message, dict) or message.get("t") not in _FIELDS:
        raise BadControl("a binary frame that is no known control message")
    for name, kind in _FIELDS[message["t"]].items():
        value = message.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise BadControl(f"the {name!r} of a {message['t']!r} message is not a {kind.__name__}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            message[name] = value[:MAX_TEXT]
    return message
