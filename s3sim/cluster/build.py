"""Replicas and router from a config: the `cluster` group (`replicas`, `router`, `overrides`).

Every replica serves the same model with the run's policy, GPU and latency model, unless `overrides`
gives it others: `cluster.overrides={1: {gpu: {name: a40}}, 2: {gpu: {count: 2}}}` (keys `gpu`,
`latency`, `policy`, merged over the run's). Bad input is one line naming the replica.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from s3sim.cluster.routers import ROUTERS
from s3sim.config import (build_engine, build_predictor, choice, get, policy_class, positive_int, served_clipped,
                          served_requests)
from s3sim.core.errors import ConfigError
from s3sim.hardware.models import get_model, with_dtype
from s3sim.metrics.summary import Slo

OVERRIDABLE = ("gpu", "latency", "policy")


@dataclass
class ClusterSetup:
    prompt_len: np.ndarray
    output_len: np.ndarray
    arrivals: np.ndarray
    replicas: list  # (scheduler, latency model, KV capacity in tokens) each
    gpus: list[str]  # each replica's GPU, as "<count> x <name>"
    router: object
    slo: Slo
    clipped: int
    workload_rows: int
    context_clipped: int
    model: object
    prefix_blocks: int
    prefix: list | None = None  # each request's `Request.prefix`, or None
    shared_prefix: tuple = (0, 1)
    dropped: int = 0
    clipped_prompts: int = 0


def replica_count(cfg) -> int:
    return positive_int(get(cfg, "cluster.replicas", 1), "cluster.replicas")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def replica_configs(cfg, n: int) -> list[dict]:
    """The config of each replica: the run's, with its `cluster.overrides` entry merged in."""
    overrides = get(cfg, "cluster.overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"cluster.overrides must map replica indices to settings, got {overrides!r}")
    out = [cfg] * n
    for key, over in overrides.items():
        try:
            i = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"cluster.overrides: {key!r} is not a replica index (0..{n - 1})") from None
        if not 0 <= i < n:
            raise ConfigError(f"cluster.overrides: replica {i} does not exist (cluster.replicas={n}: 0..{n - 1})")
        if not isinstance(over, dict) or not over:
            raise ConfigError(f"cluster.overrides: replica {i} needs settings of {', '.join(OVERRIDABLE)}, got {over!r}")
        bad = sorted(set(over) - set(OVERRIDABLE))
        if bad:
            raise ConfigError(f"cluster.overrides: replica {i} sets {bad[0]!r}; a replica may differ in "
                              f"{', '.join(OVERRIDABLE)} only")
        out[i] = _merge(copy.deepcopy(cfg), over)
    return out


def build_cluster(cfg) -> ClusterSetup:
    n = replica_count(cfg)
    router_cls = ROUTERS[choice(get(cfg, "cluster.router", "round_robin"), tuple(ROUTERS), "cluster.router")]
    max_seq_len = positive_int(cfg["max_seq_len"], "max_seq_len")
    policy_class(cfg)
    model = with_dtype(get_model(cfg["model"]["name"]), get(cfg, "model.dtype"))
    configs = replica_configs(cfg, n)
    wl, fit, shared = served_requests(cfg, model, max_seq_len)
    prompt, output = fit.prompt, fit.output
    keys = None if wl.keys is None else wl.keys[fit.rows]
    replicas, gpus = [], []
    for i, c in enumerate(configs):
        try:
            policy_class(c)
            replicas.append(build_engine(c, model, prompt, output, keys))
        except ConfigError as e:
            raise ConfigError(f"cluster replica {i}: {e}") from None
        gpus.append(f"{get(c, 'gpu.count', 1) * get(c, 'gpu.pipeline_stages', 1)} x {c['gpu']['name']}")
    predictor = None
    if router_cls.uses_predictor:
        predictor = build_predictor(cfg, max_seq_len, output, keys=keys)
    router = router_cls(predictor, max_seq_len)
    return ClusterSetup(prompt, output, fit.arrivals, replicas, gpus, router, Slo.from_config(cfg),
                        served_clipped(wl, fit.rows), len(wl.prompt_len), fit.context_clipped, model, wl.prefix_blocks,
                        fit.prefix, shared, fit.dropped, fit.clipped_prompts)
