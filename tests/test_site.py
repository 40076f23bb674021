"""The HTTP front door: request ids, body limits, JSON errors, never HTML."""

import json

import pytest_twisted
from twisted.internet.defer import succeed
import treq
from twisted.web import resource
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from mcproxy.web.site import JSONNotFound, ProxySite, Root


class Boom(resource.Resource):
    isLeaf = True

    def render(self, request):
        raise RuntimeError("a bug")


class Echo(resource.Resource):
    isLeaf = True

    def render(self, request):
        return json.dumps({"size": len(request.content.read())}).encode()


@pytest_twisted.async_yield_fixture
async def site_url():
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    root = Root({b"boom": Boom(), b"echo": Echo()}, JSONNotFound())
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(ProxySite(root, max_body_bytes=1000))
    yield f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unknown_path_is_json_404_with_request_id(site_url):
    response = await treq.get(site_url + "/nowhere", persistent=False)
    assert response.code == 404
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    body = await response.json()
    assert body["error"]["code"] == "not_found" and "/nowhere" in body["error"]["message"]
    assert len(response.headers.getRawHeaders("x-request-id")[0]) == 32


@pytest_twisted.ensureDeferred
async def test_client_request_id_is_kept_when_sane(site_url):
    response = await treq.get(site_url + "/x", headers={"X-Request-Id": "abc-123"}, persistent=False)
    assert response.headers.getRawHeaders("x-request-id") == ["abc-123"]
    await response.content()
    response = await treq.get(site_url + "/x", headers={"X-Request-Id": "bad id\x01"}, persistent=False)
    assert response.headers.getRawHeaders("x-request-id") != ["bad id\x01"]
    await response.content()


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_413_json(site_url):
    response = await treq.post(site_url + "/echo", data=b"x" * 5000, persistent=False)
    assert response.code == 413
    body = await response.json()
    assert body["error"]["code"] == "payload_too_large"


@pytest_twisted.ensureDeferred
async def test_body_within_limit_is_delivered(site_url):
    response = await treq.post(site_url + "/echo", data=b"x" * 1000, persistent=False)
    assert response.code == 200
    assert (await response.json()) == {"size": 1000}


@pytest_twisted.ensureDeferred
async def test_chunked_oversized_body_is_413(site_url):
    response = await treq.post(site_url + "/echo", data=_Producer([b"y" * 600, b"y" * 600]), persistent=False)
    assert response.code == 413


@pytest_twisted.ensureDeferred
async def test_bug_in_resource_is_json_500_without_traceback(site_url):
    response = await treq.get(site_url + "/boom", persistent=False)
    assert response.code == 500
    text = (await response.content()).decode()
    assert "Traceback" not in text and "<html" not in text.lower()
    assert json.loads(text)["error"]["code"] == "internal_error"


@implementer(IBodyProducer)
class _Producer:
    """A body producer of unknown length, so the request is sent chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, parts):
        self._parts = parts

    def startProducing(self, consumer):
        for part in self._parts:
            consumer.write(part)
        return succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass
