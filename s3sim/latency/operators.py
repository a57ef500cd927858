"""Per-operator iteration latency from an operator profile measured under vLLM on a real GPU.

The profile format is that of the shared runs' `profile/tp<N>/` folders (one decoder layer measured with
`load_format=dummy`, CUDA graphs off):
- `dense.csv` (`layer, tokens, time_us`): the non-attention operators of a layer by the tokens in the batch;
  `embedding` and `final_layernorm` run once per iteration, `layernorm` twice per layer, the rest once per
  layer;
- `attention.csv` (`prefill_chunk, kv_prefill, n_decode, kv_decode, time_us`): one layer's attention for a
  batch of one prefill chunk over a cached prefix together with `n_decode` decodes of context `kv_decode`;
- `per_sequence.csv` (`layer, sequences, time_us`): the LM head and the sampler by the sequences that sample.

An iteration costs the dense operators at its token count, times the layers, plus attention at its shape,
times the layers, plus the per-sequence operators, plus a fixed `overhead_s`. Each curve is interpolated
linearly between measured points and extrapolated along its last segment; attention is interpolated in
all four dimensions at once, because a mixed batch is measurably slower than its prefill and decode parts
timed apart (by about a quarter on the RTX 4090 profile). A batch with several prefill chunks is priced as
its largest chunk together with the decodes, plus each other chunk alone less one kernel's fixed cost (the
profile measures one chunk per batch). Decodes are priced at their mean context.

A mixture-of-experts model's MLP is its fused expert layer, from the profile's `moe.csv` (`s3sim.latency.experts`:
by tokens and the experts they activate) in place of `gate_up_proj`, `act_fn` and `down_proj`. Operators a
profile measures that are not priced here are refused, never dropped; `qk_norm` (Qwen3) is priced once a layer.
"""
from __future__ import annotations

import functools
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.hardware.models import ModelSpec
from s3sim.hardware.network import top_octave
from s3sim.inputs import first_bad_line, read_table
from s3sim.latency.base import LatencyModel, check_overhead
from s3sim.latency.provenance import check_profile

PER_LAYER = {"layernorm": 2, "qkv_proj": 1, "rotary_emb": 1, "o_proj": 1, "gate_up_proj": 1, "act_fn": 1,
             "down_proj": 1}
# per-layer operators only some architectures have: priced where the profile measured them (Qwen3's norms of
# the queries and keys, timed together)
OPTIONAL_PER_LAYER = {"qk_norm": 1}
ONCE = {"embedding": 1, "final_layernorm": 1}
PER_SEQUENCE = ("lm_head", "sampler")
ATTENTION_COLUMNS = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us")


@dataclass
class OperatorsConfig:
    name: str = "operators"
    path: Optional[str] = None  # a profile folder: `profile/` holding `tp<N>/`, or a `tp<N>/` folder itself
    tp: int = 1  # tensor-parallel degree (its `tp<N>` folder)
    overhead_s: float = 0.0  # seconds added to every iteration (what the operators leave out)
    all_reduce: str = "auto"  # tp > 1: the two all-reduces per layer: auto (engine where the GPU preset names a
    # whole-step table, else measured where its table has tp GPUs, else a ring, said to be a fallback), ring over
    # the GPU's interconnect, measured, engine (measured, as the engine ran it: s3sim.hardware.network) or
    # engine:<factor>, link:<GB/s>:<us>, none, or a CSV
    skew: str = "profile"  # uneven decode contexts: profile (its meta.yaml's measured alpha, where it has one) | none
    graph_tokens: int = 512  # gpu.data_parallel > 1: the largest CUDA graph, up to which ranks are padded (0: none)

    def __post_init__(self):
        if not self.path:
            raise ConfigError("latency.path must name an operator profile folder (with dense.csv, attention.csv "
                              "and per_sequence.csv, or tp<N>/ folders holding them)")
        if self.tp < 1:
            raise ConfigError(f"latency.tp must be a positive integer, got {self.tp}")
        check_overhead(self.overhead_s)
        if self.skew not in ("profile", "none"):
            raise ConfigError(f"latency.skew must be profile or none, got {self.skew!r}")
        if self.graph_tokens < 0:
            raise ConfigError(f"latency.graph_tokens must be >= 0 (0: no CUDA graphs), got {self.graph_tokens}")


SHORT_RUN = 12  # decode runs of at most this many steps are priced in plain numbers (`OperatorLatency._short_run`)


class Curve:
    """A measured time by one count, linear between points, 0 at 0; beyond the largest count, its time plus the rest
    at the rate of the top octave of counts (the secant from the first count at or above half the largest, the last
    segment where that octave holds no other count), never less than the largest count's time. The shared profiles
    are measured every 16 tokens up to 2,048, where the last segment is noise (Qwen3-32B's gate_up_proj falls from
    2,655 to 2,629 us): along it, a 14,368-token prefill cost -1.5 s."""

    def __init__(self, x, seconds):
        order = np.argsort(x)
        self.x = np.concatenate(([0.0], np.asarray(x, np.float64)[order]))
        self.y = np.concatenate(([0.0], np.asarray(seconds, np.float64)[order]))
        self._xl, self._yl = self.x.tolist(), self.y.tolist()  # for `at`
        j = self._top = top_octave(self.x)  # where the rate beyond the counts is read from (0 is always a point)
        rising = self._yl[-1] > self._yl[j] and self._xl[-1] > self._xl[j]
        self._slope = (self._yl[-1] - self._yl[j]) / (self._xl[-1] - self._xl[j]) if rising else 0.0

    def __call__(self, x):
        x = np.asarray(x, np.float64)
        xs, ys = self.x, self.y
        beyond = ys[-1] + self._slope * (x - xs[-1])
        return np.where(x > xs[-1], beyond, np.interp(x, xs, ys))

    def at(self, x: float) -> float:
        """One value (a plain number): the same line as `__call__`, without numpy's per-call cost."""
        xs, ys = self._xl, self._yl
        if x > xs[-1]:
            j = self._top
            return ys[j] + self._slope * (x - xs[j]) if self._slope else ys[-1]
        i = min(max(bisect_right(xs, x) - 1, 0), len(xs) - 2)
        if xs[i + 1] == xs[i]:
            return ys[i + 1]
        return ys[i] + (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) * (x - xs[i])

    @staticmethod
    def _linear(xs, ys, x):
        """Linear between the points (xs ascending), along the end segments beyond them."""
        y = np.interp(x, xs, ys)
        lo = ys[0] + (ys[1] - ys[0]) / (xs[1] - xs[0]) * (x - xs[0])
        hi = ys[-1] + (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * (x - xs[-1])
        return np.where(x > xs[-1], hi, np.where(x < xs[0], lo, y))


def _bracket(axis: np.ndarray, x: np.ndarray):
    """Lower index and weight of `x` on `axis` (weights beyond [0, 1] extrapolate the end segments)."""
    i = np.minimum(np.maximum(np.searchsorted(axis, x, side="right") - 1, 0), len(axis) - 2)
    w = (x - axis[i]) / (axis[i + 1] - axis[i])
    return i, w


class AttentionTable:
    """One layer's attention time on the full grid (prefill chunk, prefix, decodes, decode context)."""

    def __init__(self, table: pd.DataFrame, where: str):
        t = table.astype({c: np.float64 for c in ATTENTION_COLUMNS})
        t["s"] = t.time_us * 1e-6
        mixed = t[(t.prefill_chunk > 0) & (t.n_decode > 0)]
        prefill = t[(t.prefill_chunk > 0) & (t.n_decode == 0)].set_index(["prefill_chunk", "kv_prefill"]).s
        decode = t[(t.prefill_chunk == 0) & (t.n_decode > 0)].set_index(["n_decode", "kv_decode"]).s
        if mixed.empty or prefill.empty or decode.empty:
            raise ConfigError(f"{where}: needs prefill-only, decode-only and mixed rows")
        self.c = np.unique(np.concatenate(([0.0], prefill.index.get_level_values(0))))
        self.kp = np.unique(np.concatenate(([0.0], prefill.index.get_level_values(1))))
        self.n = np.unique(np.concatenate(([0.0], decode.index.get_level_values(0))))
        self.kd = np.unique(decode.index.get_level_values(1))
        grid = np.full((len(self.c), len(self.kp), len(self.n), len(self.kd)), np.nan)
        ci = {v: i for i, v in enumerate(self.c)}
        pi = {v: i for i, v in enumerate(self.kp)}
        ni = {v: i for i, v in enumerate(self.n)}
        di = {v: i for i, v in enumerate(self.kd)}
        grid[0, :, 0, :] = 0.0  # nothing to attend
        for (c, kp), s in prefill.items():
            grid[ci[c], pi[kp], 0, :] = s
        for (n, kd), s in decode.items():
            grid[0, :, ni[n], di[kd]] = s
        for c, kp, n, kd, s in mixed[["prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "s"]].itertuples(
                index=False):
            grid[ci[c], pi[kp], ni[n], di[kd]] = s
        # mixed batches beyond the largest measured mixed decode count: add the decode-only difference
        top = int(mixed.n_decode.max())
        for n in self.n[self.n > top]:
            grid[1:, :, ni[n], :] = (grid[1:, :, ni[top], :] + grid[0:1, 0:1, ni[n], :] - grid[0:1, 0:1, ni[top], :])
        grid = self._complete(grid)
        if np.isnan(grid).any():
            raise ConfigError(f"{where}: the attention grid has gaps that no measured line spans "
                              f"({int(np.isnan(grid).sum())} cells)")
        self.grid = grid
        self._axes = [a.tolist() for a in (self.c, self.kp, self.n, self.kd)]  # for `at`
        self._cells = grid.transpose().tolist()  # for `at`: nested lists, the last axis outermost
        self._decode_rows = grid[0, 0].tolist()  # for `decode_at`: decodes alone, by decode count and context
        self.kd_floor = self._axes[3][0]  # the shortest decode context measured (shorter ones are priced at it)
        self.floor = float(prefill.min())  # one kernel's fixed cost

    def _complete(self, grid: np.ndarray) -> np.ndarray:
        """Fill the cells a profile did not measure (a coarse full grid plus scattered extra points leaves
        gaps on the union of their axes) by linear interpolation along one axis at a time, where that line
        holds two measured cells or more: decode context first, then prefix, chunk and decode count. The
        measured cells stay as they are."""
        axes = (self.c, self.kp, self.n, self.kd)
        self.filled = int(np.isnan(grid).sum())
        for _ in range(4):
            if not np.isnan(grid).any():
                break
            for axis in (3, 1, 0, 2):
                moved = np.moveaxis(grid, axis, -1)
                lines = moved.reshape(-1, moved.shape[-1])
                x = axes[axis]
                for line in lines:
                    known = ~np.isnan(line)
                    if known.all() or known.sum() < 2:
                        continue
                    line[~known] = np.maximum(Curve._linear(x[known], line[known], x[~known]), 0.0)
                grid = np.moveaxis(lines.reshape(moved.shape), -1, axis)
        return grid

    _CORNERS = np.array([[(corner >> axis) & 1 for axis in range(4)] for corner in range(16)], dtype=bool)

    def decode_only(self, n: float, kd) -> np.ndarray:
        """Seconds for `n` decodes (no prefill) at each decode context in `kd` (an ascending array): the bilinear
        part of `__call__` that remains when the chunk and prefix are 0 (their weights are then exactly 1 and 0)."""
        if not hasattr(self, "_decode_grid"):
            self._decode_grid = np.ascontiguousarray(self.grid[0, 0])
        g = self._decode_grid
        axis = self._axes[2]
        i = min(max(bisect_right(axis, n) - 1, 0), len(axis) - 2)
        w = (n - axis[i]) / (axis[i + 1] - axis[i])
        kd = np.asarray(kd, np.float64)
        contexts, top = self._axes[3], len(self._axes[3]) - 2
        j = min(max(bisect_right(contexts, kd[0]) - 1, 0), top) if kd.size else -1
        if j >= 0 and j == min(max(bisect_right(contexts, kd[-1]) - 1, 0), top):
            # every context in one segment of the grid (a decode run's usually are): its four cells are numbers,
            # and each element's arithmetic is the one below, with fewer array operations
            v = (kd - contexts[j]) / (contexts[j + 1] - contexts[j])
            u = 1.0 - v
            lo = g.item(i, j) * u + g.item(i, j + 1) * v
            hi = g.item(i + 1, j) * u + g.item(i + 1, j + 1) * v
            return np.maximum(lo * (1.0 - w) + hi * w, 0.0)
        j, v = _bracket(self.kd, kd)
        lo = g[i, j] * (1.0 - v) + g[i, j + 1] * v
        hi = g[i + 1, j] * (1.0 - v) + g[i + 1, j + 1] * v
        return np.maximum(lo * (1.0 - w) + hi * w, 0.0)

    def decode_at(self, n: float, contexts) -> list:
        """`decode_only` in plain numbers, for a short run of contexts: element by element the same arithmetic
        (the same cells, weights and order of operations), without numpy's per-call cost."""
        axis, kd = self._axes[2], self._axes[3]
        i = min(max(bisect_right(axis, n) - 1, 0), len(axis) - 2)
        w = (n - axis[i]) / (axis[i + 1] - axis[i])
        stay = 1.0 - w
        lo_row, hi_row = self._decode_rows[i], self._decode_rows[i + 1]
        top = len(kd) - 2
        out = []
        for x in contexts:
            j = min(max(bisect_right(kd, x) - 1, 0), top)
            v = (x - kd[j]) / (kd[j + 1] - kd[j])
            u = 1.0 - v
            lo = lo_row[j] * u + lo_row[j + 1] * v
            hi = hi_row[j] * u + hi_row[j + 1] * v
            out.append(max(lo * stay + hi * w, 0.0))
        return out

    def at(self, c: float, kp: float, n: float, kd: float) -> float:
        """One batch's seconds (plain numbers): the same multilinear weighting of the 16 cells around it as
        `__call__`, without numpy's per-call cost (the simulator prices most chunked-prefill steps one by one)."""
        a0, a1, a2, a3 = self._axes
        i0 = min(max(bisect_right(a0, c) - 1, 0), len(a0) - 2)
        i1 = min(max(bisect_right(a1, kp) - 1, 0), len(a1) - 2)
        i2 = min(max(bisect_right(a2, n) - 1, 0), len(a2) - 2)
        i3 = min(max(bisect_right(a3, kd) - 1, 0), len(a3) - 2)
        # each axis's corners with a weight other than 0 (a point on a grid line has one): a corner of weight 0
        # adds exactly 0, and a factor of 1 changes no product, so the sum is the same to the last bit
        c0, c1, c2, c3 = (((i, 1.0 - w),) if w == 0.0 else ((i + 1, w),) if w == 1.0 else ((i, 1.0 - w), (i + 1, w))
                          for i, w in ((i0, (c - a0[i0]) / (a0[i0 + 1] - a0[i0])),
                                       (i1, (kp - a1[i1]) / (a1[i1 + 1] - a1[i1])),
                                       (i2, (n - a2[i2]) / (a2[i2 + 1] - a2[i2])),
                                       (i3, (kd - a3[i3]) / (a3[i3 + 1] - a3[i3]))))
        cells = self._cells  # cells[j3][j2][j1][j0] = grid[j0, j1, j2, j3]
        total = 0.0
        for j3, f3 in c3:  # corners in the order of `_CORNERS` (the first axis varies fastest)
            by3 = cells[j3]
            for j2, f2 in c2:
                by2 = by3[j2]
                for j1, f1 in c1:
                    by1 = by2[j1]
                    for j0, f0 in c0:
                        total += f0 * f1 * f2 * f3 * by1[j0]
        return max(total, 0.0)

    def __call__(self, c, kp, n, kd):
        """Seconds for the given batches (numbers or arrays, broadcast together): the 16 grid cells around
        each point, weighted multilinearly (one gather, no loop over corners)."""
        c, kp, n, kd = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (c, kp, n, kd)))
        shape = c.shape
        points = [v.reshape(-1) for v in (c, kp, n, kd)]
        brackets = [_bracket(a, v) for a, v in zip((self.c, self.kp, self.n, self.kd), points)]
        lower = np.stack([i for i, _ in brackets], axis=-1)  # [N, 4]
        w = np.stack([w for _, w in brackets], axis=-1)  # [N, 4]
        at = lower[:, None, :] + self._CORNERS[None]  # [N, 16, 4]
        cells = self.grid[at[..., 0], at[..., 1], at[..., 2], at[..., 3]]  # [N, 16]
        weights = np.where(self._CORNERS[None], w[:, None, :], 1.0 - w[:, None, :]).prod(axis=-1)
        return np.maximum((weights * cells).sum(axis=-1), 0.0).reshape(shape)


def _read(path: Path, columns) -> pd.DataFrame:
    table = read_table(path, "operator profile", columns)
    numeric = [c for c in columns if c != "layer"]
    bad = table[numeric].apply(pd.to_numeric, errors="coerce").isna().any(axis=1)
    if bad.any():
        raise ConfigError(f"operator profile {str(path)!r} line {first_bad_line(bad)}: not a number in "
                          f"{', '.join(numeric)}")
    if table.empty:
        raise ConfigError(f"operator profile {str(path)!r}: no rows")
    if "time_us" in columns:
        bad = ~(pd.to_numeric(table.time_us) >= 0)  # 0: an operator with nothing to do (a FLOP count's profile)
        if bad.any():
            raise ConfigError(f"operator profile {str(path)!r} line {first_bad_line(bad)}: time_us must be >= 0")
    return table


def _curve(table: pd.DataFrame, layer: str, x: str, where: Path) -> Curve:
    rows = table[table.layer == layer]
    if rows.empty:
        raise ConfigError(f"operator profile {str(where)!r}: no rows for operator {layer!r}, which the model needs")
    return Curve(rows[x].to_numpy(np.float64), rows.time_us.to_numpy(np.float64) * 1e-6)


def profile_folder(path, tp: int = 1) -> Path:
    """The folder holding the three CSVs: `path` itself, or its `tp<N>` sub-folder."""
    p = Path(path)
    if (p / f"tp{tp}").is_dir():
        return p / f"tp{tp}"
    if (p / "dense.csv").is_file() and tp == 1:
        return p
    raise ConfigError(f"operator profile {str(p)!r}: no tp{tp}/ folder and no dense.csv in it")


def profile_meta(path) -> dict:
    """The `meta.yaml` of a profile folder (`path`, or the folder above its `tp<N>/`); {} if it has none."""
    import yaml

    p = Path(path)
    for folder in (p, p.parent):
        if (folder / "meta.yaml").is_file():
            try:
                meta = yaml.safe_load((folder / "meta.yaml").read_text())
            except yaml.YAMLError as e:
                raise ConfigError(f"{folder / 'meta.yaml'}: not YAML ({str(e).splitlines()[0]})") from None
            if meta is not None and not isinstance(meta, dict):
                raise ConfigError(f"{folder / 'meta.yaml'}: expected a mapping (gpu, model, tp_degrees, ...), got "
                                  f"{type(meta).__name__} {meta!r:.60}")
            return meta or {}
    return {}


def skew_alpha(meta: dict, tp: int) -> float:
    """The profile's measured share of the gap between a batch's longest and its mean decode context that uneven
    contexts cost (`skew_fit.per_tp.<tp>.alpha_default` of its meta.yaml, fitted there to attention timed over
    batches of unequal contexts: t = t(mean) + alpha (t(longest) - t(mean))); 0 where the profile says it did not
    measure it (`skew_fit.enabled: false`) or has no such entry."""
    fit = meta.get("skew_fit") or {}
    if not isinstance(fit, dict):
        raise ConfigError(f"profile meta.yaml: skew_fit must be a mapping (enabled, per_tp), got {fit!r:.60}")
    if not fit.get("enabled"):
        return 0.0
    per_tp = fit.get("per_tp") or {}
    if not isinstance(per_tp, dict):
        raise ConfigError(f"profile meta.yaml: skew_fit.per_tp must map each TP degree to its fit, got {per_tp!r:.60}")
    entry = per_tp.get(tp) or per_tp.get(str(tp)) or {}
    alpha = entry.get("alpha_default") if isinstance(entry, dict) else None
    if alpha is None:
        return 0.0
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ConfigError(f"profile meta.yaml: skew_fit.per_tp.{tp}.alpha_default must be in [0, 1], got {alpha!r}")
    return float(alpha)


class OperatorLatency(LatencyModel):
    """Iteration time as the sum of measured operators (see the module doc)."""

    name = "operators"
    Config = OperatorsConfig

    def __init__(self, model: ModelSpec, gpu: GpuSpec | None, dense: Curve, attention: AttentionTable,
                 per_sequence: Curve, overhead_s: float = 0.0, source: str = ""):
        self.model, self.gpu = model, gpu
        self.dense, self.attention, self.per_sequence = dense, attention, per_sequence
        self.layers = model.n_layers
        self.overhead_s = float(overhead_s)
        self.source = source
        self.dense_base = dense  # the dense operators without an MoE model's experts (`from_profile` sets both)
        self.experts = None  # an MoE model's expert table, None for a dense model
        self.skew_alpha = 0.0  # uneven decode contexts (see `skew_alpha`); 0: priced at the mean context alone
        self.all_reduce = None  # tensor parallelism's all-reduces (`from_profile` sets it at tp > 1)
        self.logits_gather = None  # and the gathering of its logits' shards

    @classmethod
    def from_config(cls, conf: OperatorsConfig, model, gpu, num_gpus: int = 1) -> "OperatorLatency":
        check_all_reduce_spec(conf.all_reduce)
        if num_gpus != conf.tp:
            raise ConfigError(f"latency=operators prices tensor parallelism from its tp<N> profile: gpu.count="
                              f"{num_gpus} needs latency.tp={num_gpus}")
        all_reduce = gather = None
        if conf.tp > 1:
            if gpu is None:
                raise ConfigError(f"latency.tp={conf.tp} prices its all-reduces over a GPU's interconnect: name the gpu")
            all_reduce = priced_collectives(conf.all_reduce, gpu, conf.tp)
            gather = priced_logits_gather(conf.all_reduce, gpu, conf.tp)
        check_profile(profile_meta(conf.path), model, gpu, "latency=operators", f"the profile {conf.path}")
        return cls.from_profile(conf.path, model, gpu, tp=conf.tp, overhead_s=conf.overhead_s, all_reduce=all_reduce,
                                skew=conf.skew, gather=gather)

    @classmethod
    def from_profile(cls, path, model: ModelSpec, gpu: GpuSpec | None = None, tp: int = 1,
                     overhead_s: float = 0.0, all_reduce=None, skew: str = "profile",
                     gather=None) -> "OperatorLatency":
        """The profile's `tp<tp>` folder. Its operators were timed on one GPU's shard (vLLM profiles each
        tensor-parallel degree that way), so for tp > 1 the two all-reduces of every layer and the one of the
        vocabulary-parallel embedding are added to the dense operators at each token count (`all_reduce` prices
        one, `s3sim.hardware.network`; None: free), and the gathering of the sampled sequences' logits shards
        to the sampler (`gather`, an all-gather; None: free) to the per-sequence operators."""
        if tp > 1 and all_reduce is None:
            raise ConfigError(f"an operator profile at tp{tp} was timed on one GPU's shard: its all-reduces need a "
                              f"price (latency.all_reduce: ring, a measured CSV, or none for ideal scaling)")
        folder = profile_folder(path, tp)
        dense_t = _read(folder / "dense.csv", ("layer", "tokens", "time_us"))
        seq_t = _read(folder / "per_sequence.csv", ("layer", "sequences", "time_us"))
        att_t = _read(folder / "attention.csv", ATTENTION_COLUMNS)
        mlp = ("gate_up_proj", "act_fn", "down_proj")
        experts = None
        if model.n_experts:  # the MLP is the fused expert layer, measured apart (moe.csv)
            from s3sim.latency.experts import ExpertTable
            experts = ExpertTable.from_csv(folder / "moe.csv", model.n_experts, model.experts_per_token)
        required = {op: n for op, n in PER_LAYER.items() if experts is None or op not in mlp}
        known = {*required, *OPTIONAL_PER_LAYER, *ONCE}
        unknown = sorted(set(dense_t.layer) - known)
        if unknown:
            raise ConfigError(f"operator profile {str(folder / 'dense.csv')!r}: operator {unknown[0]!r} is not one the "
                              f"model prices ({', '.join(sorted(known))}): it would be left out of every step")
        per_layer = {**required, **{op: n for op, n in OPTIONAL_PER_LAYER.items() if (dense_t.layer == op).any()}}
        layer = {op: _curve(dense_t, op, "tokens", folder / "dense.csv") for op in (*per_layer, *ONCE)}
        x = np.unique(dense_t.tokens.to_numpy(np.float64))
        total = sum(per_layer[op] * model.n_layers * layer[op](x) for op in per_layer)
        total = total + sum(ONCE[op] * layer[op](x) for op in ONCE)
        if tp > 1:  # after attention and after the MLP of every layer, and after the embedding, of every token
            total = total + (2 * model.n_layers + 1) * all_reduce.time_s(tp, x * model.hidden_size * model.dtype_bytes)
        base = Curve(x, total)  # everything but the experts (a data-parallel group prices those across ranks)
        if experts is not None:  # every decoder layer's experts (Qwen3-MoE: decoder_sparse_step 1)
            total = total + model.n_layers * np.array([experts.seconds(float(v)) for v in x])
        per_seq = [_curve(seq_t, op, "sequences", folder / "per_sequence.csv") for op in PER_SEQUENCE]
        s = np.unique(seq_t.sequences.to_numpy(np.float64))
        sampling = per_seq[0](s) + per_seq[1](s)
        if tp > 1 and gather is not None:  # each rank's logits shard (its part of the vocabulary), gathered
            sampling = sampling + gather.time_s(tp, s * model.vocab_size * model.dtype_bytes)
        lat = cls(model, gpu, Curve(x, total), AttentionTable(att_t, str(folder / "attention.csv")),
                  Curve(s, sampling), overhead_s, source=str(folder))
        lat.dense_base, lat.experts = base, experts
        lat.skew_alpha = skew_alpha(profile_meta(path), tp) if skew == "profile" else 0.0
        lat.kv_shards = min(tp, model.n_kv_heads)  # each GPU holds (and copies) its KV heads' share
        lat.all_reduce = all_reduce if tp > 1 else None  # what prices the collectives (its `source` says how)
        lat.logits_gather = gather if tp > 1 else None
        return lat

    # ---- pricing ------------------------------------------------------------------------------
    def _time(self, tokens, sequences, attention):
        busy = np.asarray(tokens) > 0
        t = self.overhead_s + self.dense(tokens) + self.layers * attention + self.per_sequence(sequences)
        return np.where(busy, t, 0.0)

    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        """The generic shape: one prefill chunk of `prefill_tokens` from an empty prefix, with the decodes at
        their mean context (`batch_time` knows each chunk and prefix)."""
        p, d, ctx = (np.asarray(v, np.float64) for v in (prefill_tokens, decode_tokens, decode_ctx))
        mean_ctx = np.where(d > 0, ctx / np.where(d > 0, d, 1.0), 0.0)
        att = self.attention(p, 0.0, d, np.maximum(mean_ctx, self.attention.kd[0]))
        t = self._time(p + d, d + (p > 0), att)
        return float(t) if t.ndim == 0 else t

    def decode_run(self, decode_tokens, decode_ctx_start, k: int, max_ctx: int = 0) -> np.ndarray:
        n = float(decode_tokens)
        if n <= 0:
            return np.zeros(k, dtype=np.float64)
        if k <= SHORT_RUN:
            return np.array(self._short_run(n, float(decode_ctx_start), k, max_ctx), dtype=np.float64)
        ctx = (float(decode_ctx_start) + np.arange(k, dtype=np.float64) * n) / n
        att = self.attention.decode_only(n, np.maximum(ctx, self.attention.kd[0]))
        if self.skew_alpha and max_ctx and n > 1:  # every context grows by one a step, the longest too
            longest = self.attention.decode_only(n, np.maximum(max_ctx + np.arange(k, dtype=np.float64),
                                                               self.attention.kd[0]))
            att = att + self.skew_alpha * np.maximum(longest - att, 0.0)
        t = self.overhead_s + self.dense.at(n) + self.layers * att + self.per_sequence.at(n)
        return np.asarray(t, dtype=np.float64)  # a new array already

    def _short_run(self, n: float, start: float, k: int, max_ctx: int) -> list:
        """`decode_run`'s k durations in plain numbers (a short run: most runs end within a few steps, where
        numpy's per-call cost is most of the price), each by the same operations in the same order."""
        att_at, floor = self.attention.decode_at, self.attention.kd_floor
        att = att_at(n, [max((start + i * n) / n, floor) for i in range(k)])
        if self.skew_alpha and max_ctx and n > 1:  # every context grows by one a step, the longest too
            longest = att_at(n, [max(max_ctx + float(i), floor) for i in range(k)])
            alpha = self.skew_alpha
            att = [a + alpha * max(m - a, 0.0) for a, m in zip(att, longest)]
        fixed, layers, sampling = self.overhead_s + self.dense.at(n), self.layers, self.per_sequence.at(n)
        return [fixed + layers * a + sampling for a in att]

    def batch_time(self, out, max_ctx: int = 0, experts: bool = True) -> float:
        """One iteration, priced in plain Python numbers (`at`): each prefill chunk with its own prefix, the
        decodes at their mean context (and, with `skew_alpha`, the share of the longest one's extra cost).
        `experts=False` leaves an MoE model's expert layers out (a data-parallel group prices them across
        its ranks)."""
        att_at = self.attention.at
        n = out.decode_n
        mean_ctx = max(out.decode_ctx / n, float(self.attention.kd[0])) if n else 0.0
        if self.skew_alpha and max_ctx and n > 1:
            gap = att_at(0.0, 0.0, float(n), max(float(max_ctx), mean_ctx)) - att_at(0.0, 0.0, float(n), mean_ctx)
            skew = self.skew_alpha * self.layers * max(gap, 0.0)
        else:
            skew = 0.0
        chunks = sorted(zip(out.prefill_lens, out.prefill_prefix), reverse=True)
        if chunks:
            (c, kp), rest = chunks[0], chunks[1:]
            att = att_at(float(c), float(kp), float(n), mean_ctx)
            for c, kp in rest:
                att += att_at(float(c), float(kp), 0.0, mean_ctx) - self.attention.floor
        else:
            att = att_at(0.0, 0.0, float(n), mean_ctx)
        tokens = out.prefill_tokens + n
        if tokens <= 0:
            t = 0.0
        else:
            sampling = n + len(out.prefill) - len(out.partial)
            dense = self.dense if experts else self.dense_base
            t = (self.overhead_s + dense.at(float(tokens)) + self.layers * att
                 + self.per_sequence.at(float(sampling)) + skew)
        if out.transfer_tokens:
            t += self.swap_time(out.transfer_tokens)
        return t

    def swap_time(self, n_tokens):
        if self.gpu is None:
            raise ConfigError("swapping KV needs a GPU's host link: give latency=operators a gpu preset")
        return super().swap_time(n_tokens)


def in_engine_table(gpu: GpuSpec) -> Path | None:
    """The whole-step table the GPU preset names (`in_engine_steps`: a profile folder holding `tp<N>/step.csv`),
    under the shared data folder; None where it names none."""
    from s3sim.inputs import SHARED_DATA_DIR

    if not gpu.in_engine_steps:
        return None
    folder, _, tp = gpu.in_engine_steps
    return SHARED_DATA_DIR / folder / f"tp{tp}" / "step.csv"


@functools.lru_cache(maxsize=None)
def in_engine_factor(gpu: GpuSpec):
    """The `CollectiveFit` of the whole-step table the GPU preset names (`in_engine_steps`: an operator profile
    with a `tp<N>/step.csv`, its model and N), against the all-reduce measured between those GPUs (the preset's
    `measured_all_reduce`). One-line errors where either is missing."""
    from s3sim.hardware.models import get_model
    from s3sim.hardware.network import all_gather_model, preset_measured
    from s3sim.inputs import SHARED_DATA_DIR
    from s3sim.latency.steps import fit_in_engine_factor, read_steps

    if not gpu.in_engine_steps:
        raise ConfigError(f"the {gpu.name} preset names no whole-step table (in_engine_steps) to price collectives "
                          f"as the engine ran them: use {'measured, ' if gpu.measured_all_reduce else ''}ring, "
                          "link:<GB/s>:<us> or none")
    folder, model_name, tp = gpu.in_engine_steps
    profile = SHARED_DATA_DIR / folder
    table = in_engine_table(gpu)
    if not table.is_file():
        raise ConfigError(f"the {gpu.name} preset's in_engine_steps: no step table {str(table)!r} in the shared data")
    measured = preset_measured(gpu)
    if measured is None or tp not in measured.curves:
        raise ConfigError(f"the {gpu.name} preset's in_engine_steps are fitted beside the all-reduce measured between "
                          f"{tp} of its GPUs, and it names no such table (measured_all_reduce)")
    model = get_model(model_name)
    gather = all_gather_model(gpu, tp)
    latency = OperatorLatency.from_profile(profile, model, gpu, tp=tp, all_reduce=measured, gather=gather)
    return fit_in_engine_factor(latency, measured, gather, read_steps(table), model, tp, f"{folder}/tp{tp}/step.csv")


ALL_REDUCE_FORMS = "auto, engine, engine:<factor>, measured, ring, link:<GB/s>:<us>, none, or a CSV path"


def is_engine(spec: str) -> bool:
    """`engine` or `engine:<factor>` (a CSV whose name begins with engine is a CSV)."""
    return spec == "engine" or spec.startswith("engine:")


MAX_ENGINE_FACTOR = 100.0  # collectives in an engine 100 times slower than measured alone: a typo, not a setting


def check_all_reduce_spec(spec: str, flag: str = "latency.all_reduce") -> None:
    """`spec` read before anything else, on every run, one GPU too (where it prices nothing, and a misspelt value
    would pass unread until a sweep reached several), by the parsers that price it; `flag`: its name in errors."""
    from s3sim.hardware.network import LINK_MAX_US, LINK_MIN_GBPS, link_all_reduce

    where = f"{flag}={spec!r}" if flag.startswith("latency.") else f"{flag} {spec!r}"
    if spec in ("auto", "engine", "measured", "ring", "none"):
        return
    if spec.startswith("engine:"):
        try:
            engine_factor(spec)
        except ConfigError:
            raise ConfigError(f"{where}: the factor must be a number > 0 and at most {MAX_ENGINE_FACTOR:g}, e.g. "
                              f"engine:2.31; valid: "
                              f"{ALL_REDUCE_FORMS}") from None
        return
    if spec.startswith("link:"):
        try:
            link_all_reduce(spec)
        except ConfigError:
            raise ConfigError(f"{where}: expected link:<GB/s, finite and at least {LINK_MIN_GBPS:g}>:<us, 0 to "
                              f"{LINK_MAX_US:g}>, e.g. link:16:20") from None
        return
    if not Path(spec).is_file():
        raise ConfigError(f"{where}: no such file, nor one of {ALL_REDUCE_FORMS}")


def engine_factor(spec: str) -> float | None:
    """The factor `engine:<factor>` gives (None for plain `engine`: the one fitted to the preset's step table)."""
    if spec == "engine":
        return None
    try:
        factor = float(spec.split(":", 1)[1])
    except (IndexError, ValueError):
        factor = float("nan")
    if not 0 < factor <= MAX_ENGINE_FACTOR:
        raise ConfigError(f"latency.all_reduce={spec!r}: expected engine or engine:<factor, > 0 and at most "
                          f"{MAX_ENGINE_FACTOR:g}>, e.g. engine:2.5")
    return factor


def in_engine(gpu: GpuSpec, collective, factor: float | None = None):
    """`collective` (a measured table's model: `MeasuredAllReduce`) as the engine ran it: with `factor`, or the
    one fitted to the whole-step table the GPU preset names (None); `collective` itself where it is not a
    measured table (a ring, a link)."""
    from s3sim.hardware.network import InEngineCollective, MeasuredAllReduce

    if not isinstance(collective, MeasuredAllReduce):
        return collective
    if factor is None:
        fit = in_engine_factor(gpu)
        factor, how = fit.factor, f"fitted to {fit.source}"
    else:
        how = "a factor given, not fitted"
    return InEngineCollective(collective, factor, f"{collective.source}, as the engine ran it: its floor plus the "
                                                  f"bytes at 1/{factor:.3g} of its measured bandwidth ({how})")


def priced_collectives(spec: str, gpu: GpuSpec, workers: int):
    """Tensor parallelism's all-reduces between `workers` GPUs as `spec` (`latency.all_reduce`) prices them, for
    every latency model: `engine[:<factor>]`, or `auto` where the GPU preset names a whole-step table and its
    measured table has that many GPUs, is the measured table as the engine ran it; otherwise `all_reduce_model`'s
    reading (`auto`: the measured table where it has that many GPUs, else a ring over the preset's link, its source
    saying it is a fallback); `none`: free, as `NoAllReduce`, which the summary's collectives names."""
    from s3sim.hardware.network import NoAllReduce, all_reduce_model

    factor = engine_collectives(spec, gpu, workers)
    if factor is not False:
        try:
            measured = all_reduce_model("measured", gpu, workers)
        except ConfigError as e:  # named as the user wrote it
            raise ConfigError(str(e).replace("latency.all_reduce=measured", f"latency.all_reduce={spec}")) from None
        return in_engine(gpu, measured, factor)
    return all_reduce_model(spec, gpu, workers) or NoAllReduce()


def priced_logits_gather(spec: str, gpu: GpuSpec, tp: int):
    """The gathering of the logits' shards between `tp` GPUs, priced as `spec` prices the all-reduces: auto,
    engine[:<factor>] and measured the GPU's measured all-gather (as the engine ran it where the all-reduces are),
    a ring where nothing was measured; ring a ring, a link that link; a CSV its all-gather rows where it has them at
    `tp` GPUs, else as measured (the source says which); None (free) where `spec` is none."""
    from s3sim.hardware.network import (MeasuredAllReduce, RingAllGather, all_gather_model, holds_collective,
                                        link_all_reduce)

    if spec == "none":
        return None
    if spec == "ring" and gpu.interconnect_bandwidth:
        return RingAllGather(gpu.interconnect_bandwidth, source=f"all-gather as a ring over {gpu.name}'s interconnect")
    if spec.startswith("link:"):
        return link_all_reduce(spec)
    if spec not in ("auto", "measured", "ring") and not is_engine(spec) and holds_collective(spec, "all_gather"):
        table = MeasuredAllReduce.from_csv(spec, "all_gather")  # a CSV: its all-gathers where it has them at tp
        if tp in table.curves:
            return table
    factor = engine_collectives(spec, gpu, tp)
    gather = all_gather_model(gpu, tp)
    return in_engine(gpu, gather, factor) if factor is not False else gather


def priced_exchanges(spec: str, gpu: GpuSpec, ranks: int):
    """Expert parallelism's two exchanges a layer (vLLM's all-gather of the hidden states with the router logits,
    then reduce-scatter of the hidden states) between `ranks` GPUs, priced as `spec` (`latency.all_reduce`) prices
    the all-reduces: auto (the GPU's measured all-gather as the engine ran it where the preset names a step table,
    else measured alone, else a ring said to be a fallback), engine[:<factor>], measured, ring, or none (free). A
    link or a CSV prices all-reduces only, and is refused here rather than ignored."""
    from s3sim.hardware.network import NoAllReduce, RingAllGather, all_gather_model, preset_measured

    if spec == "none":
        return NoAllReduce()
    if spec == "ring":
        if not gpu.interconnect_bandwidth:
            raise ConfigError(f"latency.all_reduce=ring: gpu {gpu.name} has no interconnect bandwidth to price "
                              "expert parallelism's all-gathers with")
        return RingAllGather(gpu.interconnect_bandwidth, source=f"all-gather as a ring over {gpu.name}'s interconnect")
    if spec == "measured":
        model = preset_measured(gpu, "all_gather")
        if model is None or ranks not in model.curves:
            raise ConfigError(f"latency.all_reduce=measured: no all-gather measured between {ranks} {gpu.name} GPUs "
                              "(the preset's measured table) to price expert parallelism's exchanges; use auto or ring")
        return model
    if spec != "auto" and not is_engine(spec):
        raise ConfigError(f"latency.all_reduce={spec!r} prices all-reduces only; expert parallelism's exchanges are "
                          "priced by auto, engine, engine:<factor>, measured, ring or none")
    gather = all_gather_model(gpu, ranks)
    factor = engine_collectives(spec, gpu, ranks)
    return in_engine(gpu, gather, factor) if factor is not False else gather


def engine_collectives(all_reduce: str, gpu, workers: int):
    """Whether `all_reduce` (`s3sim-validate --all-reduce`, `latency.all_reduce`) prices the collectives between
    `workers` GPUs as the engine ran them (`engine` or `engine:<factor>`; or `auto` where the GPU preset names a
    step table to fit that to and a table measured between that many): False, or the factor (None: the fitted
    one)."""
    if is_engine(all_reduce):
        factor = engine_factor(all_reduce)
        if factor is None:
            in_engine_factor(gpu)  # a one-line error where the preset names no step table
        return factor
    table = in_engine_table(gpu)
    if all_reduce != "auto" or table is None or not table.is_file():  # auto without the table: measured alone
        return False
    from s3sim.hardware.network import preset_measured

    measured = preset_measured(gpu)
    return None if measured is not None and workers in measured.curves else False
