"""Output-length buckets: the predictor's vocabulary and the unit of reservation.

Bucket i covers lengths (upper[i-1], upper[i]] (bucket 0 starts at 0), so a request reserves the upper
bound of its bucket. Equal-width buckets over `max_len` follow the paper (10 buckets); quantile buckets
put the edges at quantiles of observed lengths, so each holds about the same share of requests.
"""
from __future__ import annotations

from bisect import bisect_left

import numpy as np

from s3sim.core.errors import ConfigError


class Buckets:
    def __init__(self, upper):
        upper = np.asarray(upper, dtype=np.int64)
        if upper.ndim != 1 or len(upper) < 2:
            raise ConfigError(f"predictor.num_buckets must be at least 2, got {len(np.atleast_1d(upper))}")
        if np.any(upper <= 0) or np.any(np.diff(upper) <= 0):
            raise ConfigError(f"bucket upper bounds must be positive and strictly increasing, got {upper.tolist()}")
        self.upper = upper
        self._upper = upper.tolist()  # for `of_one`

    @classmethod
    def equal(cls, num_buckets: int, max_len: int) -> "Buckets":
        _check(num_buckets, max_len)
        if num_buckets > max_len:
            raise ConfigError(f"predictor.num_buckets={num_buckets} exceeds max_seq_len={max_len}")
        # ceil(i * max_len / K) in integers: the float product can land just above an exact multiple
        edges = -(-np.arange(1, num_buckets + 1, dtype=np.int64) * int(max_len) // int(num_buckets))
        return cls(edges)

    @classmethod
    def quantile(cls, num_buckets: int, max_len: int, lengths) -> "Buckets":
        """Edges at the 1/K ... (K-1)/K quantiles of `lengths`; the last edge is `max_len`."""
        _check(num_buckets, max_len)
        if num_buckets > max_len:  # there are not enough distinct edges: fewer buckets than asked for
            raise ConfigError(f"predictor.num_buckets={num_buckets} exceeds max_seq_len={max_len}")
        lengths = np.clip(np.asarray(lengths, dtype=np.int64), 1, max_len)
        if len(lengths) == 0:
            raise ConfigError("quantile buckets need a non-empty sample of lengths")
        qs = np.quantile(lengths, np.arange(1, num_buckets) / num_buckets, method="higher")
        edges = np.unique(np.concatenate([qs.astype(np.int64), [max_len]]))
        if len(edges) < num_buckets:  # ties in the sample: fill with distinct edges between them
            extra = np.setdiff1d(np.arange(1, max_len + 1), edges)[: num_buckets - len(edges)]
            edges = np.sort(np.concatenate([edges, extra]))
        return cls(edges)

    @property
    def num(self) -> int:
        return len(self.upper)

    @property
    def max_len(self) -> int:
        return int(self.upper[-1])

    def of(self, lengths):
        """Bucket index of each length; lengths beyond the last edge fall in the last bucket."""
        idx = np.searchsorted(self.upper, np.asarray(lengths), side="left")
        return np.minimum(idx, self.num - 1)

    def of_one(self, length: int) -> int:
        """`of` for one length, in plain integers (a per-request call without numpy's cost)."""
        return min(bisect_left(self._upper, length), len(self._upper) - 1)

    def upper_of(self, bucket: int) -> int:
        return int(self.upper[bucket])

    def midpoint(self, bucket):
        lower = np.concatenate([[0], self.upper[:-1]])
        return (lower[bucket] + self.upper[bucket]) / 2


def _check(num_buckets: int, max_len: int) -> None:
    if int(num_buckets) < 2:
        raise ConfigError(f"predictor.num_buckets must be at least 2, got {num_buckets}")
    if int(max_len) < 1:
        raise ConfigError(f"max_seq_len must be a positive number of tokens, got {max_len}")
