"""The artifact index of a cluster against a real Redis, and the internal route that hands a
held file to another process over real loopback sockets. Two "processes" here are two
artifact stores with node ids n1 and n2, each with its own index on one key prefix (the
test's own). Time is a Clock: records expire by the times they carry.
"""

import os

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from mcproxy.artifacts.resources import ArtifactResources
from mcproxy.artifacts.store import ArtifactStore
from mcproxy.auth.principal import Principal
from mcproxy.cluster import artifacts
from mcproxy.cluster.artifacts import HeldArtifacts, RedisArtifactIndex
from mcproxy.cluster.envelope import HEADER, Envelope
from mcproxy.cluster.forward import Forwarder
from mcproxy.config import ArtifactsConfig, ConfigError
from mcproxy.errors import ToolError
from mcproxy.mcp.jsonrpc import RpcError
from mcproxy.testing.coordination import open_unreachable_control
from mcproxy.testing.deferreds import in_this_thread
from mcproxy.web.routes import Area, Router
from mcproxy.web.site import ProxySite

SECRET = b"s" * 32
TTL = 3600.0
ALICE = Principal("alice", frozenset({"tools:*"}))
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


class Node:
    """One process's artifacts: its store, with a Redis index on ``control``."""

    def __init__(self, reactor, clock, control, root, node_id: str, **artifacts):
        config = ArtifactsConfig(max_bytes=10_000, ttl=TTL, **artifacts)
        self.node_id = node_id
        self.forwarder = Forwarder(reactor, Envelope(SECRET, node_id, reactor))
        self.index = RedisArtifactIndex(clock, self.forwarder, max_bytes=config.max_bytes)
        self.index.control = control
        self.store = ArtifactStore(str(root / node_id), config, clock, node_id=node_id)
        self.store.index = self.index
        self.resources = ArtifactResources(self.store, in_this_thread)

    def files(self) -> list[str]:
        root = self.store._root
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)


@pytest_twisted.async_yield_fixture()
async def nodes(reactor, clock, control, tmp_path):
    made = [Node(reactor, clock, control, tmp_path, node_id) for node_id in ("n1", "n2")]
    yield made
    for node in made:
        await node.forwarder.close()


@pytest_twisted.ensureDeferred
async def test_an_artifact_saved_by_one_process_is_listed_and_found_by_the_other(nodes, control):
    n1, n2 = nodes
    shot = await n1.store.save("alice", "shots/home.png", PNG)
    assert shot.holder == "n1"
    assert await n2.index.listed("alice") == [shot]
    assert await n2.index.find("alice", shot.uri) == shot
    assert await n2.index.find("bob", shot.uri) is None and await n2.index.listed("bob") == []
    assert await n2.index.find("alice", shot.uri + "0") is None
    listed = await n2.resources.list_resources(ALICE)
    assert [(r.uri, r.name, r.size) for r in listed] == [(shot.uri, "shots/home.png", len(PNG))]
    # The records go with the user's last artifact, not before.
    for key in (control.key("art", "alice"), control.key("artname", "alice")):
        assert 0 < await control.eval("return redis.call('PTTL', KEYS[1])", [key], []) <= TTL * 1000


@pytest_twisted.ensureDeferred
async def test_a_name_saved_again_elsewhere_replaces_it_and_its_old_holder_deletes_the_file(nodes, clock):
    n1, n2 = nodes
    await n1.store.save("alice", "a.txt", b"first")
    kept = await n1.store.save("alice", "keep.txt", b"kept")
    clock.advance(1)
    again = await n2.store.save("alice", "a.txt", b"second")
    assert await n1.index.listed("alice") == [kept, again]
    assert any(f.endswith("files/a.txt") for f in n1.files())
    await n1.store.sweep()
    assert n1.store.artifacts("alice") == [kept]
    assert not any(f.endswith("a.txt") for f in n1.files()), n1.files()
    assert any(f.endswith("files/a.txt") for f in n2.files())  # the new holder's file stays


@pytest_twisted.ensureDeferred
async def test_expired_artifacts_leave_the_index_with_their_holders_sweep(nodes, clock, control):
    n1, n2 = nodes
    early = await n1.store.save("alice", "early.txt", b"1")
    clock.advance(TTL / 2)
    late = await n1.store.save("alice", "late.txt", b"2")
    clock.advance(TTL / 2)
    assert await n2.index.listed("alice") == [late]
    assert await n2.index.find("alice", early.uri) is None
    await n1.store.sweep()
    assert list(await control.redis.hgetall(control.key("art", "alice"))) == [late.id]
    assert await control.redis.hgetall(control.key("artname", "alice")) == {"late.txt": late.id}


@pytest_twisted.ensureDeferred
async def test_a_save_the_index_cannot_record_fails_and_keeps_no_file(reactor, clock, tmp_path):
    node = Node(reactor, clock, await open_unreachable_control(reactor), tmp_path, "n1")
    try:
        with pytest.raises(ToolError) as e:
            await node.store.save("alice", "shot.png", PNG)
        assert '"shot.png" was not saved: the cluster could not record it' in e.value.message
        assert node.files() == [] and node.store.artifacts("alice") == []
    finally:
        await node.index.control.close()
        await node.forwarder.close()


@pytest_twisted.ensureDeferred
async def test_with_a_shared_dir_each_process_reads_the_others_files_and_clears_only_its_own(
    reactor, clock, control, tmp_path
):
    shared = str(tmp_path / "shared")
    n1, n2 = (Node(reactor, clock, control, tmp_path, node_id, shared_dir=shared) for node_id in ("n1", "n2"))
    try:
        shot = await n1.store.save("alice", "shot.png", PNG)
        assert sorted(os.listdir(shared)) == ["n1", "n2"]
        read = await n2.resources.read_resource(ALICE, shot.uri)  # no process to fetch from: read directly
        assert read.contents[0].blob and read.contents[0].mime_type == "image/png"
        mine, theirs = n1.store.writer("alice", "mine.bin"), n2.store.writer("alice", "theirs.bin")
        restarted = Node(reactor, clock, control, tmp_path, "n1", shared_dir=shared)  # n1 starts again
        assert restarted.store.artifacts("alice") == [shot]
        assert not any("/tmp/" in f for f in n1.files()) and any("/tmp/" in f for f in n2.files())
        mine.abort()
        theirs.abort()
        await restarted.forwarder.close()
        with pytest.raises(ConfigError):
            Node(reactor, clock, control, tmp_path, "../n3", shared_dir=shared)
    finally:
        await n1.forwarder.close()
        await n2.forwarder.close()


@pytest_twisted.async_yield_fixture()
async def holder_url(reactor, nodes, control):
    """n1's internal route on a loopback port, its url in n1's lease as Redis keeps it."""
    n1 = nodes[0]
    envelope = Envelope(SECRET, "n1", reactor)

    async def opened(request, endpoint_class):
        return envelope.open(
            request.getHeader(HEADER) or b"", method=request.method, path=request.uri, body=b""
        ).principal

    router = Router({b"_cluster": Area(HeldArtifacts(n1.store, in_this_thread).routes())}, authenticate=opened)
    port = reactor.listenTCP(
        0, ProxySite(router, max_body_bytes=1024, registry=CollectorRegistry()), interface="127.0.0.1"
    )
    url = f"http://127.0.0.1:{port.getHost().port}"
    await control.redis.hset(control.key("node", "n1"), "url", url)
    await control.redis.expire(control.key("node", "n1"), 60)
    yield url
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_file_held_elsewhere_is_fetched_for_its_user_only_within_max_bytes(
    reactor, nodes, holder_url, control, clock
):
    n1, n2 = nodes
    shot = await n1.store.save("alice", "shot.png", PNG)
    assert await n2.index.fetch(shot) == PNG
    read = await n2.resources.read_resource(ALICE, shot.uri)
    assert read.contents[0].mime_type == "image/png"

    path = b"/_cluster/artifacts/" + shot.id.encode()
    for principal in (Principal("bob", frozenset({"tools:*"})), Principal("alice/../bob", frozenset())):
        status, body = await n2.forwarder.fetch(
            to="n1", url=holder_url, principal=principal, path=path, limit=10_000, timeout=10
        )
        assert status == 404 and b"not_found" in body, (status, body)

    small = RedisArtifactIndex(clock, n2.forwarder, max_bytes=len(PNG) - 1)
    small.control = control
    assert await small.fetch(shot) is None

    await control.redis.delete(control.key("node", "n1"))  # n1's lease is gone
    assert await n2.index.fetch(shot) is None
    with pytest.raises(RpcError) as e:
        await n2.resources.read_resource(ALICE, shot.uri)
    assert e.value.message == f"Resource not found: {shot.uri}"


@pytest_twisted.ensureDeferred
async def test_a_holder_that_never_answers_is_given_up_as_a_gone_one(reactor, nodes, control, monkeypatch):
    from twisted.internet.protocol import Factory, Protocol

    n1, n2 = nodes
    shot = await n1.store.save("alice", "shot.png", PNG)
    silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # paused, cut off
    try:
        await control.redis.hset(control.key("node", "n1"), "url", f"http://127.0.0.1:{silent.getHost().port}")
        await control.redis.expire(control.key("node", "n1"), 60)
        monkeypatch.setattr(artifacts, "FETCH_TIMEOUT", 0.5)
        reading = Deferred.fromCoroutine(n2.index.fetch(shot))
        await deferLater(reactor, 0.2, lambda: None)
        assert not reading.called  # the request went out; no answer comes
        assert await reading.addTimeout(10, reactor) is None
    finally:
        await silent.stopListening()
