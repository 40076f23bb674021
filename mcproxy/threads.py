"""Work that would hold the reactor too long (decoding, rendering or encoding megabytes) runs
in the reactor's thread pool through one helper.

A thread alone is not enough: a C function such as a base64 codec holds the GIL for its
whole call, and the reactor's thread waits meanwhile. So such work is done in pieces of
`PIECE_BYTES`, between which the interpreter lets the reactor run.
"""

import base64
from collections.abc import Callable
from functools import partial

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

#: Bytes of binary data one piece of work holds (a millisecond or so of base64): a multiple
#: of 3, so that base64 pieces join without padding in between.
PIECE_BYTES = 3 * 256 * 1024


def thread_runner(reactor) -> Callable[..., Deferred] | None:
    """``run(f, *args)``: Deferred of ``f(*args)`` in the reactor's thread pool; None for a
    clock without threads (deterministic tests then do the work inline)."""
    if not hasattr(reactor, "getThreadPool"):
        return None
    return partial(deferToThreadPool, reactor, reactor.getThreadPool())


def b64encode_in_pieces(data: bytes) -> str:
    """``base64.b64encode(data)`` as text, a piece at a time (for a thread)."""
    view = memoryview(data)
    return "".join(
        base64.b64encode(view[at : at + PIECE_BYTES]).decode("ascii") for at in range(0, len(data), PIECE_BYTES)
    )


def b64decode_in_pieces(text: str) -> bytes:
    """``base64.b64decode(text)``, a piece at a time (for a thread)."""
    piece = PIECE_BYTES // 3 * 4  # whole base64 quanta
    return b"".join(base64.b64decode(text[at : at + piece]) for at in range(0, len(text), piece))
