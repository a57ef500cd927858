"""From a resolved config (Hydra's or a plain dict) to the objects of one simulation, validated.

Every bad value becomes a one-line `ConfigError` naming the config field and what would be valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.hardware.capacity import kv_capacity_tokens
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.models import get_model
from s3sim.core.kv_pool import KVPool
from s3sim.latency import RooflineLatency
from s3sim.metrics.summary import Slo
from s3sim.core.predictors import Buckets, OraclePredictor, SyntheticPredictor
from s3sim.core.policies.orca import FasterTransformerScheduler, OrcaScheduler
from s3sim.core.policies.paged import PagedScheduler
from s3sim.core.policies.paged_spf import PagedSpfScheduler
from s3sim.core.policies.s3 import S3Scheduler
from s3sim.core.policies.supervisor import Supervisor
from s3sim.workload import arrival_times, load_workload

POLICIES = ("ft", "orca", "s3", "oracle", "paged", "paged_spf")
PREDICTORS = ("oracle", "synthetic", "trained")
PREEMPTION_MODES = ("recompute", "swap")


@dataclass
class Setup:
    prompt_len: np.ndarray
    output_len: np.ndarray
    arrivals: np.ndarray
    scheduler: object
    latency: object
    slo: Slo
    capacity_tokens: int
    clipped: int


def get(cfg, path, default=None):
    node = cfg
    for key in path.split("."):
        if node is None or key not in node:
            return default
        node = node[key]
    return node


def choice(value, valid, field):
    if value not in valid:
        raise ConfigError(f"{field} '{value}' is unknown; valid: {', '.join(valid)}")
    return value


def positive_int(value, field, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


def build_workload(cfg):
    """Prompt and output lengths of the requests of `cfg`, their arrival times, and the workload table."""
    wl, idx, arr = sample_workload(cfg)
    return wl.prompt_len[idx], wl.output_len[idx], arr, wl


def sample_workload(cfg):
    """The workload table of `cfg`, the rows its requests take (a seeded sample, or the table cycled) and
    their arrival times. The executor reads the rows to find each request's prompt text."""
    w = cfg["workload"]
    max_seq_len = positive_int(cfg["max_seq_len"], "max_seq_len")
    kw = {k: w[k] for k in ("split", "length_field", "time_scale", "generator", "split_seed", "test_frac",
                                     "max_prompt")
          if get(w, k) is not None}
    wl = load_workload(w["name"], data_dir=get(w, "data_dir"), path=get(w, "path"), max_output=max_seq_len, **kw)
    rows = len(wl.prompt_len)
    n = positive_int(get(cfg, "num_requests"), "num_requests", allow_none=True) or rows
    seed = int(get(cfg, "seed", 0))
    # fewer requests than rows: a seeded sample; more: cycle through the table
    idx = np.random.default_rng(seed).permutation(rows)[:n] if n <= rows else np.arange(n) % rows
    a = cfg["arrival"]
    process = a["process"]
    ts = None
    if process == "trace":
        if wl.timestamps is None:
            raise ConfigError(f"arrival.process=trace needs a workload with timestamps (workload=trace), "
                              f"not workload={w['name']}")
        if n > len(wl.prompt_len):
            raise ConfigError(f"num_requests={n} exceeds the trace's {len(wl.prompt_len)} rows with arrival=trace")
        idx = np.arange(n)
        ts = wl.timestamps[idx]
    arr = arrival_times(n, process, rate=get(a, "rate"), burstiness=get(a, "burstiness", 1.0), seed=seed,
                        timestamps=ts)
    return wl, idx, arr


def build(cfg) -> Setup:
    policy = choice(cfg["policy"]["name"], POLICIES, "policy.name")
    max_seq_len = positive_int(cfg["max_seq_len"], "max_seq_len")
    model = get_model(cfg["model"]["name"])
    gpu = get_gpu(cfg["gpu"]["name"])
    num_gpus = positive_int(get(cfg, "gpu.count", 1), "gpu.count")
    fixed_cap = get(cfg, "kv_capacity_tokens")  # a given pool (the executor's, to compare against it)
    cap = (positive_int(fixed_cap, "kv_capacity_tokens") if fixed_cap is not None else
           kv_capacity_tokens(model, gpu, activation_reserve_frac=float(get(cfg, "gpu.activation_reserve_frac", 0.1)),
                              num_gpus=num_gpus))
    latency = build_latency(cfg["latency"], model, gpu, num_gpus)
    wl, idx, arr = sample_workload(cfg)
    prompt, output = wl.prompt_len[idx], wl.output_len[idx]
    keys = None if wl.keys is None else wl.keys[idx]
    need = int(prompt.max()) + max_seq_len
    if need > cap:
        raise ConfigError(
            f"KV capacity of {cap} tokens ({model.name} on {num_gpus} x {gpu.name}) cannot hold one request of "
            f"{int(prompt.max())} prompt + max_seq_len={max_seq_len} tokens; lower max_seq_len or use a larger GPU")
    sched = build_scheduler(cfg, cap, output, keys)
    s = cfg.get("slo") or {}
    slo = Slo(ttft=get(s, "ttft"), tpot=get(s, "tpot"), e2e=get(s, "e2e"))
    return Setup(prompt, output, arr, sched, latency, slo, cap, wl.clipped)


def build_latency(lat_cfg, model, gpu, num_gpus: int = 1):
    """The `latency` group: the roofline estimate, or a profile measured by `s3exec.profile`."""
    name = choice(lat_cfg["name"], ("roofline", "profiled"), "latency.name")
    if name == "profiled":
        from s3sim.latency.profiled import ProfiledLatency

        if not get(lat_cfg, "path"):
            raise ConfigError("latency.path must name a profile CSV (python -m s3exec.profile writes one)")
        over = get(lat_cfg, "overhead_s")
        if over is not None and (isinstance(over, bool) or not isinstance(over, (int, float))):
            raise ConfigError(f"latency.overhead_s must be seconds (a number) or null, got {over!r}")
        return ProfiledLatency(model, gpu, lat_cfg["path"], overhead_s=None if over is None else float(over))
    return RooflineLatency(model, gpu, compute_efficiency=float(lat_cfg["compute_efficiency"]),
                           memory_efficiency=float(lat_cfg["memory_efficiency"]),
                           overhead_s=float(lat_cfg["overhead_s"]), num_gpus=num_gpus)


def build_scheduler(cfg, cap: int, output, keys=None):
    """The policy of `cfg` over a KV pool of `cap` tokens (the simulator's and the executor's alike);
    `output` holds the requests' output lengths (quantile buckets are cut from them), `keys` their workload
    rows (a trained predictor finds each prompt by it)."""
    policy = choice(cfg["policy"]["name"], POLICIES, "policy.name")
    max_seq_len = positive_int(cfg["max_seq_len"], "max_seq_len")
    p = cfg["policy"]
    max_batch = positive_int(get(p, "max_batch_size"), "policy.max_batch_size", allow_none=True)
    mode = choice(get(p, "preemption_mode", "recompute"), PREEMPTION_MODES, "policy.preemption_mode")
    common = dict(max_batch_size=max_batch, preemption_mode=mode)
    if policy == "ft":
        sched = FasterTransformerScheduler(KVPool(cap), max_seq_len, **common)
    elif policy == "orca":
        sched = OrcaScheduler(KVPool(cap), max_seq_len, **common)
    elif policy in ("paged", "paged_spf"):
        bs = positive_int(get(p, "block_size", 16), "policy.block_size")
        wm = float(get(p, "watermark", 0.01))
        if not 0 <= wm < 1:
            raise ConfigError(f"policy.watermark must be a fraction in [0, 1), got {wm}")
        pool = KVPool(cap // bs, unit_tokens=bs)
        if policy == "paged":
            sched = PagedScheduler(pool, max_seq_len, watermark=wm, **common)
        else:
            sched = PagedSpfScheduler(pool, max_seq_len, build_predictor(cfg, max_seq_len, output, keys=keys),
                                      watermark=wm,
                                      **common)
    else:
        predictor = build_predictor(cfg, max_seq_len, output, force_oracle=(policy == "oracle"), keys=keys)
        sup = Supervisor(predictor, grow=get(p, "grow", "next"), in_place=bool(get(p, "in_place", False)),
                         feedback=get(cfg, "predictor.feedback", "mispredicted"))
        sched = S3Scheduler(KVPool(cap), max_seq_len, predictor, sup, **common)
        sched.name = policy
    return sched


def build_predictor(cfg, max_seq_len, output_lengths, force_oracle=False, keys=None):
    pc = cfg["predictor"]
    k = pc["num_buckets"]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"predictor.num_buckets must be an integer of at least 2, got {k!r}")
    scheme = choice(get(pc, "bucketing", "equal"), ("equal", "quantile"), "predictor.bucketing")
    buckets = (Buckets.equal(k, max_seq_len) if scheme == "equal"
               else Buckets.quantile(k, max_seq_len, output_lengths))
    name = "oracle" if force_oracle else choice(pc["name"], PREDICTORS, "predictor.name")
    if name == "oracle":
        return OraclePredictor(buckets)
    if name == "trained":  # its buckets come from its training data, not from this run's lengths
        from s3sim.predictor.trained.predictor import from_config
        return from_config(cfg, scheme, k, max_seq_len, keys)
    acc = pc["accuracy"]
    if not isinstance(acc, (int, float)) or math.isnan(acc):
        raise ConfigError(f"predictor.accuracy must be a number between 0 and 1, got {acc!r}")
    return SyntheticPredictor(buckets, float(acc), pc.get("error_shape", "uniform"), seed=int(get(cfg, "seed", 0)))
