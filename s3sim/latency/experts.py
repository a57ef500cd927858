"""A mixture-of-experts layer priced from its measured table (a profile's `moe.csv`: `tokens, activated_experts,
time_us`, the fused expert layer of one decoder layer, timed under vLLM).

A batch of `tokens` tokens, each routed to `k` of `E` experts, activates on average `E (1 - (1 - k/E)^tokens)`
distinct experts (routing taken as uniform: real routers are skewed, which activates fewer), and the layer costs
the table's time at that token count and that many experts: linear in the experts within a measured token
count (along the last segment beyond its largest), then linear between token counts (along the last segment
beyond the largest). Each measured token count must have at least one row.
"""
from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.inputs import first_bad_line, read_table

COLUMNS = ("tokens", "activated_experts", "time_us")


def expected_experts(tokens, n_experts: int, per_token: int):
    """Distinct experts a batch of `tokens` tokens activates on average under uniform routing."""
    t = np.asarray(tokens, dtype=np.float64)
    return n_experts * (1.0 - (1.0 - per_token / n_experts) ** t)


def _line(x: list, y: list, at: float) -> float:
    """Linear through the points (x ascending), along the end segments beyond them; one point: its value."""
    if len(x) == 1:
        return y[0]
    i = min(max(bisect_right(x, at) - 1, 0), len(x) - 2)
    return y[i] + (y[i + 1] - y[i]) / (x[i + 1] - x[i]) * (at - x[i])


class ExpertTable:
    """Seconds of one MoE layer by (tokens, activated experts), from `moe.csv`."""

    def __init__(self, table: pd.DataFrame, n_experts: int, per_token: int, where: str):
        self.n_experts, self.per_token, self.where = n_experts, per_token, where
        self.tokens, self.rows = [], []
        for tokens, rows in table.groupby("tokens"):
            rows = rows.sort_values("activated_experts")
            self.tokens.append(float(tokens))
            self.rows.append((rows.activated_experts.astype(float).tolist(), (rows.time_us * 1e-6).tolist()))

    @classmethod
    def from_csv(cls, path: Path, n_experts: int, per_token: int) -> "ExpertTable":
        if not path.is_file():
            raise ConfigError(f"operator profile: model has {n_experts} experts but there is no {str(path)!r} (the "
                              f"fused expert layer by tokens and activated experts)")
        t = read_table(path, "operator profile", COLUMNS)
        values = t[list(COLUMNS)].apply(pd.to_numeric, errors="coerce")
        bad = values.isna().any(axis=1) | (values.tokens < 1) | (values.activated_experts < 1) | (values.time_us <= 0)
        if bad.any():
            raise ConfigError(f"operator profile {str(path)!r} line {first_bad_line(bad)}: tokens and activated_experts must be "
                              f"positive counts and time_us > 0")
        if values.activated_experts.max() > n_experts:
            raise ConfigError(f"operator profile {str(path)!r}: {int(values.activated_experts.max())} activated "
                              f"experts measured, but the model has {n_experts}")
        return cls(values, n_experts, per_token, str(path))

    def row_at(self, i: int, experts: float) -> float:
        x, y = self.rows[i]
        return _line(x, y, experts)

    def seconds(self, tokens: float) -> float:
        """One MoE layer's time for a batch of `tokens` tokens (0 for none)."""
        if tokens <= 0:
            return 0.0
        return self.at(tokens, float(expected_experts(tokens, self.n_experts, self.per_token)))

    def seconds_expert_parallel(self, tokens: float, ranks: int) -> float:
        """One rank's MoE layer under expert parallelism over `ranks` GPUs, for `tokens` tokens over all ranks:
        it holds 1/ranks of the experts, so it computes about 1/ranks of the token-expert pairs (priced as that
        share of the tokens) with the distinct experts of its own that the whole batch activates."""
        if tokens <= 0:
            return 0.0
        local = float(expected_experts(tokens, self.n_experts, self.per_token)) / ranks
        return self.at(tokens / ranks, local)

    def at(self, tokens: float, experts: float) -> float:
        """The table at `tokens` tokens and `experts` activated experts."""
        xs = self.tokens
        if len(xs) == 1:
            return self.row_at(0, experts)
        i = min(max(bisect_right(xs, tokens) - 1, 0), len(xs) - 2)
        lo, hi = self.row_at(i, experts), self.row_at(i + 1, experts)
        return max(lo + (hi - lo) / (xs[i + 1] - xs[i]) * (tokens - xs[i]), 0.0)
