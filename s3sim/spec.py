"""A run's own settings, read and checked once: `RunSpec` (frozen), built by `run_spec` from a resolved config
(Hydra's or a plain dict) at every entry point, and read by everything that builds the run from then on.

It holds the top-level knobs (`max_seq_len`, `seed`, `num_requests`, `repeats`, `max_jump`, `shared_prefix`,
`kv_capacity_tokens`), the arrival process, the GPU entry, the workload entry (`WorkloadSpec`: the table, where
it is, what an overlong prompt gets, and the loader's options that are set, which the loader checks as it
knows which table takes which) and the cluster's shape. The groups with options of their own are read by their
own structured configs: `policy` (`POLICIES[...].Config`), `latency` (`LATENCY_MODELS[...].Config`),
`predictor` (`s3sim.core.predictors.spec`).
Each knob has one default (the config file's, or for the GPU entry `config_groups.GPU_ENTRY`) and one check
here; a bad value is one `ConfigError` naming the field and what would be valid.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from s3sim.config_groups import GPU_ENTRY
from s3sim.core.errors import ConfigError


def get(cfg, path, default=None):
    """`cfg`'s value at the dotted `path`, or `default` where a key on the way is missing."""
    node = cfg
    for key in path.split("."):
        if node is None or key not in node:
            return default
        node = node[key]
    return node


MAX_COUNT = 2**31 - 1  # the largest count a setting takes: past it numpy's int64 sums and arrays overflow
MAX_THREADS = 1024  # torch's CPU threads, s3exec's and s3predict's: past this torch cannot map its segments


def positive_int(value, field, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    if value > MAX_COUNT:
        raise ConfigError(f"{field} must be at most {MAX_COUNT:,}, got {value!r}")
    return int(value)


_WORDS = {**dict.fromkeys(("true", "yes", "on", "y", "1"), True),  # OmegaConf's words for a bool
          **dict.fromkeys(("false", "no", "off", "n", "0"), False)}


def flag(value, field: str, default: bool) -> bool:
    """A true/false setting read as OmegaConf reads a typed one (true/false, yes/no, on/off, 1/0), `default`
    where unset; anything else is an error (Python's bool() would take "off" for true)."""
    if value is None:
        return default
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    raise ConfigError(f"{field} must be true or false, got {value!r}")


def _count(value, field: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class GpuEntry:
    """The `gpu` group's entry: the preset and how many GPUs serve one engine."""
    name: str
    count: int = GPU_ENTRY["count"]  # GPUs in tensor parallel
    pipeline_stages: int = GPU_ENTRY["pipeline_stages"]  # stages of `count` GPUs each
    activation_reserve_frac: float = GPU_ENTRY["activation_reserve_frac"]  # memory kept from the KV pool
    data_parallel: int = GPU_ENTRY["data_parallel"]  # an MoE model's ranks of one GPU each, stepping together
    expert_parallel: bool = GPU_ENTRY["expert_parallel"]  # its experts split over those ranks

    @property
    def gpus(self) -> int:
        """GPUs one engine runs on: count x pipeline_stages x data_parallel."""
        return self.count * self.pipeline_stages * self.data_parallel

    @classmethod
    def read(cls, node) -> "GpuEntry | None":
        """The entry of a `gpu` node, checked (None: a run with no GPU preset, as the executor's)."""
        if node is None or get(node, "name") is None:
            return None
        known = [f.name for f in fields(cls)]
        unknown = [k for k in node if k not in known]  # a cluster override's dict, which no schema checks
        if unknown:
            raise ConfigError(f"gpu.{unknown[0]} is not a gpu setting (valid: {', '.join(known)})")
        frac = get(node, "activation_reserve_frac", GPU_ENTRY["activation_reserve_frac"])
        if isinstance(frac, bool) or not isinstance(frac, (int, float, np.integer, np.floating)) or not 0 <= frac < 1:
            raise ConfigError(f"gpu.activation_reserve_frac must be a fraction in [0, 1), got {frac!r}")
        ep = get(node, "expert_parallel", GPU_ENTRY["expert_parallel"])
        if not isinstance(ep, bool):
            raise ConfigError(f"gpu.expert_parallel must be true or false, got {ep!r}")
        entry = cls(str(node["name"]), positive_int(get(node, "count", GPU_ENTRY["count"]), "gpu.count"),
                    positive_int(get(node, "pipeline_stages", GPU_ENTRY["pipeline_stages"]), "gpu.pipeline_stages"),
                    float(frac), positive_int(get(node, "data_parallel", GPU_ENTRY["data_parallel"]),
                                              "gpu.data_parallel"), ep)
        if entry.data_parallel > 1 and (entry.count > 1 or entry.pipeline_stages > 1):
            raise ConfigError(f"gpu.data_parallel={entry.data_parallel} with gpu.count={entry.count} and "
                              f"gpu.pipeline_stages={entry.pipeline_stages}: data-parallel ranks of one GPU each are "
                              "modelled (set gpu.count=1 and gpu.pipeline_stages=1)")
        if ep and entry.data_parallel == 1:
            raise ConfigError("gpu.expert_parallel=true needs gpu.data_parallel > 1: the experts are split over the "
                              "data-parallel ranks")
        return entry


# the workload loader's options (`s3sim.workload.load_workload`), passed on where the config sets them
WORKLOAD_OPTIONS = ("split", "length_field", "time_scale", "generator", "split_seed", "test_frac", "max_prompt",
                    "format", "columns", "time_unit", "hash_block_tokens")
OVERLONG = ("error", "drop", "clip")  # what a prompt that leaves no room for an output token gets


@dataclass(frozen=True)
class WorkloadSpec:
    """The `workload` group's entry: its table (`name`), where it is (`data_dir`, `path`), what an overlong
    prompt gets (`overlong`, `s3sim.config.fit_prompts`) and the loader's options the config sets (`options`,
    in `WORKLOAD_OPTIONS` order)."""
    name: str
    data_dir: str | None = None
    path: str | None = None
    overlong: str = "drop"
    options: tuple = ()

    @classmethod
    def read(cls, node) -> "WorkloadSpec | None":
        """The entry of a `workload` node, checked (None: a run with no workload, as the executor's given prompts)."""
        if node is None:
            return None
        name = get(node, "name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"workload.name must name a workload (a config in conf/workload/), got {name!r}")
        overlong = get(node, "overlong", "drop")
        if overlong not in OVERLONG:
            raise ConfigError(f"workload.overlong '{overlong}' is unknown; valid: {', '.join(OVERLONG)}")
        options = tuple((k, get(node, k)) for k in WORKLOAD_OPTIONS if get(node, k) is not None)
        for key in ("data_dir", "path"):
            value = get(node, key)
            if value is not None and (not isinstance(value, str) or not value):
                hint = f" (quote a name that reads as a number: workload.{key}=\"'{value}'\")" if isinstance(
                    value, (int, float)) else ""
                raise ConfigError(f"workload.{key} must be a path or null, got {value!r}{hint}")
        return cls(name, get(node, "data_dir"), get(node, "path"), overlong, options)

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    @property
    def label(self) -> str:
        """The table and, for a text workload answered by another model, that model: `alpaca-<generator>`."""
        generator = self.option("generator")
        return self.name + (f"-{generator}" if generator else "")


@dataclass(frozen=True)
class RunSpec:
    """Everything of a run that is not a policy, a latency model, a predictor or a workload option."""
    max_seq_len: int  # output cap per request
    seed: int = 0
    num_requests: int | None = None  # None: every workload row once
    repeats: int = 1  # seeds seed .. seed + repeats - 1
    max_jump: int | None = None  # 1 forces step-by-step iterations
    kv_capacity_tokens: int | None = None  # a given KV pool (the executor's, to compare against it)
    shared_prefix_tokens: int = 0  # every prompt begins with one of `shared_prefix_groups` shared prefixes
    shared_prefix_groups: int = 1
    arrival_process: str = "offline"
    arrival_rate: float | None = None
    arrival_burstiness: float = 1.0
    replicas: int = 1  # engines behind the router
    router: str = "round_robin"
    gpu: GpuEntry | None = None  # None: no GPU preset (the executor runs on its own device)
    model: str | None = None  # the model preset (or a config.json) the run names
    model_dtype: str | None = None
    workload: WorkloadSpec | None = None  # None: no workload (the executor's given prompts)

    @property
    def offline(self) -> bool:
        return self.arrival_process == "offline"


def _default(name: str):
    """`RunSpec`'s default for field `name`: what a config that leaves the knob out gets (the config files state
    the same values; a test holds them equal)."""
    return RunSpec.__dataclass_fields__[name].default


def seed_of(cfg) -> int:
    """The run's `seed`: a non-negative integer (1.7 or -1 would be coerced or refused by numpy unseen)."""
    value = get(cfg, "seed", _default("seed"))
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {value!r}")
    if value >= 2**63:
        raise ConfigError(f"seed must be below 2**63 (what torch seeds), got {value!r}")
    return int(value)


# the arrival knobs each process reads (a knob set for a process that does not read it would be ignored)
ARRIVAL_KNOBS = {"offline": (), "trace": (), "poisson": ("rate",), "gamma": ("rate", "burstiness")}


def check_arrival_knobs(arrival) -> None:
    """A rate or burstiness set for an arrival process that takes none is an error, not a silent no-op:
    `+arrival.rate=3` over the default `arrival=offline` would still send every request at t=0."""
    process = get(arrival, "process", _default("arrival_process"))
    for knob in ("rate", "burstiness"):
        value = get(arrival, knob)
        if value is not None and isinstance(process, str) and knob not in ARRIVAL_KNOBS.get(process, (knob,)):
            takers = [p for p, knobs in ARRIVAL_KNOBS.items() if knob in knobs]
            raise ConfigError(f"arrival.{knob}={value} is set, but arrival={process} takes no {knob}: choose "
                              f"{' or '.join(f'arrival={p}' for p in takers)} with it (e.g. arrival={takers[-1]} "
                              f"arrival.{knob}={value})")


def run_spec(cfg) -> RunSpec:
    """`cfg`'s own settings, each checked once (see the module's docstring)."""
    arrival = get(cfg, "arrival") or {}
    check_arrival_knobs(arrival)
    repeats = get(cfg, "repeats")
    return RunSpec(
        max_seq_len=positive_int(get(cfg, "max_seq_len"), "max_seq_len"),
        seed=seed_of(cfg),
        num_requests=positive_int(get(cfg, "num_requests"), "num_requests", allow_none=True),
        repeats=positive_int(_default("repeats") if repeats is None else repeats, "repeats"),
        max_jump=positive_int(get(cfg, "max_jump"), "max_jump", allow_none=True),
        kv_capacity_tokens=positive_int(get(cfg, "kv_capacity_tokens"), "kv_capacity_tokens", allow_none=True),
        shared_prefix_tokens=_count(get(cfg, "shared_prefix.tokens", _default("shared_prefix_tokens")),
                                    "shared_prefix.tokens", 0),
        shared_prefix_groups=_count(get(cfg, "shared_prefix.groups", _default("shared_prefix_groups")),
                                    "shared_prefix.groups", 1),
        arrival_process=get(arrival, "process", _default("arrival_process")),
        arrival_rate=get(arrival, "rate"),
        arrival_burstiness=get(arrival, "burstiness", _default("arrival_burstiness")),
        replicas=positive_int(get(cfg, "cluster.replicas", _default("replicas")), "cluster.replicas"),
        router=get(cfg, "cluster.router", _default("router")),
        gpu=GpuEntry.read(get(cfg, "gpu")),
        model=get(cfg, "model.name"),
        model_dtype=get(cfg, "model.dtype"),
        workload=WorkloadSpec.read(get(cfg, "workload")),
    )
