"""Reading Deferreds that fire without the reactor (a test Clock, in-memory fakes).

Trial's `SynchronousTestCase` already knows how; these are its checks, bound to one
instance so that pytest tests and helpers can use them as plain functions. Each accepts
a Deferred or a coroutine and fails the test with the Deferred's traceback when the
outcome is not the one expected.
"""

from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

_checks = SynchronousTestCase()

success_result_of = _checks.successResultOf
failure_result_of = _checks.failureResultOf
assert_no_result = _checks.assertNoResult


def in_this_thread(fn, *args):
    """A ``run_blocking`` that runs ``fn`` at once (unit tests on a Clock): Deferred[result]."""
    return maybeDeferred(fn, *args)


def outcome_of(deferred, *expected: type[BaseException]):
    """What a fired Deferred (or coroutine) gave: its result, or the exception it failed
    with when that is one of ``expected`` (for fuzzing, where either is right)."""

    def expected_error(failure):
        failure.trap(*expected)
        return failure.value

    return success_result_of(ensureDeferred(deferred).addErrback(expected_error))
