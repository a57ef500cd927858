"""Bucket schemes a classifier is trained for: `equal:K:MAX` (K equal-width buckets over MAX tokens, the
paper's) or `quantile:K:MAX` (edges at quantiles of the training lengths). One encoder can carry several
schemes, one classification head each, so a single fine-tuning serves every scheme compared."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.buckets import Buckets

KINDS = ("equal", "quantile")


@dataclass(frozen=True)
class Scheme:
    kind: str
    num: int
    max_len: int

    @classmethod
    def parse(cls, text: str) -> "Scheme":
        parts = str(text).split(":")
        try:
            kind, num, max_len = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise ConfigError(f"bucket scheme {text!r} must look like equal:10:2048 or quantile:10:2048") from None
        if kind not in KINDS:
            raise ConfigError(f"bucket scheme {text!r}: kind must be one of {', '.join(KINDS)}")
        if num < 2:
            raise ConfigError(f"bucket scheme {text!r}: the bucket count must be at least 2, got {num}")
        if max_len < num:
            raise ConfigError(f"bucket scheme {text!r}: max length {max_len} must be at least the bucket count")
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
