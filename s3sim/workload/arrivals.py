"""Arrival times for a workload: all at once (offline), Poisson, gamma (bursty) or replayed from a trace."""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from s3sim.core.errors import ConfigError

PROCESSES = ("offline", "poisson", "gamma", "trace")
MIN_BURSTINESS = 1e-3


def _positive(value, field: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f"arrival.{field} must be a positive number{what}, got {value!r}")
    return float(value)


def arrival_times(n: int, process: str, rate: float | None = None, burstiness: float = 1.0, seed: int = 0,
                  timestamps=None) -> np.ndarray:
    """`n` arrival times in seconds, non-decreasing, the first at 0 (or at the trace's first stamp).

    offline: all requests at t=0 (a batch job). poisson: exponential gaps of mean 1/rate. gamma: vLLM's
    convention, gaps ~ Gamma(shape=burstiness, scale=1/(rate*burstiness)), so the mean rate stays `rate`
    and burstiness < 1 is burstier (1 = Poisson). For poisson/gamma the first gap is dropped
    (times = cumsum(gaps) - gaps[0]) so the first request arrives at 0 rather than after an idle gap.
    trace: the given `timestamps` (length n, finite, >= 0, non-decreasing); `rate` is ignored.
    Same seed, same times.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"arrival count n must be a non-negative integer, got {n!r}")
    if process not in PROCESSES:
        raise ConfigError(f"arrival.process must be one of {', '.join(PROCESSES)}; got {process!r}")
    if process == "offline":
        return np.zeros(n, dtype=np.float64)
    if process == "trace":
        if timestamps is None:
            raise ConfigError("arrival.process 'trace' needs the workload's timestamps; use a trace workload")
        t = np.asarray(timestamps, dtype=np.float64)
        if t.shape != (n,):
            raise ConfigError(f"arrival timestamps: expected {n} values (one per request), got shape {t.shape}")
        if n and not (np.isfinite(t).all() and t[0] >= 0 and (np.diff(t) >= 0).all()):
            raise ConfigError("arrival timestamps must be finite, >= 0 and non-decreasing")
        return t.copy()
    rate = _positive(rate, "rate", " of requests per second")
    rng = np.random.default_rng(seed)
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n)
    else:
        b = _positive(burstiness, "burstiness", " (1 = Poisson, below 1 burstier)")
        if b < MIN_BURSTINESS:
            raise ConfigError(f"arrival.burstiness must be at least {MIN_BURSTINESS:g} (a coefficient of variation of "
                              f"about {MIN_BURSTINESS ** -0.5:.0f}), got {burstiness!r}: below it the gamma gaps "
                              "underflow to 0 and the requests arrive in one burst whatever the rate")
        gaps = rng.gamma(shape=b, scale=1.0 / (rate * b), size=n)
    if n == 0:
        return gaps
    times = np.cumsum(gaps) - gaps[0]
    return np.maximum.accumulate(np.maximum(times, 0.0))  # guard float rounding at the start
