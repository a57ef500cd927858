"""Whole engine steps against the operator sum: a calibration fitted to `step.csv`.

A profile's `tp<N>/step.csv` (the shared RTX PRO 6000 profiles) times whole steps of the full model in vLLM
with CUDA graphs, beside the operator profile that times one layer's operators with graphs off. A step runs
in one of three CUDA-graph modes (`branch`): `full` (a decode-only batch replayed as one graph), `piecewise`
(a mixed or prefill batch, graphs between the attention calls) and `none` (a batch beyond the largest graph
captured, run eagerly). Per mode the step is fitted as `scale x operator sum + offset` (least squares), and
`StepCalibrated` prices an iteration so: the mode from the batch (decode-only or not; beyond the largest
token count the table measured in a graph mode, eager).

What the shared tables say (`python -m s3sim.lab.step_check`, results/calibration/steps.csv): the fit is
good within a table (a few per cent on held-out rows), but the tables were measured months after the runs,
and the runs' own decode-only seconds are priced better by the operator sum alone; so `s3sim-validate` applies
this calibration only when asked (`--step-calibration`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.inputs import first_bad_line, read_table

BRANCHES = ("full", "piecewise", "none")
STEP_COLUMNS = ("branch", "num_tokens", "n_decode", "kv_decode", "prefill_chunk", "step_us")


def read_steps(path) -> pd.DataFrame:
    """A `step.csv`: its rows, checked (one-line errors naming the file and the line)."""
    p = Path(path)
    t = read_table(p, "step table", STEP_COLUMNS)
    bad = ~t.branch.isin(BRANCHES)
    numeric = t[list(STEP_COLUMNS[1:])].apply(pd.to_numeric, errors="coerce")
    bad |= numeric.isna().any(axis=1) | (numeric.step_us <= 0) | (numeric.num_tokens <= 0)
    if bad.any():
        raise ConfigError(f"step table {str(p)!r} line {first_bad_line(bad)}: branch must be one of {', '.join(BRANCHES)} and "
                          f"num_tokens, n_decode, kv_decode, prefill_chunk numbers, step_us > 0")
    return t.assign(**{c: numeric[c] for c in STEP_COLUMNS[1:]})


def operator_seconds(latency, steps: pd.DataFrame) -> np.ndarray:
    """The operator model's price of each step row: one prefill chunk from an empty prefix beside the decodes."""
    out = []
    for r in steps.itertuples(index=False):
        att = latency.attention.at(float(r.prefill_chunk), 0.0, float(r.n_decode), float(r.kv_decode))
        sampling = r.n_decode + (1 if r.prefill_chunk > 0 else 0)
        out.append(latency.overhead_s + latency.dense.at(float(r.num_tokens)) + latency.layers * att
                   + latency.per_sequence.at(float(sampling)))
    return np.array(out)


@dataclass(frozen=True)
class StepFit:
    """Per CUDA-graph mode, step = scale x operator sum + offset_s; `graph_tokens`: the largest batch a graph
    mode covered in the table (beyond it a step runs eagerly)."""

    scale: dict
    offset_s: dict
    graph_tokens: int
    source: str = ""

    def seconds(self, operator_s, branch: str):
        return self.scale[branch] * np.asarray(operator_s) + self.offset_s[branch]

    def branch(self, tokens: float, decode_only: bool) -> str:
        if tokens > self.graph_tokens:
            return "none"
        return "full" if decode_only else "piecewise"


def fit_steps(branch: np.ndarray, operator_s: np.ndarray, step_s: np.ndarray, graph_tokens: int,
              source: str = "") -> StepFit:
    """Least squares per mode; a mode with fewer than three rows keeps scale 1 and its mean difference."""
    scale, offset = {}, {}
    for b in BRANCHES:
        sel = branch == b
        x, y = operator_s[sel], step_s[sel]
        if sel.sum() >= 3 and np.ptp(x) > 0:
            a, c = np.polyfit(x, y, 1)
        elif sel.sum():
            a, c = 1.0, float(np.mean(y - x))
        else:
            a, c = 1.0, 0.0
        scale[b], offset[b] = float(a), float(c)
    return StepFit(scale, offset, graph_tokens, source)


def fit_table(latency, path) -> tuple[StepFit, pd.DataFrame]:
    """The fit of one `step.csv` against `latency` (an `OperatorLatency` at the table's TP), and its rows with
    `operator_s`, `step_s` and the fit's `fitted_s`."""
    t = read_steps(path)
    op = operator_seconds(latency, t)
    graphs = t[t.branch != "none"].num_tokens
    fit = fit_steps(t.branch.to_numpy(), op, t.step_us.to_numpy() * 1e-6,
                    int(graphs.max()) if len(graphs) else 0, str(path))
    rows = t.assign(operator_s=op, step_s=t.step_us * 1e-6)
    rows["fitted_s"] = [float(fit.seconds(o, b)) for o, b in zip(rows.operator_s, rows.branch)]
    return fit, rows


def cross_validated_error(rows: pd.DataFrame) -> pd.DataFrame:
    """Two-fold cross-validation: fit on every other row, price the rest, and the other way round; per mode the
    held-out relative errors (mean of absolute values, and the largest)."""
    rows = rows.reset_index(drop=True)
    held = np.empty(len(rows))
    for fold in (0, 1):
        train = np.asarray(rows.index % 2 != fold)
        f = fit_steps(rows.branch[train].to_numpy(), rows.operator_s[train].to_numpy(),
                      rows.step_s[train].to_numpy(), 0)
        test = ~train
        held[test] = [float(f.seconds(o, b)) for o, b in zip(rows.operator_s[test], rows.branch[test])]
    err = held / rows.step_s.to_numpy() - 1
    return (pd.DataFrame({"branch": rows.branch, "err": err}).groupby("branch").err
            .agg(rows="size", held_out_mean_abs_pct=lambda e: 100 * np.mean(np.abs(e)),
                 held_out_max_abs_pct=lambda e: 100 * np.max(np.abs(e))).reset_index())


class StepCalibrated:
    """A latency model whose iterations are priced as whole steps: `fit` applied to the inner model's price,
    in the CUDA-graph mode of each batch. Everything else is the inner model's."""

    def __init__(self, inner, fit: StepFit):
        self.inner, self.fit = inner, fit

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def batch_time(self, out, **kw) -> float:
        t = self.inner.batch_time(out, **kw)
        if t <= 0:
            return t
        tokens = out.prefill_tokens + out.decode_n
        return float(self.fit.seconds(t, self.fit.branch(tokens, out.prefill_tokens == 0)))

    def decode_run(self, decode_tokens, decode_ctx_start, k: int, **kw) -> np.ndarray:
        t = self.inner.decode_run(decode_tokens, decode_ctx_start, k, **kw)
        if decode_tokens <= 0:
            return t
        return np.asarray(self.fit.seconds(t, self.fit.branch(float(decode_tokens), True)), dtype=np.float64)


# ---- the collectives as the engine ran them -----------------------------------------------------------------
@dataclass(frozen=True)
class CollectiveFit:
    """How much slower the engine's collectives move their bytes than measured alone: `factor` times the time
    at the measured bandwidth, beyond each one's latency floor; `offset_s` per kind of step (`step_kinds`);
    each fold's factor and the held-out error of the steps priced with it (folds: every other row of each
    kind)."""

    factor: float
    offset_s: dict
    rows: int
    fold_factors: tuple
    held_out_mean_abs_pct: float
    held_out_max_abs_pct: float
    source: str


def step_kinds(steps: pd.DataFrame) -> np.ndarray:
    """Each step's CUDA-graph mode, a piecewise step with decodes told apart (`piecewise_mixed`) from one of
    prefill chunks alone: in the shared TP2 table the two differ by a constant (about 9 ms), which one offset
    for both would push into the slope."""
    mixed = (steps.branch.to_numpy() == "piecewise") & (steps.n_decode.to_numpy() > 0)
    return np.where(mixed, "piecewise_mixed", steps.branch.to_numpy()).astype(object)


def _factor_lstsq(branch: np.ndarray, excess: np.ndarray, beyond: np.ndarray):
    """excess = offset[kind] + factor x beyond, least squares: (offsets, factor)."""
    modes = sorted(set(branch))
    x = np.column_stack([(branch == m).astype(float) for m in modes] + [beyond])
    coef, *_ = np.linalg.lstsq(x, excess, rcond=None)
    return dict(zip(modes, coef[:-1].tolist())), float(coef[-1])


def fit_in_engine_factor(latency, measured, gather, steps: pd.DataFrame, model, tp: int,
                         source: str = "") -> CollectiveFit:
    """The collectives as a whole-step table at `tp` > 1 shows them. `latency` is the operator model of the
    table's TP with every all-reduce priced by `measured` and the logits' all-gather by `gather` (each a
    `MeasuredAllReduce`, timed alone); its compute is that price less those collectives. Each step is fitted as
    compute + a constant per kind of step (its CUDA-graph mode; piecewise with or without decodes) + its 2 L + 1
    all-reduces and one all-gather, each at its measured latency floor plus its bytes at its measured bandwidth
    (the slope of its largest messages) divided by `factor`: the one term that grows with the messages. A
    constant the table has and a run does not (a timing harness) stays in the offsets. Compute is priced as
    profiled (scale 1): on the same GPU the runs at TP1 replay within a few per cent so, and a compute scale
    fitted with the factor cannot be told apart from it (both grow with tokens)."""
    n_ar = 2 * model.n_layers + 1
    branch = step_kinds(steps)
    nbytes = steps.num_tokens.to_numpy(np.float64) * model.hidden_size * model.dtype_bytes
    sampled = steps.n_decode.to_numpy(np.float64) + (steps.prefill_chunk.to_numpy() > 0)
    logits = sampled * model.vocab_size * model.dtype_bytes
    floors = n_ar * float(measured.time_s(tp, 0.0)) + float(gather.time_s(tp, 0.0))
    compute = operator_seconds(latency, steps) - n_ar * measured.time_s(tp, nbytes) - gather.time_s(tp, logits)
    step_s = steps.step_us.to_numpy(np.float64) * 1e-6
    excess = step_s - compute - floors
    beyond = n_ar * nbytes / measured.bandwidth(tp) + logits / gather.bandwidth(tp)
    if np.unique(nbytes).size < 2:
        raise ConfigError(f"step table {source!r}: one message size only, so no factor to fit")
    offsets, factor = _factor_lstsq(branch, excess, beyond)
    if not factor > 0:
        raise ConfigError(f"step table {source!r}: its steps do not grow with the all-reduces' bytes beyond the "
                          f"operator sum, so it implies no in-engine factor (price the collectives as measured)")
    held = np.full(len(steps), np.nan)
    folds = []
    parity = pd.Series(branch).groupby(branch).cumcount().to_numpy() % 2  # every other row of each kind
    for fold in (0, 1):
        train = parity != fold
        off, k = _factor_lstsq(branch[train], excess[train], beyond[train])
        folds.append(k)
        test = np.flatnonzero(~train)
        known = [i for i in test if branch[i] in off]
        held[known] = [compute[i] + floors + off[branch[i]] + k * beyond[i] for i in known]
    err = np.abs(held / step_s - 1)
    err = err[np.isfinite(err)]
    return CollectiveFit(factor, offsets, len(steps), tuple(folds), float(100 * err.mean()), float(100 * err.max()),
                         source)
