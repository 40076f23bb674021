"""Keep-alive comments of SSE streams: one timer for all streams of an interval."""

from twisted.internet.task import Clock

from mcproxy.testing.requests import FakeRequest
from mcproxy.web.sse import KEEPALIVE_SLOTS, KeepAliveTimers, SseStream


class _Request(FakeRequest):
    """A request whose producer is only noted (twisted's stand-in would pull it in a loop)."""

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None


def _open(timers: KeepAliveTimers, keepalive=16.0) -> tuple[SseStream, FakeRequest]:
    request = _Request([b"sse"])
    stream = SseStream(request, timers, keepalive)
    stream.start()
    return stream, request


def _pings(request: FakeRequest) -> int:
    return b"".join(request.written).count(b": keep-alive\n\n")


def _timers(timers: KeepAliveTimers) -> dict[float, int]:
    """The streams each interval's timer keeps alive."""
    return {interval: len(timer) for interval, timer in timers.running.items()}


def test_streams_share_one_timer_and_each_is_kept_alive_one_interval_after_it_opened():
    clock = Clock()
    timers = KeepAliveTimers(clock)
    step = 16.0 / KEEPALIVE_SLOTS
    first, first_request = _open(timers)
    clock.advance(5 * step + step / 2)  # the second opens between two ticks
    second, second_request = _open(timers)
    assert _timers(timers) == {16.0: 2} and len(clock.getDelayedCalls()) == 1
    clock.advance(16.0 - 5 * step - step / 2 - step / 4)
    assert (_pings(first_request), _pings(second_request)) == (0, 0)
    clock.advance(step / 4)  # 16 s after the first opened
    assert (_pings(first_request), _pings(second_request)) == (1, 0)
    clock.advance(5 * step)  # a slot's length short of 16 s after the second opened
    assert (_pings(first_request), _pings(second_request)) == (1, 1)
    first.close()
    clock.advance(16.0)
    clock.advance(16.0)
    assert (_pings(first_request), _pings(second_request)) == (1, 3)
    second.close()
    assert _timers(timers) == {} and not clock.getDelayedCalls()


def test_a_late_timer_comments_once_on_each_stream():
    clock = Clock()
    timers = KeepAliveTimers(clock)
    streams = [_open(timers) for _ in range(3)]
    clock.advance(16.0 * 10)  # one jump over ten intervals: one turn of the timer
    assert [_pings(request) for _, request in streams] == [1, 1, 1]
    for stream, _ in streams:
        stream.close()
    assert _timers(timers) == {}


def test_each_interval_has_its_timer_and_a_closed_or_waiting_stream_gets_no_comment():
    clock = Clock()
    timers = KeepAliveTimers(clock)
    fast, fast_request = _open(timers, 4.0)
    slow, slow_request = _open(timers, 16.0)
    waiting, waiting_request = _open(timers, 4.0)
    waiting.pauseProducing()
    assert _timers(timers) == {4.0: 2, 16.0: 1}
    clock.advance(4.0)
    assert (_pings(fast_request), _pings(slow_request), _pings(waiting_request)) == (1, 0, 0)
    fast.close()
    waiting.close()
    assert _timers(timers) == {16.0: 1}
    clock.advance(12.0)
    assert (_pings(fast_request), _pings(slow_request)) == (1, 1)
    slow.close()
    assert _timers(timers) == {} and not clock.getDelayedCalls()
