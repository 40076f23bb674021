"""Tools that save files (filePath) against a real headless Chromium: results become resources."""

import base64
import json
import os

import pytest
import pytest_twisted

from mcproxy.artifacts.resources import ArtifactResources
from mcproxy.artifacts.store import ArtifactStore
from mcproxy.auth.principal import Principal
from mcproxy.config import ArtifactsConfig
from mcproxy.mcp.jsonrpc import RpcError
from mcproxy.testing.deferreds import failure_result_of, in_this_thread, success_result_of
from mcproxy.testing.tool_calls import failed, make_context, make_registry, ok, text_of

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
ALICE = Principal("alice", frozenset({"tools:*"}))
BOB = Principal("bob", frozenset({"tools:*"}))


@pytest.fixture
def store(tmp_path, reactor):
    return ArtifactStore(str(tmp_path), ArtifactsConfig(), reactor)


def resources(store: ArtifactStore) -> ArtifactResources:
    """The store's MCP view, reading files in this thread."""
    return ArtifactResources(store, in_this_thread)


@pytest.fixture
def tools(reactor, user_browser, store):
    return make_registry(reactor, user_browser, artifacts=store)


async def open_page(tools, context, fixture_site):
    await ok(tools, context, "new_page", url=fixture_site.page("index.html"))
    return context.session.selected_page_id


def saved(result, store, name, mime_type):
    """The one artifact a result announces: checks the text line and the link; (uri, bytes)."""
    (artifact,) = store.artifacts("alice")
    assert artifact.name == name and artifact.mime_type == mime_type
    assert f"saved as {artifact.uri} ({name}, {artifact.size} bytes); read it with resources/read." in text_of(result)
    links = [c for c in result["content"] if c["type"] == "resource_link"]
    assert [(link["uri"], link["name"], link["mimeType"], link["size"]) for link in links] == [
        (artifact.uri, name, mime_type, artifact.size)
    ]
    assert not [c for c in result["content"] if c["type"] == "image"]
    contents = success_result_of(resources(store).read_resource(ALICE, artifact.uri)).contents[0]
    data = contents.text.encode() if hasattr(contents, "text") else base64.b64decode(contents.blob)
    assert len(data) == artifact.size
    return artifact.uri, data


@pytest_twisted.ensureDeferred
async def test_screenshot_to_file_is_a_png_resource_of_its_owner_only(tools, store, fixture_site):
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    result = await ok(tools, context, "take_screenshot", pageId=page_id, filePath="shots/home.png")
    assert text_of(result).startswith("Took a screenshot of the current page's viewport.\nScreenshot saved as ")
    uri, data = saved(result, store, "shots/home.png", "image/png")
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert [r.uri for r in success_result_of(resources(store).list_resources(ALICE))] == [uri]
    assert success_result_of(resources(store).list_resources(BOB)) == []
    refused = failure_result_of(resources(store).read_resource(BOB, uri), RpcError)
    assert "Resource not found" in refused.value.message


@pytest_twisted.ensureDeferred
async def test_jpeg_screenshot_of_the_full_page_to_file(tools, store, fixture_site):
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    result = await ok(
        tools, context, "take_screenshot", pageId=page_id, format="jpeg", quality=50, fullPage=True, filePath="full.jpg"
    )
    assert text_of(result).startswith("Took a screenshot of the full current page.\n")
    _, data = saved(result, store, "full.jpg", "image/jpeg")
    assert data.startswith(JPEG_SOI)


@pytest_twisted.ensureDeferred
async def test_snapshot_to_file_is_a_text_resource(tools, store, fixture_site):
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    result = await ok(tools, context, "take_snapshot", pageId=page_id, filePath="snapshots/home.txt")
    assert text_of(result).startswith("Snapshot saved as mcproxy://artifacts/")
    assert "## Latest page snapshot" not in text_of(result)
    _, data = saved(result, store, "snapshots/home.txt", "text/plain")
    text = data.decode()
    assert 'RootWebArea "mcproxy test page"' in text and 'button "Submit"' in text and "uid=" in text
    # The uids of the saved snapshot are the live ones: a click on one works.
    submit = text.split('button "Submit"')[0].rsplit("uid=", 1)[1].strip()
    await ok(tools, context, "click", pageId=page_id, uid=submit)


@pytest_twisted.ensureDeferred
async def test_script_result_to_file_is_a_json_resource(tools, store, fixture_site):
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    function = "() => ({title: document.title, n: 42})"
    result = await ok(tools, context, "evaluate_script", pageId=page_id, function=function, filePath="out/result.json")
    assert text_of(result).startswith("The result of the script (run on page) saved as mcproxy://artifacts/")
    _, data = saved(result, store, "out/result.json", "application/json")
    assert json.loads(data) == {"title": "mcproxy test page", "n": 42}
    refused = await failed(tools, context, "evaluate_script", pageId=page_id, sourcePath="/etc/passwd")
    assert '"sourcePath" would name a file on this server' in refused


@pytest_twisted.ensureDeferred
async def test_heap_snapshot_is_streamed_to_a_json_resource(tools, store, fixture_site):
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    result = await ok(tools, context, "take_heapsnapshot", pageId=page_id, filePath="heap/home.heapsnapshot")
    assert text_of(result).startswith("Heap snapshot saved as mcproxy://artifacts/")
    _, data = saved(result, store, "heap/home.heapsnapshot", "application/json")
    heap = json.loads(data)
    assert "snapshot" in heap and heap["snapshot"]["node_count"] > 100 and heap["strings"]


@pytest_twisted.ensureDeferred
async def test_heap_snapshot_over_the_size_limit_leaves_nothing(reactor, user_browser, tmp_path, fixture_site):
    store = ArtifactStore(str(tmp_path), ArtifactsConfig(max_bytes=50_000), reactor)
    tools = make_registry(reactor, user_browser, artifacts=store)
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    message = await failed(tools, context, "take_heapsnapshot", pageId=page_id, filePath="heap.heapsnapshot")
    assert "larger than the 50000 bytes" in message and "artifacts.max_bytes" in message
    assert store.artifacts("alice") == []
    assert [f for _, _, files in os.walk(tmp_path) for f in files] == []
    # The page still answers afterwards (the snapshot's late chunks went nowhere).
    result = await ok(tools, context, "take_screenshot", pageId=page_id, filePath="after.png")
    assert saved(result, store, "after.png", "image/png")[1].startswith(PNG_SIGNATURE)


@pytest_twisted.ensureDeferred
async def test_paths_that_escape_are_refused_before_any_work(tools, store, tmp_path, fixture_site):
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    for tool, path in [
        ("take_screenshot", "../../etc/x.png"),
        ("take_snapshot", "/home/user/snap.txt"),
        ("take_heapsnapshot", "heap/../../../x.heapsnapshot"),
    ]:
        message = await failed(tools, context, tool, pageId=page_id, filePath=path)
        assert "give a relative name like 'shots/home.png'" in message, message
    assert store.artifacts("alice") == []
    assert [f for _, _, files in os.walk(tmp_path) for f in files] == []


@pytest_twisted.ensureDeferred
async def test_file_path_needs_an_artifact_store_and_heap_snapshot_needs_a_path(reactor, user_browser, fixture_site):
    tools = make_registry(reactor, user_browser)
    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    message = await failed(tools, context, "take_screenshot", pageId=page_id, filePath="a.png")
    assert "does not keep files" in message and "without it" in message
    message = await failed(tools, context, "take_heapsnapshot", pageId=page_id)
    assert "filePath" in message
    # Without filePath the screenshot is still inline.
    result = await ok(tools, context, "take_screenshot", pageId=page_id)
    assert base64.b64decode(result["content"][1]["data"]).startswith(PNG_SIGNATURE)


@pytest_twisted.ensureDeferred
async def test_a_screenshot_too_big_to_return_inline_is_saved_as_a_file(tools, store):
    """As chrome-devtools-mcp does past 2 MB: the image becomes a file, the answer links it."""
    from mcproxy.tools.debugging import INLINE_IMAGE_BYTES

    context = make_context()
    noisy = (
        "data:text/html,<canvas id=c width=1600 height=1600></canvas><script>"
        "const c = document.getElementById('c').getContext('2d'), d = c.createImageData(1600, 1600);"
        "for (let i = 0; i < d.data.length; i++) d.data[i] = i % 4 == 3 ? 255 : Math.random() * 256;"
        "c.putImageData(d, 0, 0);</script>"
    )
    await ok(tools, context, "new_page", url=noisy)
    result = await ok(tools, context, "take_screenshot", pageId=context.session.selected_page_id, fullPage=True)
    assert "too big to return inline, so it was saved as a file" in text_of(result)
    (artifact,) = store.artifacts("alice")
    assert artifact.size > INLINE_IMAGE_BYTES and artifact.name.startswith("screenshots/screenshot-")
    assert not [c for c in result["content"] if c["type"] == "image"]
    assert [c["uri"] for c in result["content"] if c["type"] == "resource_link"] == [artifact.uri]


@pytest_twisted.ensureDeferred
async def test_a_script_result_too_big_to_return_inline_stays_in_the_page(tools, store, fixture_site):
    from mcproxy.tools.debugging import INLINE_RESULT_CHARS

    context = make_context()
    page_id = await open_page(tools, context, fixture_site)
    big = f"() => 'x'.repeat({INLINE_RESULT_CHARS + 10})"
    text = await failed(tools, context, "evaluate_script", pageId=page_id, function=big)
    assert f"{INLINE_RESULT_CHARS + 12} characters of JSON" in text and '"filePath"' in text
    just_fits = f"() => 'x'.repeat({INLINE_RESULT_CHARS - 2})"
    assert "x" * 100 in text_of(await ok(tools, context, "evaluate_script", pageId=page_id, function=just_fits))
    await ok(tools, context, "evaluate_script", pageId=page_id, function=big, filePath="big.json")
    (artifact,) = store.artifacts("alice")
    assert artifact.size == INLINE_RESULT_CHARS + 12
