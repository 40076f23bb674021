"""A stand-in request for unit tests, carrying the state the proxy keeps on real requests."""

from twisted.web.test.requesthelper import DummyRequest

from mcproxy.web.site import RequestState


class FakeRequest(RequestState, DummyRequest):
    """twisted's `DummyRequest` with the proxy's `RequestState` (its declared attributes)."""

    _disconnected = False  # what twisted.web's own requests keep: the client went away
