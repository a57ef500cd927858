"""Shared pieces of the executor tests: the tiny random Llama, small workloads, policies over a given KV
budget, and `model.generate` as the reference for greedy tokens."""
from __future__ import annotations

import functools

import numpy as np
import torch

from s3exec.engine import Executor
from s3exec.generate import generate_reference
from s3exec.kv_cache import KVCache
from s3exec.model_runner import ModelRunner
from s3exec.models import load_model
from s3exec.prompts import synthetic_prompts
from s3sim.config import build_scheduler
from s3sim.core.policies import POLICIES as POLICY_CLASSES
from s3sim.core.request import Request

torch.set_num_threads(1)
MSL = 48  # max_seq_len of the test policies
POLICIES = ("ft", "orca", "s3", "oracle", "paged")  # the policies the paged executor runs (hf: test_hf_policy)


@functools.lru_cache(maxsize=1)
def tiny():
    """The `tiny-llama` preset with random weights (2 layers, hidden 64, 4 heads, 2 KV heads, vocab 256)."""
    return load_model("tiny-llama", seed=0)


def workload(n=8, seed=1, max_prompt=24, max_output=40):
    rng = np.random.default_rng(seed)
    plen = rng.integers(4, max_prompt + 1, n)
    out = rng.integers(1, max_output + 1, n)
    prompts = synthetic_prompts(plen, tiny().vocab_size, seed)
    return prompts, out.tolist()


def requests(prompts, outputs, arrivals=None):
    arrivals = arrivals if arrivals is not None else [0.0] * len(prompts)
    return [Request(i, len(p), int(o), float(a)) for i, (p, o, a) in enumerate(zip(prompts, outputs, arrivals))]


def scheduler(policy, cap_tokens, outputs, mode="recompute", accuracy=0.8, error_shape="adjacent", block_size=4,
              msl=MSL, repredict=None, **policy_kw):
    paged = "watermark" in POLICY_CLASSES[policy].Config.__dataclass_fields__  # the paged policies (not s3's blocks)
    paging = ({"block_size": block_size, "watermark": 0.0} if paged else
              {"block_size": policy_kw.pop("s3_block_size", 1)} if policy in ("s3", "oracle") else {})
    if policy == "vllm":
        policy_kw.setdefault("prefix_caching", False)  # the executor keeps no prefix cache (vllm's default is on)
    cfg = {"max_seq_len": msl, "seed": 0,
           "policy": {"name": policy, "preemption_mode": mode, **paging, **policy_kw},
           "predictor": {"name": "synthetic", "num_buckets": 4, "bucketing": "equal", "accuracy": accuracy,
                         "error_shape": error_shape, "repredict": repredict}}
    return build_scheduler(cfg, cap_tokens, np.asarray(outputs))


def executor(sched, mode="fixed", eos_ids=(), max_tokens=200, kernel="sdpa", holders=64, block_size=16):
    """The executor on the tiny model, its cache built as `build_exec` builds it (blocks of 16 tokens for a
    token pool, with one partial block for each of up to `holders` requests)."""
    m = tiny()
    cache = KVCache.for_pool(sched.pool, m.num_layers, m.kv_heads, m.head_dim, max_tokens, holders, block_size)
    return Executor(ModelRunner(m.model, cache, kernel=kernel), sched, mode=mode, eos_ids=eos_ids)


def run(policy, cap_tokens, prompts, outputs, exec_mode="fixed", eos_ids=(), caps=None, arrivals=None,
        kernel="sdpa", **kw):
    sched = scheduler(policy, cap_tokens, outputs, **kw)
    reqs = requests(prompts, outputs, arrivals)
    return executor(sched, exec_mode, eos_ids, kernel=kernel).run(reqs, prompts, caps)


def reference(prompts, outputs, eos=None):
    """`model.generate`'s greedy tokens for each prompt alone (SDPA attention, no paging)."""
    return generate_reference(tiny().model, prompts, outputs, eos)
