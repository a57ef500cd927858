"""A latency model whose every step takes a fixed factor longer than another's: how much a replay's numbers
move when the per-step pricing is off by a little (`s3sim-validate`'s sensitivity column)."""
from __future__ import annotations


class ScaledLatency:
    """`inner`'s prices times `factor` for what the simulated engine asks (`batch_time`, `decode_run`,
    `copy_time`); everything else is `inner`'s."""

    def __init__(self, inner, factor: float):
        self.inner, self.factor = inner, float(factor)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def batch_time(self, *args, **kwargs):
        return self.inner.batch_time(*args, **kwargs) * self.factor

    def decode_run(self, *args, **kwargs):
        return self.inner.decode_run(*args, **kwargs) * self.factor

    def copy_time(self, *args, **kwargs):
        return self.inner.copy_time(*args, **kwargs) * self.factor
