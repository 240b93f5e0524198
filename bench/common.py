"""Helpers every bench script shares: waiting on a condition, percentiles, the bench's error type.

Nothing here connects to anything; ``bench/pipeline.py``, ``bench/latency.py``, ``bench/timers.py``
and ``bench/peers.py`` import it (the last two through ``bench.pipeline``, which re-exports them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class BenchError(RuntimeError):
    """A measurement could not be made (a timeout, a wrong count): reported in the JSON line."""


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Call ``predicate`` every ``interval`` s until it returns a true value (returned), or raise
    :class:`BenchError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what} (last value {value!r})")
        time.sleep(interval)


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def record_failure(result: dict[str, Any], exc: BaseException, say: Callable[[str], None]) -> None:
    """A bench run that failed: the error goes into its JSON ``result`` and to ``say``; the
    traceback too, unless the failure is a measurement's (:class:`BenchError`) or an interruption."""
    result["error"] = f"{type(exc).__name__}: {exc}"
    say(f"FAILED: {result['error']}")
    if not isinstance(exc, (BenchError, KeyboardInterrupt, SystemExit)):
        import traceback

        traceback.print_exc()
