"""Example counts for the hypothesis fuzzers: the usual ones for ``make test``, scaled up
for ``make fuzz``.

Every fuzz test takes its settings from `fuzz_settings`, which multiplies its usual example
count by ``MCPROXY_FUZZ_SCALE`` (default 1), marks it ``fuzz`` (so ``pytest -m fuzz`` finds
them all) and counts the cases it really runs, so that a run can say how many it ran
(tests/conftest.py prints `cases_run` at the end).
"""

import functools
import os

import pytest
from hypothesis import settings

SCALE_VARIABLE = "MCPROXY_FUZZ_SCALE"

_counted = {"cases": 0}


def scale(environ=os.environ) -> float:
    """The multiplier ``MCPROXY_FUZZ_SCALE`` sets (1 when unset)."""
    raw = environ.get(SCALE_VARIABLE, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{SCALE_VARIABLE} must be a positive number (it multiplies example counts), got {raw!r}")
    return value


def examples(usual: int, environ=os.environ) -> int:
    """How many examples a fuzzer that usually runs ``usual`` runs now."""
    return max(1, round(usual * scale(environ)))


def cases_run() -> int:
    """Test cases run so far by the tests `fuzz_settings` decorated."""
    return _counted["cases"]


def fuzz_settings(usual: int, **options):
    """Decorate a ``@given`` test (in place of ``@settings``): ``usual`` examples times the
    scale, no deadline (a loaded machine is not a bug), ``options`` as for ``settings``."""
    chosen = settings(max_examples=examples(usual), deadline=None, **options)

    def decorate(test):
        handle = getattr(test, "hypothesis", None)
        if handle is None:
            raise TypeError(f"fuzz_settings goes above @given; {test.__name__} has no @given under it")
        inner = handle.inner_test

        @functools.wraps(inner)
        def counted(*args, **kwargs):
            _counted["cases"] += 1
            return inner(*args, **kwargs)

        handle.inner_test = counted  # hypothesis's own hook for wrapping the test body
        return pytest.mark.fuzz(chosen(test))

    return decorate
