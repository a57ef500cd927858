"""The one question the simulator asks about hardware: how long does a serving iteration take?

An iteration is one forward pass over a batch mixing prefills of newly admitted requests with one decode
token for each running request. Implementations (a roofline estimate now, a measured profile later) must be
vectorised so the engine can price many candidate iterations, or a long decode-only run, in one numpy call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.hardware.models import ModelSpec


def check_overhead(overhead_s, allow_none: bool = False) -> None:
    """`latency.overhead_s`, seconds added to every iteration: finite and not negative (or null where allowed)."""
    if overhead_s is None and allow_none:
        return
    if not 0 <= overhead_s < float("inf"):
        raise ConfigError(f"latency.overhead_s must be a finite number >= 0 seconds{' or null' if allow_none else ''}, "
                          f"got {overhead_s!r}")


class LatencyModel(ABC):
    """Wall time of serving iterations for one model on one GPU type. A subclass is selected by its `name`
    (`latency.name`, conf/latency/<name>.yaml) and built from its structured config `Config`."""

    name = "base"
    Config = None  # a dataclass of its `latency` fields

    @classmethod
    def from_config(cls, conf, model: ModelSpec, gpu: GpuSpec, num_gpus: int = 1) -> "LatencyModel":
        raise NotImplementedError

    def __init__(self, model: ModelSpec, gpu: GpuSpec) -> None:
        self.model = model
        self.gpu = gpu

    @abstractmethod
    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        """Seconds for one iteration; numbers or numpy arrays (broadcast together), float or ndarray back.

        prefill_tokens: prompt tokens prefilled; prefill_sq: sum of (prompt tokens)^2 over prefilled requests;
        decode_tokens: requests decoding one token; decode_ctx: sum of their context lengths (tokens in KV).
        An iteration with no prefill and no decode tokens takes 0.
        """

    def decode_run(self, decode_tokens, decode_ctx_start, k: int) -> np.ndarray:
        """Durations of ``k`` consecutive decode-only iterations of a fixed batch; step i has context sum
        ``decode_ctx_start + i * decode_tokens``. Equal, float for float, to calling iteration_time per step."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ConfigError(f"decode_run: k must be a non-negative integer, got {k!r}")
        ctx = float(decode_ctx_start) + np.arange(k, dtype=np.float64) * float(decode_tokens)
        times = self.iteration_time(0, 0, decode_tokens, ctx)
        return np.array(np.broadcast_to(times, (k,)), dtype=np.float64)

    def batch_time(self, out) -> float:
        """Seconds for one iteration of a scheduler output (`SchedulerOutput`): its shape priced by
        `iteration_time`, plus the KV it moves over the host link. A model that prices each prefill chunk and
        prefix on its own overrides this."""
        d = self.iteration_time(out.prefill_tokens, out.prefill_sq, out.decode_n, out.decode_ctx)
        if out.transfer_tokens:
            d = d + self.swap_time(out.transfer_tokens)
        return d

    def swap_time(self, n_tokens):
        """Seconds to move ``n_tokens`` of KV cache between GPU and host memory (either direction)."""
        n = np.asarray(n_tokens, dtype=np.float64)
        if np.any(n < 0):
            raise ConfigError(f"swap_time: n_tokens must be >= 0, got {n_tokens!r}")
        t = n * self.model.kv_bytes_per_token / self.gpu.host_link_bandwidth
        return float(t) if t.ndim == 0 else t

    kv_shards = 1  # GPUs that each hold a share of every token's KV (tensor parallelism) and copy it at once

    def copy_time(self, n_tokens):
        """Seconds to copy ``n_tokens`` of KV cache into a new buffer in device memory (each byte read once and
        written once), as growing a cache by concatenation does every step: each GPU its share of the tokens'
        KV, at the bandwidth a streaming kernel measured on this GPU reaches (`GpuSpec.copy_efficiency` of the
        datasheet's; `make calibrate`)."""
        n = np.asarray(n_tokens, dtype=np.float64)
        if self.gpu is None:
            raise ConfigError("pricing a KV copy needs a GPU's memory bandwidth: give the latency model a gpu preset")
        if not 0 < self.gpu.copy_efficiency <= 1:
            raise ConfigError(f"gpu {self.gpu.name} has no measured copy_efficiency (the fraction of its bandwidth a "
                              "streaming copy reaches), which pricing policy=hf's KV copies needs")
        rate = self.gpu.mem_bandwidth * self.gpu.copy_efficiency * self.kv_shards
        t = 2.0 * n * self.model.kv_bytes_per_token / rate
        return float(t) if t.ndim == 0 else t
