"""What a config runs: its requests, and replicas behind a router (the `cluster` group: `replicas`, `router`,
`overrides`). One engine is a cluster of one replica, built here like any other (`build`).

Every replica serves the same model with the run's policy, GPU and latency model, unless `overrides`
gives it others: `cluster.overrides={1: {gpu: {name: a40}}, 2: {gpu: {count: 2}}}` (keys `gpu`,
`latency`, `policy`). An override's settings are merged over the run's, except that one naming a latency
model or policy (`{latency: {name: roofline}}`, or `{latency: roofline}`) starts from that group's own
defaults, as `latency=roofline` would compose them, and its other settings go over those. Every replica runs
the run's policy (`policy.name`): a cluster's summary row describes one policy, so a replica may differ in
its policy's settings but not in its name. Bad input is one line naming the replica, before anything is
simulated.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np

from s3sim.cluster.routers import ROUTERS
from s3sim.config import (build_engine, build_predictor, choice, engine_hardware, policy_class, served_clipped,
                          served_raised, served_requests)
from s3sim.core.errors import ConfigError
from s3sim.hardware.models import get_model, with_dtype
from s3sim.metrics.summary import Slo
from s3sim.spec import GpuEntry, RunSpec, get, run_spec

OVERRIDABLE = ("gpu", "latency", "policy")
COMPOSED = ("latency", "policy")  # groups whose options differ in their fields: a new name starts from its defaults


@dataclass
class Setup:
    """A run's requests (after `workload.overlong` met the model's context) and the replicas that serve them."""
    prompt_len: np.ndarray
    output_len: np.ndarray
    arrivals: np.ndarray
    replicas: list  # (scheduler, latency model, KV capacity in tokens) each
    gpus: list[str]  # each replica's GPU, as "<count> x <name>"
    router: object
    slo: Slo
    spec: RunSpec  # the run's own settings, checked
    clipped: int  # requests whose output was cut to max_seq_len
    workload_rows: int  # rows of the workload table the requests were drawn from
    context_clipped: int  # requests whose output was cut where it would run past the model's context
    model: object  # the ModelSpec served
    prefix_blocks: int  # trace rows that carry shared-prefix block hashes
    prefix: list | None = None  # each request's `Request.prefix` (the prompt blocks it shares), or None
    shared_prefix: tuple = (0, 1)  # (tokens, groups) prepended to every prompt by `shared_prefix`
    dropped: int = 0  # requests removed by workload.overlong=drop
    clipped_prompts: int = 0  # prompts cut by workload.overlong=clip
    zero_length_rows: int = 0  # requests whose trace row had 0 tokens somewhere, served as 1

    def _sole(self, i: int):
        if len(self.replicas) != 1:
            raise AttributeError(f"a cluster of {len(self.replicas)} replicas has no one engine: read `replicas`")
        return self.replicas[0][i]

    @property
    def scheduler(self):
        """The engine's scheduler (a run of one replica)."""
        return self._sole(0)

    @property
    def latency(self):
        """The engine's latency model (a run of one replica)."""
        return self._sole(1)

    @property
    def capacity_tokens(self) -> int:
        """The engine's KV capacity in tokens (a run of one replica)."""
        return self._sole(2)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def group_defaults(group: str, name: str) -> dict:
    """The config group option `name` as Hydra composes `group=name` (a file of conf/<group>/, or a preset)."""
    from s3sim.config_groups import group_entry

    return group_entry(group, name)


def _replica_config(cfg: dict, i: int, over) -> dict:
    """Replica `i`'s config: the run's `cfg` with its override `over` applied (see the module's docstring)."""
    if not isinstance(over, dict) or not over:
        raise ConfigError(f"cluster.overrides: replica {i} needs settings of {', '.join(OVERRIDABLE)}, got {over!r}")
    bad = sorted(set(over) - set(OVERRIDABLE), key=str)
    if bad:
        raise ConfigError(f"cluster.overrides: replica {i} sets {bad[0]!r}; a replica may differ in "
                          f"{', '.join(OVERRIDABLE)} only")
    out = copy.deepcopy(cfg)
    for group in OVERRIDABLE:
        if group not in over:
            continue
        node = over[group]
        if isinstance(node, str):  # `policy: s3` names the option, as `policy=s3` does
            node = {"name": node}
        if not isinstance(node, dict) or not node:
            raise ConfigError(f"cluster.overrides: replica {i} {group} must be settings such as {{name: ...}}, "
                              f"got {node!r}")
        base = out[group]
        if group in COMPOSED and "name" in node:
            try:
                base = group_defaults(group, node["name"])
            except ConfigError as e:
                raise ConfigError(f"cluster.overrides: replica {i} {e}") from None
        out[group] = _merge(base, node)
    ours, theirs = out["policy"]["name"], cfg["policy"]["name"]
    if ours != theirs:
        raise ConfigError(f"cluster.overrides: replica {i} sets policy.name={ours}, but every replica runs the run's "
                          f"policy ({theirs}): set policy={ours} for the whole cluster, or override only the "
                          f"policy's settings (e.g. {{{i}: {{policy: {{max_batch_size: 64}}}}}})")
    return out


def _index(key) -> int | None:
    """A replica index as written in `cluster.overrides` (1 or '1'), or None."""
    if isinstance(key, bool):
        return None
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    return None


def replica_configs(cfg, n: int) -> list[dict]:
    """The config of each replica: the run's, with its `cluster.overrides` entry applied."""
    overrides = get(cfg, "cluster.overrides")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise ConfigError(f"cluster.overrides must map replica indices to settings, got {overrides!r}")
    out = [cfg] * n
    for key, over in overrides.items():
        i = _index(key)
        if i is None:
            raise ConfigError(f"cluster.overrides: {key!r} is not a replica index (0..{n - 1})")
        if not 0 <= i < n:
            raise ConfigError(f"cluster.overrides: replica {i} does not exist (cluster.replicas={n}: 0..{n - 1})")
        out[i] = _replica_config(cfg, i, over)
    return out


def build(cfg) -> Setup:
    """The requests and replicas of `cfg` (one unless `cluster.replicas` says more), checked: the run's own
    settings once (`run_spec`), each replica's hardware before the workload is read, then its policy."""
    spec = run_spec(cfg)
    n = spec.replicas
    router_cls = ROUTERS[choice(spec.router, tuple(ROUTERS), "cluster.router")]
    policy_class(cfg)
    model = with_dtype(get_model(spec.model), spec.model_dtype)
    configs = replica_configs(cfg, n)
    specs = [spec if c is cfg else replace(spec, gpu=_replica(n, i, lambda: GpuEntry.read(c["gpu"])))
             for i, c in enumerate(configs)]
    hardware = [_replica(n, i, lambda: engine_hardware(c, s, model)) for i, (c, s) in enumerate(zip(configs, specs))]
    wl, fit, shared = served_requests(cfg, spec, model)
    keys = None if wl.keys is None else wl.keys[fit.rows]
    replicas = [_replica(n, i, lambda: build_engine(c, s, model, fit.prompt, fit.output, keys, hw))
                for i, (c, s, hw) in enumerate(zip(configs, specs, hardware))]
    gpus = [f"{s.gpu.gpus} x {s.gpu.name}" for s in specs]
    predictor = None
    if router_cls.uses_predictor:
        predictor = build_predictor(cfg, spec.max_seq_len, fit.output, keys=keys, seed=spec.seed)
    router = router_cls(predictor, spec.max_seq_len)
    return Setup(fit.prompt, fit.output, fit.arrivals, replicas, gpus, router, Slo.from_config(cfg), spec,
                 served_clipped(wl, fit.rows), len(wl.prompt_len), fit.context_clipped, model, wl.prefix_blocks,
                 fit.prefix, shared, fit.dropped, fit.clipped_prompts, served_raised(wl, fit.rows))


def _replica(n: int, i: int, make):
    """`make()`, its bad input named by replica where there are several."""
    try:
        return make()
    except ConfigError as e:
        if n == 1:
            raise
        raise ConfigError(f"cluster replica {i}: {e}") from None
