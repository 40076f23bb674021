"""Statistics and the printed verdicts every benchmark shares."""

import statistics
import sys

import attrs


def p95(samples: list[float]) -> float:
    """95th percentile (nearest rank)."""
    ordered = sorted(samples)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


@attrs.frozen
class Summary:
    """Median and p95 of a list of timings, in milliseconds."""

    median: float
    p95: float
    count: int

    @classmethod
    def of(cls, samples_ms: list[float]) -> "Summary":
        return cls(statistics.median(samples_ms), p95(samples_ms), len(samples_ms))

    def __str__(self) -> str:
        return f"median {self.median:8.3f} ms   p95 {self.p95:8.3f} ms   (n={self.count})"


@attrs.frozen
class Verdict:
    """One target's outcome: PASS, FAIL, or FAIL because it could not be measured."""

    target: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.target}: {self.detail}"


def say(text: str = "") -> None:
    """Benchmark output goes to stdout, flushed at once (runs take a while)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
