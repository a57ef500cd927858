"""Bucket schemes a classifier is trained for: `equal:K:MAX` (K equal-width buckets over MAX tokens, the
paper's) or `quantile:K:MAX` (edges at quantiles of the training lengths). One encoder can carry several
schemes, one classification head each, so a single fine-tuning serves every scheme compared."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.buckets import Buckets

KINDS = ("equal", "quantile")
MAX_BUCKETS = 1024        # one classifier output each
MAX_LEN = 1 << 20         # tokens: far beyond any context window (10**20 overflowed numpy's int64)


@dataclass(frozen=True)
class Scheme:
    kind: str
    num: int
    max_len: int

    @classmethod
    def parse(cls, text: str) -> "Scheme":
        parts = str(text).split(":")
        try:
            if len(parts) != 3:  # quantile:10:2048:x trained as quantile:10:2048
                raise ValueError
            kind, num, max_len = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise ConfigError(f"bucket scheme {text!r} must look like equal:10:2048 or quantile:10:2048") from None
        if kind not in KINDS:
            raise ConfigError(f"bucket scheme {text!r}: kind must be one of {', '.join(KINDS)}")
        if num < 2:
            raise ConfigError(f"bucket scheme {text!r}: the bucket count must be at least 2, got {num}")
        if num > MAX_BUCKETS:
            raise ConfigError(f"bucket scheme {text!r}: the bucket count must be at most {MAX_BUCKETS}, got {num}")
        if max_len < num:
            raise ConfigError(f"bucket scheme {text!r}: max length {max_len} must be at least the bucket count")
        if max_len > MAX_LEN:
            raise ConfigError(f"bucket scheme {text!r}: max length must be at most {MAX_LEN:,} tokens, got {max_len}")
        return cls(kind, num, max_len)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.num}:{self.max_len}"

    def buckets(self, train_lengths) -> Buckets:
        if self.kind == "equal":
            return Buckets.equal(self.num, self.max_len)
        return Buckets.quantile(self.num, self.max_len, np.asarray(train_lengths))


def scheme_name(bucketing: str, num_buckets: int, max_len: int) -> str:
    return f"{bucketing}:{int(num_buckets)}:{int(max_len)}"


def edges_problem(name: str, upper) -> str | None:
    """What is wrong with bucket edges `upper` stored under scheme `name` (None if they agree): an `equal`
    scheme's edges are fixed by its name; a `quantile` one's must number K, rise and end at its max length.
    A predictor whose edges disagree with its name would reserve other lengths than the name promises."""
    try:
        s = Scheme.parse(name)
    except ConfigError as e:
        return str(e)
    try:
        u = np.asarray(upper, dtype=np.float64)
    except (TypeError, ValueError):
        return f"edges {upper!r} are not a list of token counts"
    if u.ndim != 1 or not np.all(np.isfinite(u)) or np.any(u != np.round(u)):
        return f"edges {upper!r} are not a list of whole token counts"
    if len(u) != s.num:
        return f"{len(u)} edges for {s.num} buckets"
    if s.kind == "equal":
        want = Buckets.equal(s.num, s.max_len).upper
        if np.array_equal(u, want):
            return None
        i = int(np.flatnonzero(u != want)[0])
        return (f"edge {i + 1} of {len(u)} is {int(u[i])}, not {int(want[i])}: edges {_short(u)} are not its "
                f"equal-width edges {_short(want)}")
    if np.any(u <= 0) or np.any(np.diff(u) <= 0):
        return f"edges {_short(u)} are not positive and strictly increasing"
    if u[-1] != s.max_len:
        return f"the last edge is {int(u[-1])}, not the max length {s.max_len}"
    return None


def _short(u) -> str:
    u = [int(x) for x in u]
    return ", ".join(map(str, u)) if len(u) <= 4 else f"{u[0]}, {u[1]}, ..., {u[-1]}"
