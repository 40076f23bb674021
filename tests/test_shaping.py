"""Tool results are built in their wire shape by hand: exactly what mcp_types makes of the
same result for every protocol revision, so that a change in either shows here."""

import attrs
import mcp_types
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp_types import methods
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS, is_version_at_least

from mcproxy.mcp.protocol import SERVER_META
from mcproxy.mcp.shaping import shape_result, weight
from mcproxy.testing.fuzz import fuzz_settings
from mcproxy.tools.call import Response, error_result


@attrs.frozen
class _Artifact:
    uri: str
    name: str
    mime_type: str
    size: int


def _meta(version: str) -> dict | None:
    """What the session puts in the ``_meta`` of an answer at ``version``."""
    return SERVER_META if version in MODERN_PROTOCOL_VERSIONS else None


def _by_mcp_types(version: str, response: Response | None, error: str | None = None) -> dict:
    """The result mcp_types makes at ``version`` of the same blocks, built as its models."""
    if response is None:
        result = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=error)], is_error=True)
    else:
        content: list = [mcp_types.TextContent(type="text", text="\n".join(response.lines))]
        content += [
            mcp_types.ImageContent(type="image", data=i["data"], mime_type=i["mimeType"]) for i in response.images
        ]
        if is_version_at_least(version, "2025-06-18"):  # resource links are younger than that
            content += [
                mcp_types.ResourceLink(
                    type="resource_link", uri=k["uri"], name=k["name"], mime_type=k["mimeType"], size=k["size"]
                )
                for k in response.links
            ]
        result = mcp_types.CallToolResult(content=content, structured_content=response.structured)
    dump = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    if _meta(version) is not None:
        dump["_meta"] = _meta(version)
    return methods.serialize_server_result("tools/call", version, dump)


_TEXT = st.text(max_size=20)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=12,
)
_RESPONSES = st.builds(
    Response,
    lines=st.lists(_TEXT, max_size=3),
    images=st.lists(
        st.builds(lambda data, mime: {"type": "image", "data": data, "mimeType": mime}, _TEXT, st.just("image/png")),
        max_size=2,
    ),
    structured=st.none() | st.dictionaries(_TEXT, _JSON, max_size=3),
)
_ARTIFACTS = st.lists(
    st.builds(
        _Artifact, st.just("mcproxy://artifacts/a1"), _TEXT.filter(bool), st.just("image/png"), st.integers(0, 99)
    ),
    max_size=2,
)


@fuzz_settings(100)
@given(response=_RESPONSES, artifacts=_ARTIFACTS)
def test_tool_results_are_what_mcp_types_makes_of_them(response, artifacts):
    for artifact in artifacts:
        response.add_artifact(artifact, "Saved")
    for version in KNOWN_PROTOCOL_VERSIONS:
        ours = shape_result("tools/call", version, response.to_result(version), _meta(version))
        assert ours == _by_mcp_types(version, response), version
        # mcp_types' own sieve for the revision leaves it as it is.
        assert methods.serialize_server_result("tools/call", version, ours) == ours, version


@pytest.mark.parametrize("version", KNOWN_PROTOCOL_VERSIONS)
def test_error_results_are_what_mcp_types_makes_of_them(version):
    ours = shape_result("tools/call", version, error_result("It went wrong."), _meta(version))
    assert ours == _by_mcp_types(version, None, "It went wrong.")


def test_the_shapes_of_each_era():
    """Spelled out, for a reader: links from 2025-06-18 on; the 2026-07-28 envelope."""
    response = Response(["## Pages"], structured={"pages": []})
    response.add_image("aGk=", "image/png")
    response.add_artifact(_Artifact("mcproxy://artifacts/a1", "shot.png", "image/png", 3), "A screenshot")
    text = {"type": "text", "text": "## Pages\nA screenshot saved as mcproxy://artifacts/a1 (shot.png, 3 bytes); "}
    text["text"] += "read it with resources/read."
    image = {"type": "image", "data": "aGk=", "mimeType": "image/png"}
    link = {"type": "resource_link", "uri": "mcproxy://artifacts/a1", "name": "shot.png"}
    link |= {"mimeType": "image/png", "size": 3}
    assert response.to_result("2025-03-26") == {
        "content": [text, image],
        "isError": False,
        "structuredContent": {"pages": []},
    }
    assert shape_result("tools/call", "2026-07-28", response.to_result("2026-07-28"), SERVER_META) == {
        "_meta": SERVER_META,
        "content": [text, image, link],
        "isError": False,
        "resultType": "complete",
        "structuredContent": {"pages": []},
    }


def test_weight_counts_text_images_and_structured_items():
    result = Response(["abc"], structured={"items": [1, 2], "total": 2}).add_image("x" * 10, "image/png").to_result()
    assert weight(result) == 3 + 10 + 2 * 64
    contents = [mcp_types.BlobResourceContents(uri="mcproxy://artifacts/a", blob="QUJD", mime_type="image/png")]
    assert weight(mcp_types.ReadResourceResult(contents=contents)) == 4
