"""Work in pieces, for threads that must let the reactor run."""

import base64
import os

import pytest

from mcproxy.threads import PIECE_BYTES, b64decode_in_pieces, b64encode_in_pieces


@pytest.mark.parametrize("size", [0, 1, 2, PIECE_BYTES - 1, PIECE_BYTES, PIECE_BYTES + 1, 2 * PIECE_BYTES + 2])
def test_base64_in_pieces_is_base64(size):
    data = os.urandom(size)
    text = b64encode_in_pieces(data)
    assert text == base64.b64encode(data).decode("ascii")
    assert b64decode_in_pieces(text) == data
