"""Roofline latency: an iteration is bound either by tensor-core FLOPs or by HBM traffic, whichever is slower.

For a non-empty iteration (``prefill_tokens + decode_tokens > 0``)::

    time  = overhead_s + max(flops / (peak_flops * compute_efficiency * num_gpus),
                             bytes / (mem_bandwidth * memory_efficiency * num_gpus))
    flops = 2 * n_params * (prefill_tokens + decode_tokens)       # every new token passes every weight
          + 2 * n_layers * q_dim * prefill_sq                     # causal prefill attention, QK^T and AV:
                                                                  #   4 * L * q_dim * p^2 / 2 per prompt
          + 4 * n_layers * q_dim * decode_ctx                     # decode attention over the cached context
    bytes = weight_bytes                                          # weights read once per iteration
          + kv_bytes_per_token * (decode_ctx + prefill_tokens + decode_tokens)   # read context, write new KV

An empty iteration takes 0. Small decode batches are memory-bound (the weight read dominates, so time is
nearly flat in batch size); large batches and long prefills become compute-bound.

The factors below default to assumptions; `python -m s3sim.lab.calibrate <profile>` fits them to a
profile measured by `python -m s3exec.lab.profile` (s3sim/lab/calibrate.py):

* ``compute_efficiency`` (default 0.6): fraction of datasheet dense tensor FLOP/s that real GEMMs and
  attention kernels reach at serving shapes.
* ``memory_efficiency`` (default 0.8): fraction of datasheet HBM bandwidth achieved by streaming reads.
* ``overhead_s`` (default 2 ms): fixed per-iteration cost of kernel launches, sampling and the scheduler.
* ``num_gpus`` (default 1): tensor-parallel degree: FLOPs and bandwidth scale with it, and every iteration
  adds two all-reduces per layer of its tokens' activations (``tokens x hidden x dtype bytes``), priced by
  ``all_reduce`` (``s3sim/hardware/network.py``): ``auto`` (the default: the GPU preset's measured table, as the
  engine ran it where the preset names a step table, else a ring over its interconnect, said to be a fallback),
  ``ring``, ``measured``, a measured table (the path of an all-reduce CSV such as
  ``../shared/data/gpu_profiles/network/a100_dgx/all_reduce.csv``), or ``none`` (free, as ideal scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.hardware.models import ModelSpec
from s3sim.latency.operators import check_all_reduce_spec, priced_collectives
from s3sim.latency.base import LatencyModel, check_overhead

_ARG_NAMES = ("prefill_tokens", "prefill_sq", "decode_tokens", "decode_ctx")


@dataclass
class RooflineConfig:
    name: str = "roofline"
    compute_efficiency: float = 0.6
    memory_efficiency: float = 0.8
    overhead_s: float = 0.002
    all_reduce: str = "auto"  # tensor parallelism's cost: auto (as latency=operators), ring (over the GPU's
    # interconnect), measured, engine[:<factor>], link:<GB/s>:<us>, none, or a CSV path


class RooflineLatency(LatencyModel):
    """Max of compute time and memory time, plus a fixed overhead, per iteration."""

    name = "roofline"
    Config = RooflineConfig

    @classmethod
    def from_config(cls, conf: RooflineConfig, model, gpu, num_gpus: int = 1) -> "RooflineLatency":
        check_all_reduce_spec(conf.all_reduce)
        return cls(model, gpu, compute_efficiency=conf.compute_efficiency, memory_efficiency=conf.memory_efficiency,
                   overhead_s=conf.overhead_s, num_gpus=num_gpus,
                   all_reduce=priced_collectives(conf.all_reduce, gpu, num_gpus) if num_gpus > 1 else None)

    def __init__(self, model: ModelSpec, gpu: GpuSpec, compute_efficiency: float = 0.6,
                 memory_efficiency: float = 0.8, overhead_s: float = 0.002, num_gpus: int = 1,
                 all_reduce=None) -> None:
        super().__init__(model, gpu)
        for name, value in (("compute_efficiency", compute_efficiency), ("memory_efficiency", memory_efficiency)):
            if not 0 < value <= 1:
                raise ConfigError(f"latency.{name} must be in (0, 1], got {value!r}")
        check_overhead(overhead_s)
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
            raise ConfigError(f"num_gpus must be a positive integer, got {num_gpus!r}")
        self.compute_efficiency = float(compute_efficiency)
        self.memory_efficiency = float(memory_efficiency)
        self.overhead_s = float(overhead_s)
        self.num_gpus = num_gpus
        self.all_reduce = all_reduce if num_gpus > 1 else None  # None: tensor parallelism costs nothing
        self._activation_bytes = float(model.hidden_size * model.dtype_bytes)
        # Constants as floats so the scalar and the array path do the very same float operations.
        self._flops_rate = float(gpu.peak_flops) * self.compute_efficiency * num_gpus
        self._bytes_rate = float(gpu.mem_bandwidth) * self.memory_efficiency * num_gpus
        self._flops_per_token = 2.0 * model.active_params  # a mixture of experts computes its routed experts
        self._flops_per_prefill_sq = 2.0 * model.n_layers * model.q_dim
        self._flops_per_ctx = 4.0 * model.n_layers * model.q_dim
        self._weight_bytes = float(model.weight_bytes)
        self._kv_bytes = float(model.kv_bytes_per_token)

    def _compute_s(self, p, sq, d, ctx):
        flops = self._flops_per_token * (p + d) + self._flops_per_prefill_sq * sq + self._flops_per_ctx * ctx
        return flops / self._flops_rate

    def _communication_s(self, tokens):
        """Two all-reduces of the tokens' activations per layer across the tensor-parallel GPUs."""
        return 2 * self.model.n_layers * self.all_reduce.time_s(self.num_gpus, tokens * self._activation_bytes)

    def _memory_s(self, p, d, ctx):
        weights = self._weight_bytes if not self.model.n_experts else self.model.weight_bytes_read(p + d)
        return (weights + self._kv_bytes * (ctx + p + d)) / self._bytes_rate

    def copy_time(self, n_tokens):
        """A KV copy streams its bytes twice (read, write) at the bandwidth the memory term assumes."""
        t = 2.0 * self._kv_bytes * np.asarray(n_tokens, dtype=np.float64) / self._bytes_rate
        return float(t) if t.ndim == 0 else t

    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        args = (prefill_tokens, prefill_sq, decode_tokens, decode_ctx)
        if all(type(a) in (int, float) for a in args):
            # Plain numbers: the engine's per-iteration call, kept free of numpy overhead.
            p, sq, d, ctx = (float(a) for a in args)
            for name, value in zip(_ARG_NAMES, (p, sq, d, ctx)):
                if value < 0:
                    raise ConfigError(f"iteration_time: {name} must be >= 0, got {value!r}")
            if p + d <= 0:
                return 0.0
            t = self.overhead_s + max(self._compute_s(p, sq, d, ctx), self._memory_s(p, d, ctx))
            return t if self.all_reduce is None else t + float(self._communication_s(p + d))
        p, sq, d, ctx = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
        for name, value in zip(_ARG_NAMES, (p, sq, d, ctx)):
            if np.any(value < 0):
                raise ConfigError(f"iteration_time: {name} must be >= 0 everywhere, got min {value.min()!r}")
        t = self.overhead_s + np.maximum(self._compute_s(p, sq, d, ctx), self._memory_s(p, d, ctx))
        if self.all_reduce is not None:
            t = t + self._communication_s(p + d)
        t = np.where(p + d > 0, t, 0.0)
        return float(t) if t.ndim == 0 else t

