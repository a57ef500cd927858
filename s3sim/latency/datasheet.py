"""Per-operator latency from datasheet figures (`latency=datasheet`): for a GPU without its own profile.

An iteration is priced operator by operator, each at its own bound, instead of one `max(compute, memory)`
over the whole iteration (the roofline), which lets memory-bound attention hide under compute-bound
matmuls. Every operator costs

    max(flops / (peak_flops x compute_efficiency), bytes / (mem_bandwidth x memory_efficiency)) + launch_s

- per layer, at the iteration's T tokens: the two norms, the QKV projection, rotary embedding, the output
  projection, the MLP (up or gate-up, activation, down; a mixture of experts computes its routed experts
  and reads the experts its tokens touch), the residual add. A matmul reads its weights and its
  activations and writes its output; an elementwise operator streams its activations;
- per layer, attention: prefill by its FLOPs (causal, each chunk against its prefix: `prefill_sq`), decode
  by the KV bytes it reads (`decode_ctx`), each its own operator;
- once: the embedding gather and the final norm on T tokens, the LM head and the sampler on the sequences
  that sample, a fixed `overhead_s`;
- tensor parallelism (`gpu.count`): each GPU runs its shard (heads, MLP width and vocabulary split; KV heads
  replicated where fewer than the GPUs), plus the two all-reduces of every layer priced by `all_reduce`;
- pipeline parallelism (`gpu.pipeline_stages` = P): each stage holds ceil(L/P) layers (the slowest stage
  sets the pace). The batch is split into m = min(P, its sequences) microbatches: the decodes evenly, the
  prefill chunks (which cannot be split) all in one, the heaviest. An iteration is one period of the
  pipeline: P stage-times of the heaviest microbatch plus its P - 1 send/recvs (`send_recv`), and once per
  microbatch the LM head and sampler on its sequences, once the embedding, final norm and fixed cost. With
  fewer microbatches than stages, stages idle: the bubble. (In a
  memory-bound decode each stage reads its 1/P of the weights once per microbatch, P times a period, so
  the weights cost what one GPU reading them all would; each stage reads only its own layers' KV, so the
  KV reads are split P ways.)

The efficiencies and launch cost come from the GPU preset (`GpuSpec.compute_efficiency`, fitted by `make
calibrate` to measured operators; `gpu.calibration` says from which, or that they were borrowed), or from
`latency.compute_efficiency` / `memory_efficiency` / `launch_s` when given. Attention kernels reach less than
the dense operators: prefill attention runs at `attention_prefill_efficiency` of peak FLOP/s and decode
attention at `attention_decode_efficiency` of peak bandwidth, fitted to the attention timings of the shared
runs' profiles (other GPUs take those fits' mean ratio to their dense fit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.hardware.models import ModelSpec
from s3sim.hardware.network import FreeSendRecv, check_send_recv_spec, send_recv_model
from s3sim.latency.base import LatencyModel
from s3sim.latency.operators import check_all_reduce_spec, priced_collectives

_ARG_NAMES = ("prefill_tokens", "prefill_sq", "decode_tokens", "decode_ctx")


@dataclass
class DatasheetConfig:
    name: str = "datasheet"
    compute_efficiency: Optional[float] = None  # null: the GPU preset's fitted value
    memory_efficiency: Optional[float] = None  # null: the GPU preset's fitted value
    launch_s: Optional[float] = None  # seconds per operator launch; null: the GPU preset's fitted value
    attention_prefill_efficiency: Optional[float] = None  # of peak FLOP/s; null: the GPU preset's value
    attention_decode_efficiency: Optional[float] = None  # of peak bandwidth; null: the GPU preset's value
    overhead_s: float = 0.0  # seconds added to every iteration (scheduling, what the operators leave out)
    all_reduce: str = "auto"  # gpu.count > 1: auto (as latency=operators), ring over the GPU's interconnect,
    # measured, engine[:<factor>], link:<GB/s>:<us>, none (free), or a measured CSV
    send_recv: str = "link"  # gpu.pipeline_stages > 1: over the GPU's interconnect, none (free), or a measured CSV


class DatasheetLatency(LatencyModel):
    """The operator sum of the module doc; plain numbers and numpy arrays go through the same arithmetic."""

    name = "datasheet"
    Config = DatasheetConfig

    pipelines = True  # prices gpu.pipeline_stages

    @classmethod
    def from_config(cls, conf: DatasheetConfig, model, gpu, num_gpus: int = 1,
                    pipeline_stages: int = 1) -> "DatasheetLatency":
        check_all_reduce_spec(conf.all_reduce)
        check_send_recv_spec(conf.send_recv)
        return cls(model, gpu, compute_efficiency=conf.compute_efficiency, memory_efficiency=conf.memory_efficiency,
                   pipeline_stages=pipeline_stages,
                   send_recv=send_recv_model(conf.send_recv, gpu) if pipeline_stages > 1 else None,
                   launch_s=conf.launch_s, attention_prefill_efficiency=conf.attention_prefill_efficiency,
                   attention_decode_efficiency=conf.attention_decode_efficiency, overhead_s=conf.overhead_s, num_gpus=num_gpus,
                   all_reduce=priced_collectives(conf.all_reduce, gpu, num_gpus) if num_gpus > 1 else None)

    def __init__(self, model: ModelSpec, gpu: GpuSpec, compute_efficiency=None, memory_efficiency=None,
                 launch_s=None, attention_prefill_efficiency=None, attention_decode_efficiency=None,
                 overhead_s: float = 0.0, num_gpus: int = 1, all_reduce=None, pipeline_stages: int = 1,
                 send_recv=None) -> None:
        super().__init__(model, gpu)
        ce = gpu.compute_efficiency if compute_efficiency is None else compute_efficiency
        me = gpu.memory_efficiency if memory_efficiency is None else memory_efficiency
        launch = gpu.launch_s if launch_s is None else launch_s
        ap = gpu.attention_prefill_efficiency if attention_prefill_efficiency is None else attention_prefill_efficiency
        ad = gpu.attention_decode_efficiency if attention_decode_efficiency is None else attention_decode_efficiency
        given = {"compute_efficiency": compute_efficiency, "memory_efficiency": memory_efficiency,
                 "attention_prefill_efficiency": attention_prefill_efficiency,
                 "attention_decode_efficiency": attention_decode_efficiency}
        for name, value in (("compute_efficiency", ce), ("memory_efficiency", me),
                            ("attention_prefill_efficiency", ap), ("attention_decode_efficiency", ad)):
            if not 0 < value <= 1:
                hint = (f"gpu {gpu.name} has no fitted {name}: set latency.{name}"
                        if value == 0 and given[name] is None else "")
                raise ConfigError(hint or f"latency.{name} must be in (0, 1], got {value!r}")
        for name, value in (("launch_s", launch), ("overhead_s", overhead_s)):
            if not 0 <= value < float("inf"):
                raise ConfigError(f"latency.{name} must be a finite number >= 0 seconds, got {value!r}")
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
            raise ConfigError(f"num_gpus must be a positive integer, got {num_gpus!r}")
        if isinstance(pipeline_stages, bool) or not isinstance(pipeline_stages, int) or pipeline_stages < 1:
            raise ConfigError(f"gpu.pipeline_stages must be a positive integer, got {pipeline_stages!r}")
        if pipeline_stages > model.n_layers:
            raise ConfigError(f"gpu.pipeline_stages={pipeline_stages}: {model.name} has only {model.n_layers} layers "
                              f"to split into stages")
        if model.n_heads % num_gpus:
            raise ConfigError(f"gpu.count={num_gpus} cannot split {model.name}'s {model.n_heads} attention heads")
        if not model.intermediate_size and not model.n_experts:
            raise ConfigError(f"model {model.name}: latency=datasheet needs its MLP width (intermediate_size), "
                              f"which this model description lacks")
        if model.n_experts and (not model.moe_intermediate_size or model.intermediate_size):
            raise ConfigError(f"model {model.name}: a mixture of experts needs its expert width "
                              f"(moe_intermediate_size) and no dense MLP beside it (intermediate_size 0)")
        if num_gpus > 1 and all_reduce is None:
            from s3sim.hardware.network import NoAllReduce

            all_reduce = NoAllReduce()
        self.compute_efficiency, self.memory_efficiency, self.launch_s = float(ce), float(me), float(launch)
        self.attention_prefill_efficiency, self.attention_decode_efficiency = float(ap), float(ad)
        self.overhead_s, self.num_gpus, self.all_reduce = float(overhead_s), num_gpus, all_reduce
        self.kv_shards = min(num_gpus, model.n_kv_heads)  # each GPU holds (and copies) its KV heads' share
        self.pp = pipeline_stages
        if pipeline_stages > 1 and send_recv is None:
            send_recv = FreeSendRecv()
        self.send_recv = send_recv
        self._build(model, gpu, num_gpus)

    def _build(self, m: ModelSpec, gpu: GpuSpec, tp: int) -> None:
        """Per operator (flops per token / F, fixed bytes / B, bytes per token / B) for one GPU's shard."""
        F = float(gpu.peak_flops) * self.compute_efficiency
        B = float(gpu.mem_bandwidth) * self.memory_efficiency
        b = float(m.dtype_bytes)
        h = float(m.hidden_size)
        q = float(m.n_heads * m.head_dim // tp)
        kv = float(max(m.n_kv_heads // tp, 1) * m.head_dim)

        def matmul(n_in, n_out):
            return 2.0 * n_in * n_out / F, b * n_in * n_out / B, b * (n_in + n_out) / B

        def elementwise(width, streams):
            return 0.0, 0.0, b * width * streams / B

        layer = [elementwise(h, 2), matmul(h, q + 2 * kv), elementwise(q + kv, 2), matmul(q, h), elementwise(h, 2)]
        if m.intermediate_size:
            inter = float(m.intermediate_size // tp)
            up = (2.0 if m.gated_mlp else 1.0) * inter
            layer += [matmul(h, up), elementwise(inter, 3), matmul(inter, h)]
        layer.append(elementwise(h, 3))  # residual add
        self._layer = tuple(layer)
        self._layer_launches = len(layer) * self.launch_s
        self._moe = None
        if m.n_experts:  # the router, then the routed experts' up (gate-up) and down as grouped matmuls
            mi = float(m.moe_intermediate_size // tp)
            mats = 2.0 if m.gated_mlp else 1.0
            k, n = float(m.experts_per_token), float(m.n_experts)
            self._moe = (matmul(h, n), k * 2.0 * h * mats * mi / F, k * 2.0 * mi * h / F,
                         b * h * mats * mi / B, b * mi * h / B, k * b * (h + mats * mi) / B, k * b * (mi + h) / B,
                         1.0 - k / n, n, elementwise(k * mi, 3))
            self._layer_launches += 4 * self.launch_s
        self._once = (elementwise(h, 1), elementwise(h, 2))  # embedding gather, final norm: on T tokens
        vocab = float(-(-m.vocab_size // tp))
        self._lm_head = matmul(h, vocab)
        self._sampler = elementwise(vocab, 4)  # logits to probabilities, read and written in float32
        self._once_launches = 4 * self.launch_s
        Fa = float(gpu.peak_flops) * self.attention_prefill_efficiency  # attention kernels, fitted on their own
        Ba = float(gpu.mem_bandwidth) * self.attention_decode_efficiency
        self._att_prefill = (2.0 * q / Fa, b * (2 * q + 4 * kv) / B)  # per unit of prefill_sq; per prefill token
        self._att_decode = (4.0 * q / F, b * 2 * kv / Ba, b * 2 * q / Ba)  # per context token; per decode
        self._layers = float(-(-m.n_layers // self.pp))  # the slowest stage's (all of them without a pipeline)
        self._act_bytes = h * b

    # ---- pricing ------------------------------------------------------------------------------
    def _layers_time(self, p, sq, d, ctx, mx, prefilling, decoding, mx_ctx):
        """Seconds of the layers (of one stage) for `p` prefill and `d` decode tokens: the dense operators, the
        MoE experts and attention, each at its bound, plus their launches."""
        T = p + d
        layer = 0.0
        for fc, wb, tb in self._layer:
            layer = layer + mx(T * fc, wb + T * tb)
        if self._moe is not None:
            (rfc, rwb, rtb), upf, downf, upw, downw, upt, downt, miss, n, (_, _, act) = self._moe
            touched = n * (1.0 - _power(miss, T))
            layer = (layer + mx(T * rfc, rwb + T * rtb) + mx(T * upf, touched * upw + T * upt) + T * act
                     + mx(T * downf, touched * downw + T * downt))
        pf, pb = self._att_prefill
        df, db, dq = self._att_decode
        attention = prefilling * (mx(sq * pf, p * pb) + self.launch_s) + decoding * (
            mx_ctx(ctx * df, ctx * db + d * dq) + self.launch_s)
        return self._layers * (layer + self._layer_launches + attention)

    def _price(self, p, sq, d, ctx, seqs, mx, prefilling, decoding, mx_ctx=None):
        """Seconds of a busy iteration; `mx` is max for plain numbers, np.maximum for arrays (same arithmetic).
        `mx_ctx` (default `mx`) takes the decode-attention term alone, so that a decode run varies `ctx` as an
        array over plain-number tokens with each element priced by the very operations of a single step."""
        T = p + d
        t = self._layers_time(p, sq, d, ctx, mx, prefilling, decoding, mx if mx_ctx is None else mx_ctx)
        for fc, wb, tb in self._once:
            t = t + T * tb
        hf, hw, ht = self._lm_head
        t = t + mx(seqs * hf, hw + seqs * ht) + seqs * self._sampler[2] + self._once_launches + self.overhead_s
        if self.all_reduce is not None:
            t = t + 2.0 * self._layers * self.all_reduce.time_s(self.num_gpus, T * self._act_bytes)
        return t

    def iteration_time(self, prefill_tokens, prefill_sq, decode_tokens, decode_ctx):
        """The generic shape: every prefill samples as one sequence (`batch_time` counts them exactly)."""
        args = (prefill_tokens, prefill_sq, decode_tokens, decode_ctx)
        if all(type(a) in (int, float) for a in args):
            p, sq, d, ctx = (float(a) for a in args)
            _check_finite(p, sq, d, ctx)
            return self._scalar(p, sq, d, ctx, d + (1.0 if p > 0 else 0.0), d + (1.0 if p > 0 else 0.0))
        p, sq, d, ctx = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
        _check_finite(p, sq, d, ctx)
        for name, value in zip(_ARG_NAMES, (p, sq, d, ctx)):
            if np.any(value < 0):
                raise ConfigError(f"iteration_time: {name} must be >= 0 everywhere, got min {value.min()!r}")
        seqs = d + (p > 0)
        if self.pp == 1:
            t = self._price(p, sq, d, ctx, seqs, np.maximum, (p > 0) * 1.0, (d > 0) * 1.0)
        else:
            m = np.maximum(np.minimum(float(self.pp), seqs), 1.0)
            t = self._pipelined(p, sq, d, ctx, seqs, m, np.maximum, (p > 0) * 1.0, (d > 0) * 1.0)
        t = np.where(p + d > 0, t, 0.0)
        return float(t) if t.ndim == 0 else t

    def decode_run(self, decode_tokens, decode_ctx_start, k: int) -> np.ndarray:
        """`k` decode-only steps of a fixed batch in one pass: the token-count terms once, the context term as
        an array; equal, float for float, to `iteration_time` step by step (a test checks it)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ConfigError(f"decode_run: k must be a non-negative integer, got {k!r}")
        d = float(decode_tokens)
        _check_finite(d, float(decode_ctx_start))
        if d < 0 or float(decode_ctx_start) < 0:
            raise ConfigError(f"decode_run: decode_tokens and decode_ctx_start must be >= 0, got {d!r}, "
                              f"{decode_ctx_start!r}")
        if d == 0:
            return np.zeros(k, dtype=np.float64)
        ctx = float(decode_ctx_start) + np.arange(k, dtype=np.float64) * d
        if self.pp == 1:
            t = self._price(0.0, 0.0, d, ctx, d, max, 0.0, 1.0, mx_ctx=np.maximum)
        else:
            t = self._pipelined(0.0, 0.0, d, ctx, d, max(min(float(self.pp), d), 1.0), max, 0.0, 1.0,
                                mx_ctx=np.maximum)
        return np.array(np.broadcast_to(t, (k,)), dtype=np.float64)

    def _scalar(self, p, sq, d, ctx, seqs, nseq) -> float:
        for name, value in zip(_ARG_NAMES, (p, sq, d, ctx)):
            if value < 0:
                raise ConfigError(f"iteration_time: {name} must be >= 0, got {value!r}")
        if p + d <= 0:
            return 0.0
        prefilling, decoding = 1.0 if p > 0 else 0.0, 1.0 if d > 0 else 0.0
        if self.pp == 1:
            return float(self._price(p, sq, d, ctx, seqs, max, prefilling, decoding))
        m = max(min(float(self.pp), nseq), 1.0)
        return float(self._pipelined(p, sq, d, ctx, seqs, m, max, prefilling, decoding))

    def _pipelined(self, p, sq, d, ctx, seqs, m, mx, prefilling, decoding, mx_ctx=None):
        """One period of the pipeline (module doc): `m` microbatches cross the P stages; the heaviest holds
        every prefill chunk and its share of the decodes, and the period is P of its stage-times plus its
        P - 1 send/recvs, with the once-per-iteration operators on top."""
        dm = d / m
        T = p + dm  # the heaviest microbatch's tokens
        stage = self._layers_time(p, sq, dm, ctx / m, mx, prefilling, decoding, mx if mx_ctx is None else mx_ctx)
        if self.all_reduce is not None:
            stage = stage + 2.0 * self._layers * self.all_reduce.time_s(self.num_gpus, T * self._act_bytes)
        t = self.pp * stage + (self.pp - 1) * self.send_recv.time_s(T * self._act_bytes)
        for fc, wb, tb in self._once:  # embedding and final norm over every token
            t = t + (p + d) * tb
        hf, hw, ht = self._lm_head
        sm = seqs / m
        return (t + m * (mx(sm * hf, hw + sm * ht) + self._once_launches) + seqs * self._sampler[2]
                + self.overhead_s)

    def batch_time(self, out) -> float:
        """One iteration of a scheduler output: the sequences that sample are the decodes and the prefills
        that finish their prompt (a partial chunk samples nothing)."""
        seqs = float(out.decode_n + len(out.prefill) - len(out.partial))
        t = self._scalar(float(out.prefill_tokens), float(out.prefill_sq), float(out.decode_n),
                         float(out.decode_ctx), seqs, float(out.decode_n + len(out.prefill)))
        if out.transfer_tokens:
            t += self.swap_time(out.transfer_tokens)
        return t



def _power(base: float, x):
    """`base ** x` by Python's own pow for every element, so that an array of token counts is priced with
    the very same bits as one count at a time (numpy's vectorised power may differ in the last bit)."""
    if isinstance(x, np.ndarray):
        values, inverse = np.unique(x, return_inverse=True)
        return np.array([base ** float(v) for v in values], dtype=np.float64)[inverse].reshape(x.shape)
    return base ** x


def _check_finite(*values) -> None:
    for name, v in zip(_ARG_NAMES if len(values) == 4 else ("decode_tokens", "decode_ctx_start"), values):
        if not np.all(np.isfinite(v)):
            raise ConfigError(f"iteration_time: {name} must be a finite number, got {v!r}")
