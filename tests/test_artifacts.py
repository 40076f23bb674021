"""The artifact store: per-user files behind MCP resources, on a deterministic clock."""

import base64
import json
import os

import pytest
from twisted.internet.task import Clock

from mcproxy.artifacts.names import split_path
from mcproxy.artifacts.resources import ArtifactResources
from mcproxy.artifacts.store import ArtifactStore
from mcproxy.auth.principal import Principal
from mcproxy.calls import SessionView
from mcproxy.config import ArtifactsConfig, ToolsConfig
from mcproxy.errors import ToolError
from mcproxy.mcp.jsonrpc import RpcError, parse_message
from mcproxy.mcp.protocol import McpServer, McpSession
from mcproxy.testing.deferreds import (
    failure_result_of,
    in_this_thread,
    success_result_of,
)
from mcproxy.testing.fake_tools import FakeToolProvider
from mcproxy.tools.call import Response

ALICE = Principal("alice", frozenset({"tools:*"}))
MALLORY = Principal("mallory/../alice", frozenset({"tools:*"}))
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture
def store(tmp_path, clock):
    return ArtifactStore(str(tmp_path), ArtifactsConfig(max_bytes=10_000, ttl=3600), clock)


def resources(store: ArtifactStore) -> ArtifactResources:
    """The store's MCP view, reading files in this thread."""
    return ArtifactResources(store, in_this_thread)


def listed(store: ArtifactStore, principal) -> list:
    """``resources/list`` of ``principal``."""
    return success_result_of(resources(store).list_resources(principal))


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, names in os.walk(path) for f in names)


def test_save_list_read_round_trip(store, tmp_path, clock):
    shot = success_result_of(store.save("alice", "shots/home.png", PNG))
    clock.advance(1)  # listed oldest first
    notes = success_result_of(store.save("alice", "notes.md", "héllo\n".encode()))
    assert shot.uri == f"mcproxy://artifacts/{shot.id}" and len(shot.id) == 32
    assert (shot.name, shot.size, shot.mime_type) == ("shots/home.png", len(PNG), "image/png")

    shown = listed(store, ALICE)
    assert [(r.uri, r.name, r.mime_type, r.size) for r in shown] == [
        (shot.uri, "shots/home.png", "image/png", len(PNG)),
        (notes.uri, "notes.md", "text/markdown", len("héllo\n".encode())),
    ]
    assert "2023-11-14T22:13:20Z" in shown[0].description  # when it was saved

    blob = success_result_of(resources(store).read_resource(ALICE, shot.uri)).contents[0]
    assert base64.b64decode(blob.blob) == PNG and blob.mime_type == "image/png" and blob.uri == shot.uri
    text = success_result_of(resources(store).read_resource(ALICE, notes.uri)).contents[0]
    assert text.text == "héllo\n" and text.mime_type == "text/markdown"

    # The file lies in the user's own directory, named as asked; nothing is left in tmp/.
    user_dirs = os.listdir(tmp_path / "artifacts")
    assert len(user_dirs) == 1
    assert files_under(tmp_path / "artifacts" / user_dirs[0]) == sorted(
        ["files/notes.md", "files/shots/home.png", f"meta/{notes.id}.json", f"meta/{shot.id}.json"]
    )


def test_saving_the_same_name_again_replaces_the_artifact(store):
    first = success_result_of(store.save("alice", "shot.png", PNG))
    second = success_result_of(store.save("alice", "./shot.png", PNG[:20]))
    assert [r.uri for r in listed(store, ALICE)] == [second.uri]
    failure_result_of(resources(store).read_resource(ALICE, first.uri), RpcError)
    assert (
        base64.b64decode(success_result_of(resources(store).read_resource(ALICE, second.uri)).contents[0].blob)
        == PNG[:20]
    )


def test_another_user_can_neither_list_nor_read(store):
    secret = success_result_of(store.save("alice", "secret.txt", b"alice's"))
    success_result_of(store.save("mallory/../alice", "mine.txt", b"mallory's"))
    assert [r.name for r in listed(store, MALLORY)] == ["mine.txt"]
    e = failure_result_of(resources(store).read_resource(MALLORY, secret.uri), RpcError)
    # Exactly what an unknown resource gets (protocol.EmptyResources), so nothing leaks.
    assert (e.value.code, e.value.message) == (-32602, f"Resource not found: {secret.uri}")
    assert e.value.data == {"uri": secret.uri}


@pytest.mark.parametrize(
    "uri",
    ["mcproxy://artifacts/", "mcproxy://artifacts/../x", "mcproxy://artifacts/" + "0" * 32, "file:///etc/passwd"],
)
def test_malformed_or_unknown_uris_are_not_found(store, uri):
    e = failure_result_of(resources(store).read_resource(ALICE, uri), RpcError)
    assert e.value.code == -32602 and uri in e.value.message


def test_protocol_layer_answers_not_found_and_lists_only_the_callers_own(store):
    secret = success_result_of(store.save("alice", "a.txt", b"alice's"))
    server = McpServer(FakeToolProvider(Clock()), resources=ArtifactResources(store, in_this_thread))

    hello = {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}

    def answer(principal, method, params):
        session = McpSession(server, principal, SessionView("s1"))
        for rid, (m, p) in enumerate([("initialize", hello), (method, params)]):
            results = []
            message = parse_message(json.dumps({"jsonrpc": "2.0", "id": rid, "method": m, "params": p}))
            session.handle(message, None).addBoth(results.append)
        return results[0]

    read = answer(ALICE, "resources/read", {"uri": secret.uri})["result"]
    assert read["contents"] == [{"uri": secret.uri, "mimeType": "text/plain", "text": "alice's"}]
    assert answer(MALLORY, "resources/list", {})["result"]["resources"] == []
    error = answer(MALLORY, "resources/read", {"uri": secret.uri})["error"]
    assert error == {"code": -32602, "message": f"Resource not found: {secret.uri}", "data": {"uri": secret.uri}}


@pytest.mark.parametrize(
    "file_path, complaint",
    [
        ("../escape.png", '"filePath" \'../escape.png\' goes up with ".."'),
        ("shots/../../escape.png", 'goes up with ".."'),
        ("shots\\..\\..\\escape.png", 'goes up with ".."'),
        ("/etc/passwd", "is an absolute path"),
        ("\\\\server\\share\\x.png", "is an absolute path"),
        ("C:\\Users\\x.png", "is an absolute path"),
        ("~/x.png", "is an absolute path"),
        ("", '"filePath" is empty'),
        ("./", "names no file"),
        ("a\0b.png", "NUL character"),
    ],
)
def test_escaping_names_are_refused(store, tmp_path, file_path, complaint):
    e = failure_result_of(store.save("alice", file_path, PNG), ToolError)
    assert complaint in e.value.message and "relative name like 'shots/home.png'" in e.value.message
    assert files_under(tmp_path) == []


def test_split_path_normalizes_harmless_segments():
    assert split_path("./shots//home.png") == ["shots", "home.png"]
    assert split_path("shots\\home.png") == ["shots", "home.png"]


def test_symlinks_in_the_users_directory_are_not_followed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    success_result_of(store.save("alice", "first.txt", b"x"))
    (user_dir,) = os.listdir(tmp_path / "artifacts")
    files = tmp_path / "artifacts" / user_dir / "files"
    os.symlink(outside, files / "linked")
    os.symlink(outside / "target.txt", files / "leaf.txt")

    e = failure_result_of(store.save("alice", "linked/x.txt", b"escaped"), ToolError)
    assert "symlink" in e.value.message
    assert os.listdir(outside) == []
    # A symlink as the final name is replaced by the file, never written through.
    leaf = success_result_of(store.save("alice", "leaf.txt", b"replaced"))
    assert not os.path.islink(files / "leaf.txt") and not os.path.exists(outside / "target.txt")
    assert success_result_of(resources(store).read_resource(ALICE, leaf.uri)).contents[0].text == "replaced"
    assert os.listdir(tmp_path / "artifacts" / user_dir / "tmp") == []


def test_a_file_swapped_for_a_symlink_is_not_read(store, tmp_path):
    (tmp_path / "secret").write_text("operator's")
    saved = success_result_of(store.save("alice", "a.txt", b"mine"))
    (user_dir,) = os.listdir(tmp_path / "artifacts")
    path = tmp_path / "artifacts" / user_dir / "files" / "a.txt"
    path.unlink()
    os.symlink(tmp_path / "secret", path)
    failure_result_of(resources(store).read_resource(ALICE, saved.uri), RpcError)
    assert listed(store, ALICE) == []


def test_size_limit_aborts_the_writer_and_leaves_no_file(store, tmp_path):
    writer = store.writer("alice", "big/heap.json")
    writer.write(b"x" * 6000)
    with pytest.raises(ToolError) as e:
        writer.write(b"x" * 6000)
    assert "larger than the 10000 bytes" in e.value.message and "artifacts.max_bytes" in e.value.message
    with pytest.raises(ToolError):
        writer.write(b"x")
    writer.abort()  # harmless after the limit already aborted it
    assert files_under(tmp_path) == []
    failure_result_of(store.save("alice", "big.bin", b"y" * 10_001), ToolError)
    assert files_under(tmp_path) == [] and listed(store, ALICE) == []
    exactly = success_result_of(store.save("alice", "ok.bin", b"y" * 10_000))
    assert exactly.size == 10_000


def test_streaming_writer_and_abort(store, tmp_path):
    writer = store.writer("alice", "parts.json", "application/json")
    for chunk in (b'{"snap', b'shot": ', b"1}"):
        writer.write(chunk)
    artifact = success_result_of(writer.finish())
    assert artifact.size == 15 and artifact.mime_type == "application/json"
    assert json.loads(success_result_of(resources(store).read_resource(ALICE, artifact.uri)).contents[0].text) == {
        "snapshot": 1
    }

    abandoned = store.writer("alice", "abandoned.json")
    abandoned.write(b"partial")
    abandoned.abort()
    assert [r.name for r in listed(store, ALICE)] == ["parts.json"]
    (user_dir,) = os.listdir(tmp_path / "artifacts")
    assert not any("abandoned" in f or f.startswith("tmp") for f in files_under(tmp_path / "artifacts" / user_dir))


def test_expiry_by_sweep_and_on_read(store, clock, tmp_path):
    store.start()
    try:
        early = success_result_of(store.save("alice", "early.txt", b"1"))
        clock.advance(1800)
        late = success_result_of(store.save("alice", "late.txt", b"2"))
        clock.advance(1799.5)
        assert [r.name for r in listed(store, ALICE)] == ["early.txt", "late.txt"]
        clock.advance(0.5)  # early expires now; the sweep has not run yet, the read checks itself
        assert [r.name for r in listed(store, ALICE)] == ["late.txt"]
        failure_result_of(resources(store).read_resource(ALICE, early.uri), RpcError)
        assert not any(f.endswith("early.txt") for f in files_under(tmp_path))
        clock.advance(1800)  # the minute sweep deletes late's file without anyone asking
        assert files_under(tmp_path) == []
        failure_result_of(resources(store).read_resource(ALICE, late.uri), RpcError)
    finally:
        store.stop()
    assert not clock.getDelayedCalls()


def test_restart_rebuilds_the_index(tmp_path, clock):
    config = ArtifactsConfig(max_bytes=10_000, ttl=3600)
    first = ArtifactStore(str(tmp_path), config, clock)
    doomed = success_result_of(first.save("bob", "doomed.txt", b"gone"))
    clock.advance(1000)
    kept = success_result_of(first.save("alice", "shots/kept.png", PNG))
    later = success_result_of(first.save("bob", "later.txt", b"stays"))
    unfinished = first.writer("alice", "crashed.json")
    unfinished.write(b"half")  # the process dies here: no finish, no abort

    clock.advance(2700)  # past doomed's expiry, before the others'
    second = ArtifactStore(str(tmp_path), config, clock)
    shown = [(r.uri, r.name, r.size) for r in listed(second, ALICE)]
    assert shown == [(kept.uri, "shots/kept.png", len(PNG))]
    assert base64.b64decode(success_result_of(resources(second).read_resource(ALICE, kept.uri)).contents[0].blob) == PNG
    bob = Principal("bob", frozenset())
    assert [r.uri for r in listed(second, bob)] == [later.uri]
    failure_result_of(resources(second).read_resource(bob, doomed.uri), RpcError)
    leftovers = files_under(tmp_path)
    assert not any("doomed" in f or doomed.id in f or f.split("/")[-2] == "tmp" for f in leftovers), leftovers
    unfinished.abort()


def test_add_artifact_links_the_resource_for_new_protocols_only(store):
    artifact = success_result_of(store.save("alice", "shot.png", PNG))
    response = Response().add("Took a screenshot.").add_artifact(artifact, "Screenshot")
    text = (
        f"Took a screenshot.\nScreenshot saved as {artifact.uri} (shot.png, {len(PNG)} bytes); "
        "read it with resources/read."
    )
    new = response.to_result("2025-06-18")
    assert new["content"][0]["text"] == text
    link = new["content"][1]
    assert (link["type"], link["uri"], link["name"], link["mimeType"], link["size"]) == (
        "resource_link",
        artifact.uri,
        "shot.png",
        "image/png",
        len(PNG),
    )
    old = response.to_result("2024-11-05")
    assert [c["type"] for c in old["content"]] == ["text"] and old["content"][0]["text"] == text


def quota_store(tmp_path, clock, **limits):
    config = ArtifactsConfig(max_bytes=10_000, ttl=3600, **limits)
    return ArtifactStore(str(tmp_path), config, clock)


def test_files_per_user_quota_is_checked_before_writing(tmp_path, clock):
    store = quota_store(tmp_path, clock, max_files_per_user=2)
    success_result_of(store.save("alice", "one.txt", b"1"))
    pending = store.writer("alice", "two.txt")  # unfinished files count too
    with pytest.raises(ToolError) as e:
        store.writer("alice", "three.txt")
    assert "already keep 2 saved files" in e.value.message and "artifacts.max_files_per_user = 2" in e.value.message
    assert not any("three" in f for f in files_under(tmp_path))
    pending.abort()
    success_result_of(store.save("alice", "two.txt", b"2"))
    success_result_of(store.save("alice", "one.txt", b"again"))  # saving over a name takes no new place
    success_result_of(store.save("bob", "one.txt", b"bob's own quota"))
    failure_result_of(store.save("alice", "three.txt", b"3"), ToolError)
    clock.advance(3600)  # expired files free their place at once, sweep or not
    success_result_of(store.save("alice", "three.txt", b"3"))


def test_bytes_per_user_quota_counts_every_file_and_every_writer(tmp_path, clock):
    store = quota_store(tmp_path, clock, max_bytes_per_user=1000)
    success_result_of(store.save("alice", "a.bin", b"a" * 600))
    first, second = store.writer("alice", "b.bin"), store.writer("alice", "c.bin")
    first.write(b"b" * 300)
    with pytest.raises(ToolError) as e:
        second.write(b"c" * 101)  # 600 saved + 300 being written + 101 > 1000
    assert '"c.bin" was not saved' in e.value.message and "artifacts.max_bytes_per_user" in e.value.message
    assert "900 in use" in e.value.message
    first.write(b"b" * 100)
    success_result_of(first.finish())
    with pytest.raises(ToolError):
        store.writer("alice", "d.bin")  # full: refused before anything is written
    success_result_of(store.save("alice", "a.bin", b"a" * 100))  # replacing a file counts its new size only
    assert sorted(f.rsplit("/", 1)[-1] for f in files_under(tmp_path) if "/files/" in f) == ["a.bin", "b.bin"]


@pytest.mark.parametrize(
    "file_path, complaint",
    [
        ("a/" * 1_000_000 + "x.txt", "more than the 1024 allowed"),
        ("a/" * 16 + "x.txt", "17 segments, more than the 16 allowed"),
        ("é" * 200 + ".txt", "longer than 255 bytes"),
    ],
)
def test_long_or_deep_names_are_refused_before_any_directory_is_made(store, tmp_path, file_path, complaint):
    with pytest.raises(ToolError) as e:
        store.writer("alice", file_path)
    assert complaint in e.value.message
    assert not os.listdir(tmp_path / "artifacts")


def test_directories_left_empty_are_removed(store, clock, tmp_path):
    store.start()
    try:
        success_result_of(store.save("alice", "keep/deep/er/one.txt", b"1"))
        success_result_of(store.save("alice", "keep/two.txt", b"2"))
        clock.advance(1800)
        success_result_of(store.save("alice", "keep/two.txt", b"2 again"))  # replaced: the directory stays
        clock.advance(1800)  # one.txt expires: deep/er and deep go, keep holds two.txt
        (user_dir,) = os.listdir(tmp_path / "artifacts")
        files = tmp_path / "artifacts" / user_dir / "files"
        assert [d for d, _, _ in os.walk(files)] == [str(files), str(files / "keep")]
        clock.advance(1800)
        assert os.listdir(files) == []
    finally:
        store.stop()


def test_resources_need_a_credential_that_may_call_a_tool(store):
    from mcproxy.tools.registry import ToolRegistry

    saved = success_result_of(store.save("alice", "a.txt", b"alice's"))

    async def no_browser(user_id):
        raise AssertionError("no tool runs here")

    server = McpServer(
        ToolRegistry(no_browser, ToolsConfig(), Clock()), resources=ArtifactResources(store, in_this_thread)
    )
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}

    def answer(principal, method, params):
        session = McpSession(server, principal, SessionView("s1"))
        results = []
        for rid, (m, p) in enumerate([("initialize", hello), (method, params)]):
            message = parse_message(json.dumps({"jsonrpc": "2.0", "id": rid, "method": m, "params": p}))
            session.handle(message, None).addBoth(results.append)
        return results[-1]

    metrics_only = Principal("alice", frozenset({"metrics"}))
    assert answer(metrics_only, "resources/list", {})["result"]["resources"] == []
    error = answer(metrics_only, "resources/read", {"uri": saved.uri})["error"]
    assert error == {"code": -32602, "message": f"Resource not found: {saved.uri}", "data": {"uri": saved.uri}}
    one_tool = Principal("alice", frozenset({"tools:take_screenshot"}))
    assert [r["uri"] for r in answer(one_tool, "resources/list", {})["result"]["resources"]] == [saved.uri]
    assert answer(one_tool, "resources/read", {"uri": saved.uri})["result"]["contents"][0]["text"] == "alice's"
    denied = Principal("alice", frozenset({"tools:*", "!tools:*"}))
    assert answer(denied, "resources/list", {})["result"]["resources"] == []
