"""Profiled latency: iteration time read off a measured profile (`python -m s3exec.lab.profile`), so the
simulator replays the hardware the executor ran on.

An iteration's time is split the way its work is, each part predicted the way its measurements behave::

    time = step_factor * (decode(b, c) + prefill(p, sq) - shared) + overhead(b, k)

* ``decode(b, c)``: decode-only iterations of ``b`` sequences with ``c`` tokens of context each (the mean:
  ``decode_ctx / decode_tokens``), interpolated bilinearly in the profile's table. A table, not a formula,
  because measured decode time is not smooth in the batch size: kernels are picked by shape (on the
  2-core CPU, SmolLM2 decoded 3 sequences in 77 ms and 4 in 58 ms). Outside the grid it goes on with the
  slope of the edge cell where that slope rises, and stays at the edge value where it falls.
* ``prefill(p, sq)``: prefill-only iterations, which are compute-bound and close to linear, from a
  non-negative least-squares fit on relative error of ``c0 + c1 p + c2 sq + c3 k`` (per token, causal
  attention per squared prompt, per prompt). The simulator does not pass the number of prompts ``k``; it
  is estimated as ``p^2 / sq``, exact when the prompts are equally long.
* ``shared``: what a mixed iteration pays once rather than twice (the fixed cost of one forward pass): the
  median, over the profile's mixed points, of ``decode + prefill - measured``; the prefill fit's ``c0``
  if the profile has no mixed point. A mixed iteration never takes less than either part alone.
* ``overhead`` and ``step_factor``: what serving adds to a forward pass timed alone. The profiler runs
  the executor on a short workload (`engine_overhead` in the profile's JSON) and measures the engine's
  time outside the forward pass (scheduling, admission, bookkeeping) as a fit per iteration, per decoding
  sequence and per admitted prompt, and how much slower its forward passes are than the table says for
  the same shapes (the median ratio; shapes change every step and the engine's work evicts caches
  between steps, which a grid point repeated back to back does not see). ``latency.overhead_s`` replaces
  both with a constant per iteration.

`fit_report` gives the error on held-out grid points (every 4th point predicted from the others). Swaps
cost the profile's measured seconds per token when it has one, else the GPU preset's host link; a KV
cache grown by copying (`policy=hf`) costs the profile's measured seconds per token copied, and a profile
without that measurement refuses to price it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.hardware.models import ModelSpec
from s3sim.latency.provenance import check_profile
from s3sim.inputs import note, read_csv
from s3sim.latency.base import LatencyModel, check_overhead

FEATURES = ("prefill_tokens", "prefill_sq", "decode_tokens", "decode_ctx")
COLUMNS = FEATURES + ("prompts", "median_s")


def load_profile(path) -> tuple[pd.DataFrame, dict]:
    """The profile's table (features, `prompts` and `median_s`) and its JSON sidecar ({} if there is none)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"latency.path: no profile at {str(p)!r}; make one with `python -m s3exec.lab.profile`")
    note(p.with_suffix(".json"))
    table = read_csv(p, f"latency.path: {p} is not a CSV profile")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"latency.path: {p} lacks the columns {', '.join(missing)}")
    values = table[list(COLUMNS)].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any() or (values < 0).any().any() or not (values["median_s"] > 0).all():
        raise ConfigError(f"latency.path: {p} has missing, negative or zero values")
    kinds = kind_of(values)
    for kind in ("decode", "prefill"):
        if not (kinds == kind).any():
            raise ConfigError(f"latency.path: {p} has no {kind}-only point; profile both decode and prefill")
    if (kinds == "empty").any():
        raise ConfigError(f"latency.path: {p} has a point with neither prefill nor decode tokens (line "
                          f"{int(np.argmax(kinds == 'empty')) + 2})")
    side = p.with_suffix(".json")
    try:
        meta = json.loads(side.read_text()) if side.is_file() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"latency.path: {side} is not valid JSON ({e})") from None
    return values, meta


def kind_of(table: pd.DataFrame) -> np.ndarray:
    """'decode', 'prefill', 'mixed' or 'empty' for each point."""
    p, d = table["prefill_tokens"].to_numpy() > 0, table["decode_tokens"].to_numpy() > 0
    return np.where(p & d, "mixed", np.where(p, "prefill", np.where(d, "decode", "empty")))


def nonneg_lstsq(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares `a @ c ~ y` with no coefficient negative: a column whose coefficient comes out negative
    is dropped (its coefficient 0) and the rest refitted."""
    keep = np.ones(a.shape[1], dtype=bool)
    while True:
        coef = np.zeros(a.shape[1])
        coef[keep] = np.linalg.lstsq(a[:, keep], y, rcond=None)[0]
        if (coef >= 0).all():
            return coef
        keep &= coef > 0


def fit(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Non-negative coefficients (constant first) minimising the relative error of `x @ c[1:] + c[0]` to `t`."""
    a = np.column_stack([np.ones(len(t)), np.asarray(x, dtype=np.float64)]) / t[:, None]
    return nonneg_lstsq(a, np.ones(len(t)))


def _bracket(xs: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the grid cell of each x (the edge cell outside the grid) and x's weight on the cell's right
    end: below 0 or above 1 outside the grid."""
    if len(xs) == 1:
        return np.zeros(x.shape, dtype=np.int64), np.zeros(x.shape)
    i = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2)
    return i, (x - xs[i]) / (xs[i + 1] - xs[i])


def _lerp(lo, hi, w):
    """Linear between `lo` and `hi`; outside the cell it goes on with the cell's slope if that rises, else
    stays at the edge (so a point outside the grid never costs less than a smaller one inside)."""
    rise = np.maximum(hi - lo, 0.0)
    return np.where(w < 0.0, np.maximum(lo + w * rise, 0.0),
                    np.where(w <= 1.0, lo + w * (hi - lo), hi + (w - 1.0) * rise))


class DecodeTable:
    """Decode-only iteration time over (batch size, context per sequence), bilinear in the measured grid."""

    def __init__(self, batch: np.ndarray, ctx_per_seq: np.ndarray, seconds: np.ndarray) -> None:
        self.batches = np.unique(batch).astype(np.float64)
        self.contexts = np.unique(ctx_per_seq).astype(np.float64)
        grid = np.empty((len(self.batches), len(self.contexts)))
        for r, b in enumerate(self.batches):  # complete each batch row over every context (cells left out)
            row = batch == b
            cs, ts = ctx_per_seq[row], seconds[row]
            order = np.argsort(cs)
            cs, ts = cs[order].astype(np.float64), ts[order]
            i, w = _bracket(cs, self.contexts)
            grid[r] = ts[i] if len(cs) == 1 else _lerp(ts[i], ts[i + 1], w)
        self.grid = grid

    def __call__(self, b, c) -> np.ndarray:
        b, c = np.broadcast_arrays(np.asarray(b, np.float64), np.asarray(c, np.float64))
        g = self.grid
        ib, wb = _bracket(self.batches, b)
        ic, wc = _bracket(self.contexts, c)
        jb, jc = np.minimum(ib + 1, len(self.batches) - 1), np.minimum(ic + 1, len(self.contexts) - 1)
        lo = _lerp(g[ib, ic], g[ib, jc], wc)
        hi = _lerp(g[jb, ic], g[jb, jc], wc)
        return _lerp(lo, hi, wb)


def _prefill_x(p, sq, k):
    return np.stack([p, sq, k], axis=-1)


def prompts_estimate(p, sq):
    """Number of prompts in a prefill of `p` tokens whose squared lengths sum to `sq` (exact if equal)."""
    return np.where(sq > 0, p * p / np.where(sq > 0, sq, 1.0), 0.0)


@dataclass
class ProfiledConfig:
    name: str = "profiled"
    path: Optional[str] = None  # a profile CSV written by `python -m s3exec.lab.profile`
    overhead_s: Optional[float] = None  # seconds per iteration; None: the engine overhead the profiler measured

    def __post_init__(self):
        if not self.path:
            raise ConfigError("latency.path must name a profile CSV (python -m s3exec.lab.profile writes one)")


class ProfiledLatency(LatencyModel):
    """Iteration time from a measured profile (see the module doc)."""

    name = "profiled"
    Config = ProfiledConfig

    @classmethod
    def from_config(cls, conf: ProfiledConfig, model, gpu, num_gpus: int = 1) -> "ProfiledLatency":
        if num_gpus != 1:
            raise ConfigError(f"latency=profiled reads a profile of one device and cannot price gpu.count={num_gpus} "
                              f"(it has no communication term); use latency=roofline or latency=operators")
        lat = cls(model, gpu, conf.path, overhead_s=conf.overhead_s)
        check_profile(lat.meta, model, gpu, "latency=profiled", f"the profile {conf.path}")
        return lat

    def __init__(self, model: ModelSpec, gpu: GpuSpec, path=None, overhead_s: float | None = None,
                 table: pd.DataFrame | None = None, meta: dict | None = None) -> None:
        super().__init__(model, gpu)
        check_overhead(overhead_s, allow_none=True)
        if table is None:
            table, meta = load_profile(path)
        self.path, self.meta = None if path is None else str(path), meta or {}
        kinds = kind_of(table)
        t = table["median_s"].to_numpy(np.float64)
        dec = table[kinds == "decode"]
        self.decode = DecodeTable(dec["decode_tokens"].to_numpy(np.float64),
                                  (dec["decode_ctx"] / dec["decode_tokens"]).to_numpy(np.float64), t[kinds == "decode"])
        pre = table[kinds == "prefill"]
        self.prefill_coef = fit(_prefill_x(*(pre[c].to_numpy(np.float64) for c in
                                             ("prefill_tokens", "prefill_sq", "prompts"))), t[kinds == "prefill"])
        mixed = table[kinds == "mixed"]
        if len(mixed):
            parts = self._decode(mixed["decode_tokens"].to_numpy(np.float64), mixed["decode_ctx"].to_numpy(np.float64))
            parts += self._prefill(mixed["prefill_tokens"].to_numpy(np.float64),
                                   mixed["prefill_sq"].to_numpy(np.float64), mixed["prompts"].to_numpy(np.float64))
            self.shared_s = max(0.0, float(np.median(parts - t[kinds == "mixed"])))
        else:
            self.shared_s = float(self.prefill_coef[0])
        eng = self.meta.get("engine_overhead") or {}
        if overhead_s is not None:
            self.overhead, self.step_factor = (float(overhead_s), 0.0, 0.0), 1.0
        else:
            self.overhead = tuple(max(0.0, float(eng.get(k) or 0.0))
                                  for k in ("per_iteration_s", "per_decode_s", "per_prompt_s"))
            self.step_factor = max(float(eng.get("step_factor") or 1.0), 0.0)
        s = self.meta.get("swap_s_per_token")
        self.swap_s_per_token = float(s) if isinstance(s, (int, float)) and s >= 0 else None
        c = self.meta.get("kv_copy_s_per_token")
        self.copy_s_per_token = float(c) if isinstance(c, (int, float)) and c >= 0 else None

    def _decode(self, d, ctx):
        return np.where(d > 0, self.decode(np.maximum(d, 1.0), ctx / np.maximum(d, 1.0)), 0.0)

    def _prefill(self, p, sq, k):
        c = self.prefill_coef
        return np.where(p > 0, c[0] + _prefill_x(p, sq, k) @ c[1:], 0.0)

    def forward(self, p, sq, d, ctx, k):
        """The model's forward pass alone (no engine terms) for arrays of iterations with `k` prompts."""
        dec, pre = self._decode(d, ctx), self._prefill(p, sq, k)
        return np.where((p > 0) & (d > 0), np.maximum(dec + pre - self.shared_s, np.maximum(dec, pre)), dec + pre)

    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        args = (prefill_tokens, prefill_sq, decode_tokens, decode_ctx)
        p, sq, d, ctx = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
        if min(v.min(initial=0.0) for v in (p, sq, d, ctx)) < 0:
            raise ConfigError(f"iteration_time: arguments must be >= 0, got {args!r}" if p.ndim == 0 else
                              "iteration_time: arguments must be >= 0 everywhere")
        k = prompts_estimate(p, sq)
        t = self.step_factor * self.forward(p, sq, d, ctx, k)
        o = self.overhead
        t = np.where(p + d > 0, t + o[0] + o[1] * d + o[2] * k, 0.0)
        return float(t) if t.ndim == 0 else t

    def swap_time(self, n_tokens):
        if self.swap_s_per_token is None:
            return super().swap_time(n_tokens)
        n = np.asarray(n_tokens, dtype=np.float64)
        if np.any(n < 0):
            raise ConfigError(f"swap_time: n_tokens must be >= 0, got {n_tokens!r}")
        t = n * self.swap_s_per_token
        return float(t) if t.ndim == 0 else t


    def copy_time(self, n_tokens):
        """The profile's measured seconds per KV token copied by concatenation (`kv_copy_s_per_token`)."""
        if self.copy_s_per_token is None:
            raise ConfigError(f"latency.path: the profile {self.path} has no measured KV copy time "
                              f"(kv_copy_s_per_token), which policy=hf needs; profile again with python -m s3exec.lab.profile")
        t = np.asarray(n_tokens, dtype=np.float64) * self.copy_s_per_token
        return float(t) if t.ndim == 0 else t


def forward_time(lat: ProfiledLatency, table: pd.DataFrame) -> np.ndarray:
    """The model's forward-pass time (no engine overhead) at each point of a profile table, with the
    table's own prompt counts."""
    return lat.forward(*(table[c].to_numpy(np.float64) for c in FEATURES + ("prompts",)))


def holdout_error(table: pd.DataFrame, every: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Relative errors on every `every`-th point, and their kinds, when the model sees only the others."""
    test = np.arange(len(table)) % every == every - 1
    lat = ProfiledLatency(None, None, table=table[~test].reset_index(drop=True))
    t = table["median_s"].to_numpy(np.float64)[test]
    return np.abs(forward_time(lat, table[test]) - t) / t, kind_of(table[test])


def fit_report(path) -> str:
    """What the model is, and its relative error on held-out grid points (per kind) and on all points."""
    table, meta = load_profile(path)
    lat = ProfiledLatency(None, None, table=table, meta=meta)
    t = table["median_s"].to_numpy(np.float64)
    err = np.abs(forward_time(lat, table) - t) / t
    held, kinds = holdout_error(table)
    per = "; ".join(f"{k} {held[kinds == k].mean():.1%} mean, {held[kinds == k].max():.1%} max ({(kinds == k).sum()})"
                    for k in ("decode", "prefill", "mixed") if (kinds == k).any())
    c = lat.prefill_coef
    return (f"decode table {len(lat.decode.batches)} batch sizes x {len(lat.decode.contexts)} contexts; prefill fit "
            f"const={c[0]:.3g} s, per token={c[1]:.3g}, per squared prompt={c[2]:.3g}, per prompt={c[3]:.3g}; "
            f"shared in mixed={lat.shared_s:.3g} s; engine: forward passes x{lat.step_factor:.3f}, overhead "
            f"{lat.overhead[0]:.3g} s/iteration + {lat.overhead[1]:.3g} s/decode + {lat.overhead[2]:.3g} s/prompt\n"
            f"relative error on held-out points (every 4th of {len(t)}, {len(held)} points): mean {held.mean():.1%}, "
            f"max {held.max():.1%}; {per}. On all points (in the model): mean {err.mean():.1%}, max {err.max():.1%}")
