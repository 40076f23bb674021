"""JSON on the wire: orjson's answers, and the standard library's where orjson refuses."""

import json

import pytest

from mcproxy import wirejson


@pytest.mark.parametrize(
    "value",
    [
        {"id": 1, "method": "Runtime.evaluate", "params": {"expression": 'é \U0001f600 "q"\n'}},
        {"big": 2**70, "small": -(2**63)},  # beyond 64 bits: orjson refuses, the library takes it
        {1: "a key that is not a string"},
        [1.5, None, True, [], {}],
    ],
)
def test_dumps_is_compact_utf8_json_of_the_value(value):
    encoded = wirejson.dumps(value)
    assert encoded == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def test_loads_takes_what_chrome_may_send_and_orjson_refuses():
    assert wirejson.loads(b'{"text":"\\ud800 broken"}') == {"text": "\ud800 broken"}
    assert wirejson.loads('{"a":[1,2.5,"x"]}') == {"a": [1, 2.5, "x"]}
    with pytest.raises(ValueError):
        wirejson.loads(b"{not json")
