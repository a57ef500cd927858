"""Profiled latency: iteration time fitted to a measured profile (`python -m s3exec.profile`), so the
simulator replays the hardware the executor ran on.

The fit is linear in the simulator's own features, for a non-empty iteration::

    time = c0 + c1 * prefill_tokens + c2 * prefill_sq + c3 * decode_tokens + c4 * decode_ctx + overhead_s

(weights per token, causal attention per squared prompt, per decode sequence, attention per cached token).
It is least squares on relative error (each point weighted by 1/measured time, so short decode steps count
as much as long prefills), with coefficients kept non-negative (a feature whose coefficient would be
negative is dropped and the rest refitted) so time never falls as a batch grows. `overhead_s` adds what a
step of the model runner does not include (scheduling, bookkeeping); it defaults to 0. Swaps cost the
profile's measured seconds per token when it has one, else the GPU preset's host link.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.hardware.models import ModelSpec
from s3sim.latency.base import LatencyModel

FEATURES = ("prefill_tokens", "prefill_sq", "decode_tokens", "decode_ctx")


def load_profile(path) -> tuple[pd.DataFrame, dict]:
    """The profile's table (features and `median_s`) and its JSON sidecar ({} if there is none)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"latency.path: no profile at {str(p)!r}; make one with `python -m s3exec.profile`")
    try:
        table = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ConfigError(f"latency.path: {p} is not a CSV profile ({str(e).splitlines()[0]})") from None
    missing = [c for c in FEATURES + ("median_s",) if c not in table.columns]
    if missing:
        raise ConfigError(f"latency.path: {p} lacks the columns {', '.join(missing)}")
    values = table[list(FEATURES) + ["median_s"]].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any() or (values < 0).any().any() or not (values["median_s"] > 0).all():
        raise ConfigError(f"latency.path: {p} has missing, negative or zero values")
    if len(table) < len(FEATURES) + 1:
        raise ConfigError(f"latency.path: {p} has {len(table)} points; the fit needs at least {len(FEATURES) + 1}")
    side = p.with_suffix(".json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    return values, meta


def fit(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Non-negative coefficients (constant first) minimising the relative error of `x @ c[1:] + c[0]` to `t`."""
    a = np.column_stack([np.ones(len(t)), np.asarray(x, dtype=np.float64)]) / t[:, None]
    keep = np.ones(a.shape[1], dtype=bool)
    while True:
        coef = np.zeros(a.shape[1])
        coef[keep] = np.linalg.lstsq(a[:, keep], np.ones(len(t)), rcond=None)[0]
        if (coef >= 0).all():
            return coef
        keep &= coef > 0


def _predict(coef, x):
    return coef[0] + np.asarray(x, dtype=np.float64) @ coef[1:]


def holdout_error(table: pd.DataFrame, every: int = 4) -> np.ndarray:
    """Relative errors on every `every`-th point when the fit sees only the others."""
    x, t = table[list(FEATURES)].to_numpy(np.float64), table["median_s"].to_numpy(np.float64)
    test = np.arange(len(t)) % every == every - 1
    coef = fit(x[~test], t[~test])
    return np.abs(_predict(coef, x[test]) - t[test]) / t[test]


def fit_report(path) -> str:
    """Coefficients of the fit on all points, and its error on held-out and on all points."""
    table, _ = load_profile(path)
    x, t = table[list(FEATURES)].to_numpy(np.float64), table["median_s"].to_numpy(np.float64)
    coef = fit(x, t)
    err = np.abs(_predict(coef, x) - t) / t
    held = holdout_error(table)
    terms = ", ".join(f"{n}={c:.3g}" for n, c in zip(("const_s",) + FEATURES, coef))
    return (f"fit: {terms}\n"
            f"relative error: held-out (every 4th of {len(t)}, {len(held)} points) mean {held.mean():.1%} max "
            f"{held.max():.1%}; all points in the fit mean {err.mean():.1%} max {err.max():.1%}")


class ProfiledLatency(LatencyModel):
    """Iteration time from a linear fit to measured iterations (see the module doc)."""

    def __init__(self, model: ModelSpec, gpu: GpuSpec, path, overhead_s: float = 0.0) -> None:
        super().__init__(model, gpu)
        if not overhead_s >= 0:
            raise ConfigError(f"latency.overhead_s must be >= 0 seconds, got {overhead_s!r}")
        table, self.meta = load_profile(path)
        self.path = str(path)
        coef = fit(table[list(FEATURES)].to_numpy(np.float64), table["median_s"].to_numpy(np.float64))
        self.coef = coef
        self._c = [float(c) for c in coef]
        self._c[0] += float(overhead_s)
        s = self.meta.get("swap_s_per_token")
        self.swap_s_per_token = float(s) if isinstance(s, (int, float)) and s >= 0 else None

    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        args = (prefill_tokens, prefill_sq, decode_tokens, decode_ctx)
        c0, c1, c2, c3, c4 = self._c
        if all(type(a) in (int, float) for a in args):
            p, sq, d, ctx = (float(a) for a in args)
            if min(p, sq, d, ctx) < 0:
                raise ConfigError(f"iteration_time: arguments must be >= 0, got {args!r}")
            return 0.0 if p + d <= 0 else c0 + c1 * p + c2 * sq + c3 * d + c4 * ctx
        p, sq, d, ctx = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
        if min(v.min(initial=0.0) for v in (p, sq, d, ctx)) < 0:
            raise ConfigError("iteration_time: arguments must be >= 0 everywhere")
        t = np.where(p + d > 0, c0 + c1 * p + c2 * sq + c3 * d + c4 * ctx, 0.0)
        return float(t) if t.ndim == 0 else t

    def swap_time(self, n_tokens):
        if self.swap_s_per_token is None:
            return super().swap_time(n_tokens)
        n = np.asarray(n_tokens, dtype=np.float64)
        if np.any(n < 0):
            raise ConfigError(f"swap_time: n_tokens must be >= 0, got {n_tokens!r}")
        t = n * self.swap_s_per_token
        return float(t) if t.ndim == 0 else t
