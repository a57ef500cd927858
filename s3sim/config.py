"""From a resolved config (Hydra's or a plain dict) to the objects of one run, validated; shared by the
simulator and the executor.

The policy and the latency model are chosen by name (`POLICIES`, `LATENCY_MODELS`) and read through their
structured configs (dataclasses: OmegaConf checks types and unknown keys, the dataclass checks values).
Every bad value becomes a one-line `ConfigError` naming the config field and what would be valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.policies import POLICIES
from s3sim.core.predictors import Buckets, OraclePredictor, SyntheticPredictor
from s3sim.core.predictors.spec import PredictorSpec
from s3sim.hardware.capacity import kv_capacity_tokens, rank_weight_bytes
from s3sim.hardware.gpus import GiB, get_gpu
from s3sim.hardware.models import get_model
from s3sim.hardware.network import RING_FALLBACK
from s3sim.latency import LATENCY_MODELS
from s3sim.simulator.engine import LATEST_TIME_S as LATEST_ARRIVAL_S  # arrivals past it would come out rounded
from s3sim.workload import arrival_times, load_workload
from s3sim.spec import GpuEntry, RunSpec, flag, run_spec, seed_of
from s3sim.workload.prefix import shared_prefix

PREDICTORS = ("oracle", "synthetic", "trained")
from s3sim.config_groups import CONF_DIR, register_presets  # noqa: F401 (CONF_DIR: imported from here by the commands)

register_presets()  # model=<preset> and gpu=<preset> are choices from the preset files alone


def rows_used(requests: int, rows: int, trace_prefix: bool = False) -> str:
    """How a run's requests relate to its workload's rows: every row once, a seeded sample, the first rows
    (a trace replayed with its own timestamps keeps its order), or cycled."""
    if requests == rows:
        return "all"
    if requests < rows:
        return "first" if trace_prefix else "sample"
    return "cycled"


def rows_note(row: dict) -> str | None:
    """The line a command prints when a run did not replay its workload's rows exactly once."""
    use = row.get("rows_used")
    if use in (None, "all"):
        return None
    how = {"sample": "a seeded sample", "first": "the first rows, in the trace's order", "cycled": "cycled"}.get(use, use)
    asked = row['num_requests'] + (row.get("dropped_requests") or 0)
    return (f"note: {asked:,} requests from {row['workload_rows']:,} workload rows ({how}); "
            f"num_requests=null replays every row once")


TAIL_NOTE = 0.1  # a run whose tail (`tail_frac`) is this share of its duration or more says so


def counted(n: int, one: str, many: str) -> str:
    """`n` with the words that agree with it: counted(1, 'request was', 'requests were') -> '1 request was'."""
    return f"{n:,} {one if n == 1 else many}"


def run_notes(row: dict) -> list[str]:
    """Every line a command prints about what it changed in the workload it was given (recorded in the
    summary too): rows sampled or cycled, outputs cut to max_seq_len or to the model's context."""
    notes = [rows_note(row)]
    if row.get("clipped_outputs"):
        notes.append(f"note: {counted(row['clipped_outputs'], 'request had its', 'requests had their')} output cut "
                     f"to max_seq_len={row['max_seq_len']} (clipped_outputs)")
    if row.get("dropped_requests"):
        notes.append(f"note: {counted(row['dropped_requests'], 'request was', 'requests were')} dropped: their "
                     "prompt leaves no room for an output token in the model's context (dropped_requests; "
                     "workload.overlong=drop, as a server rejects them; workload.overlong=clip keeps their last "
                     "tokens, =error refuses the run); num_requests, offered_rate, goodput and slo_attainment count "
                     "the served requests only")
    if row.get("zero_length_rows"):
        notes.append(f"note: {counted(row['zero_length_rows'], 'request', 'requests')} came from trace rows with a "
                     "0-token prompt or output, served as 1 token (zero_length_rows): a request has a prompt and "
                     "yields at least one")
    if row.get("clipped_prompts"):
        notes.append(f"note: {counted(row['clipped_prompts'], 'prompt kept only its', 'prompts kept only their')} "
                     "last tokens to fit the model's context (clipped_prompts; workload.overlong=clip)")
    if row.get("context_clipped"):
        notes.append(f"note: {counted(row['context_clipped'], 'request stops where its', 'requests stop where their')}"
                     " output would run past the model's context window (context_clipped)")
    tail = row.get("tail_frac")
    if isinstance(tail, float) and tail >= TAIL_NOTE:
        when = ("after the last arrival" if row.get("offered_rate") != float("inf") else
                "with the batch under a tenth of its peak, a few long requests running out")
        steady = row.get("steady_request_throughput")
        notes.append(f"note: {tail:.0%} of the run came {when} (tail_frac): request_throughput "
                     f"{row['request_throughput']:.4g} req/s counts it, steady_request_throughput "
                     + (f"{steady:.4g} req/s does not" if isinstance(steady, float) and steady == steady else
                        "is undefined: fewer than two requests finished within the steady part"))
    if row.get("workload") == "trace" and row.get("arrival") != "trace":
        notes.append(f"note: the trace's timestamps are not replayed (arrival={row.get('arrival')}); "
                     f"arrival=trace replays them")
    if row.get("prefix_blocks") or row.get("shared_prefix_tokens"):
        what = (f"{row['prefix_blocks']:,} trace rows carry prefix block hashes (hash_ids)" if row.get("prefix_blocks")
                else f"every prompt begins with one of {row.get('shared_prefix_groups')} shared prefixes of "
                     f"{row['shared_prefix_tokens']:,} tokens (shared_prefix), prepended to the workload's")
        used = row.get("policy") == "vllm" and row.get("prefix_caching")
        notes.append(f"note: {what}; " + ("policy=vllm's prefix cache reuses their KV blocks" if used else
                     "no KV is shared between requests: only policy=vllm with policy.prefix_caching=true reuses it"))
    if isinstance(row.get("model_assumed"), str) and row["model_assumed"]:
        notes.append(f"note: where the model's config says nothing or what is not modelled, the simulator assumed "
                     f"{row['model_assumed']} (model_assumed; model.dtype overrides the dtype)")
    fallbacks = [p for p in str(row.get("collectives") or "").split(" | ") if RING_FALLBACK in p]
    if fallbacks:
        notes.append(f"note: priced as a ring for want of a measured table: {'; '.join(fallbacks)} (collectives; "
                     "latency.all_reduce=link:<GB/s>:<us> or a measured CSV prices tensor parallelism's all-reduces "
                     "otherwise, and none takes every collective as free)")
    return [n for n in notes if n]


def unread_notes(resolved: dict, row: dict | None = None, overrides=()) -> list[str]:
    """Lines saying which settings of the run's config nothing read: a sweep over one of them would run the same
    experiment at every point. `row`: the run's summary; `overrides`: the command line's (Hydra's task overrides)."""
    notes = []
    cluster = resolved.get("cluster") or {}
    router = cluster.get("router")
    if cluster.get("replicas", 1) == 1 and router not in (None, "round_robin"):
        notes.append(f"note: cluster.router={router} routes nothing with one replica (cluster.replicas=1): the run is "
                     "the single engine's, as with any router")
    given = [o.lstrip("+~") for o in overrides if o.lstrip("+~").partition("=")[0].split(".")[0] == "predictor"]
    # one engine only: the predicted router, or a replica's own policy (cluster.overrides), may read a prediction
    # the run's policy does not
    alone = cluster.get("replicas", 1) == 1 and not cluster.get("overrides")
    if given and alone and row is not None and row.get("predictor") == "none":
        notes.append(f"note: {', '.join(given)}: policy={row.get('policy')} reads no length prediction, so the run "
                     "is the same whatever the predictor (the summary's predictor column says none)")
    return notes


def fit_context(prompt: np.ndarray, output: np.ndarray, rows: np.ndarray, context: int, max_seq_len: int,
                who: str) -> tuple[np.ndarray, int]:
    """Requests as a server with a context window of `context` tokens takes them: `max_seq_len` must fit the
    window, every prompt must leave room for one output token (`fit_prompts` makes them), and an output that
    would run past the window stops at its end, as vLLM stops at `max_model_len`. Returns the outputs and how
    many were cut."""
    if max_seq_len > context:
        raise ConfigError(f"max_seq_len={max_seq_len} exceeds the context window of {who} ({context:,} tokens); "
                          f"lower max_seq_len to at most {context}")
    long = np.flatnonzero(prompt >= context)
    if len(long):
        i = int(long[0])
        raise ConfigError(f"workload row {int(rows[i])}: a prompt of {int(prompt[i]):,} tokens leaves no room for an "
                          f"output token in the context window of {who} ({context:,} tokens); set "
                          f"workload.overlong=drop (a server rejects it) or workload.overlong=clip, or use a model "
                          f"with a longer context")
    room = context - prompt
    cut = output > room
    return np.where(cut, room, output), int(cut.sum())


@dataclass
class Fitted:
    """The requests of a run after `workload.overlong` met the model's context window."""
    prompt: np.ndarray
    output: np.ndarray
    arrivals: np.ndarray
    rows: np.ndarray  # the workload row of each request
    prefix: list | None
    dropped: int = 0  # requests removed: their prompt leaves no room for an output token
    clipped_prompts: int = 0  # prompts that kept only their last tokens to fit
    context_clipped: int = 0  # outputs cut where they would run past the context


def fit_prompts(mode: str, prompt, output, arrivals, rows, prefix, context: int, max_seq_len: int, who: str) -> Fitted:
    """Apply `workload.overlong` to every prompt that leaves no room for an output token in `context`:
    `error` refuses the run naming the first such row; `drop` removes those requests, as a server rejects
    them; `clip` keeps each such prompt's last tokens, as many as leave room for its whole output (vLLM's
    `truncate_prompt_tokens` keeps the last ones too), so it shares no prefix any more. Then outputs that
    would run past the context stop at its end (`fit_context`)."""
    long = prompt >= context
    dropped = clipped = 0
    if long.any() and mode == "drop":
        keep = ~long
        dropped = int(long.sum())
        prompt, output, arrivals, rows = prompt[keep], output[keep], arrivals[keep], rows[keep]
        prefix = None if prefix is None else [p for p, k in zip(prefix, keep.tolist()) if k]
        if not len(prompt):
            raise ConfigError(f"workload.overlong=drop: every one of the {dropped:,} requests has a prompt that leaves "
                              f"no room in the context window of {who} ({context:,} tokens); use a model with a "
                              f"longer context or workload.overlong=clip")
    elif long.any() and mode == "clip":
        clipped = int(long.sum())
        prompt = np.where(long, np.maximum(context - np.minimum(output, max_seq_len), 1), prompt)
        if prefix is not None:
            prefix = [None if c else p for p, c in zip(prefix, long.tolist())]
    output, context_clipped = fit_context(prompt, output, rows, context, max_seq_len, who)
    return Fitted(prompt, output, arrivals, rows, prefix, dropped, clipped, context_clipped)


def choice(value, valid, field):
    if value not in valid:
        raise ConfigError(f"{field} '{value}' is unknown; valid: {', '.join(valid)}")
    return value


def structured(schema, node, group: str):
    """`node` (a dict or DictConfig) read into the dataclass `schema`: OmegaConf checks each field's type and
    refuses keys the schema lacks, the dataclass's `__post_init__` checks values."""
    import dataclasses

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for f in dataclasses.fields(schema):  # OmegaConf would take 2 for true: read as `flag` reads one
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in ("bool", "bool | None") and f.name in node and node[f.name] is not None:
            flag(node[f.name], f"{group}.{f.name}", False)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except OmegaConfBaseException as e:
        import difflib

        fields = [f.name for f in dataclasses.fields(schema)]
        key = str(e.full_key).rsplit(".", 1)[-1]
        near = difflib.get_close_matches(key, fields, n=1, cutoff=0.6) if key not in fields else []
        raise ConfigError(f"{group}.{e.full_key}: {str(e.msg).splitlines()[0]}"
                          + (f"; did you mean {group}.{near[0]}?" if near else "")) from None


def check_fits(capacity_tokens: int, longest_prompt: int, max_seq_len: int, what: str, remedy: str) -> None:
    """Refuse a KV pool that cannot hold even the largest request alone (nothing could ever run it)."""
    if longest_prompt + max_seq_len > capacity_tokens:
        raise ConfigError(f"KV capacity of {capacity_tokens} tokens ({what}) cannot hold one request of "
                          f"{longest_prompt} prompt + max_seq_len={max_seq_len} tokens; {remedy}")


def build_workload(cfg):
    """Prompt and output lengths of the requests of `cfg`, their arrival times, and the workload table."""
    wl, idx, arr = sample_workload(cfg, run_spec(cfg))
    return wl.prompt_len[idx], wl.output_len[idx], arr, wl


def sample_workload(cfg, spec: RunSpec):
    """The workload table of `cfg` (of run spec `spec`), the rows its requests take (a seeded sample, or the
    table cycled) and their arrival times. The executor reads the rows to find each request's prompt text."""
    w = spec.workload
    if w is None:
        raise ConfigError("the run names no workload (workload=<name>, a config in conf/workload/)")
    max_seq_len = spec.max_seq_len
    wl = load_workload(w.name, data_dir=w.data_dir, path=w.path, max_output=max_seq_len, **dict(w.options))
    rows = len(wl.prompt_len)
    n = spec.num_requests or rows
    seed = spec.seed
    # fewer requests than rows: a seeded sample; more: cycle through the table
    idx = np.random.default_rng(seed).permutation(rows)[:n] if n <= rows else np.arange(n) % rows
    process = spec.arrival_process
    ts = None
    if process == "trace":
        if wl.timestamps is None:
            raise ConfigError(f"arrival.process=trace needs a workload with timestamps (workload=trace), "
                              f"not workload={w.name}")
        if n > len(wl.prompt_len):
            raise ConfigError(f"num_requests={n} exceeds the trace's {len(wl.prompt_len)} rows with arrival=trace")
        idx = np.arange(n)
        ts = wl.timestamps[idx]
    arr = arrival_times(n, process, rate=spec.arrival_rate, burstiness=spec.arrival_burstiness, seed=seed,
                        timestamps=ts)
    if len(arr) and not float(np.max(arr)) <= LATEST_ARRIVAL_S:
        what = "arrival.rate" if process != "trace" else "workload.time_scale"
        raise ConfigError(f"{what}: arrivals would reach {float(np.max(arr)):.3g} s, beyond {LATEST_ARRIVAL_S:.0e} s, "
                          f"where float64 seconds lose the microseconds an iteration takes; "
                          f"use a higher arrival.rate or a smaller workload.time_scale")
    order = np.argsort(arr, kind="stable")  # rows in arrival order: request i is row idx[i] in both engines
    return wl, idx[order], arr[order]


def served_requests(cfg, spec: RunSpec, model):
    """(workload table, the requests as the model's context takes them (`Fitted`), shared_prefix (tokens,
    groups)): the one path from a config to the requests both a single engine and a cluster serve."""
    wl, idx, arr = sample_workload(cfg, spec)
    prompt, prefix, shared = prompt_prefixes(spec, wl, idx, wl.prompt_len[idx])
    fit = fit_prompts(spec.workload.overlong, prompt, wl.output_len[idx], arr, idx, prefix, model.max_context, spec.max_seq_len,
                      model.name)
    return wl, fit, shared


def prompt_prefixes(spec: RunSpec, wl, idx, prompt) -> tuple[np.ndarray, list | None, tuple[int, int]]:
    """The requests' prompt lengths, the blocks they share (`Request.prefix` of each, or None) and the
    run's `shared_prefix` (tokens, groups): the trace's hash_ids, or a shared prefix prepended."""
    tokens, groups = spec.shared_prefix_tokens, spec.shared_prefix_groups
    if tokens and wl.prefix is not None:
        raise ConfigError("shared_prefix.tokens: the trace's hash_ids already say which prompt blocks are shared; "
                          "set shared_prefix.tokens=0 with it")
    if tokens:
        prompt, prefix = shared_prefix(prompt, tokens, groups, spec.seed)
        return prompt, prefix, (tokens, groups)
    return prompt, None if wl.prefix is None else [wl.prefix[i] for i in idx.tolist()], (0, groups)


def engine_capacity(entry: GpuEntry, model, fixed_cap: int | None = None) -> tuple[object, int, int]:
    """(GPU, GPUs per engine, KV capacity in tokens) of an engine of `model` on the `gpu` entry `entry`
    (`fixed_cap`: a given pool, the executor's, to compare against it)."""
    gpu = get_gpu(entry.name)
    num_gpus = entry.count
    splits = lambda n: not (model.n_heads % n or (model.n_kv_heads % n and n % model.n_kv_heads))  # noqa: E731
    if num_gpus > 1 and not splits(num_gpus):
        valid = ", ".join(str(n) for n in range(1, model.n_heads + 1) if splits(n))
        raise ConfigError(f"gpu.count={num_gpus} cannot split {model.name}'s {model.n_heads} attention heads "
                          f"({model.n_kv_heads} KV heads) evenly for tensor parallelism (it must divide the heads, "
                          f"and divide the KV heads or be a multiple of them); valid: {valid}")
    if entry.data_parallel > 1:  # one rank's GPU: the shared weights and its share of the experts
        data_parallel_model(entry, model)
        cap = fixed_cap if fixed_cap is not None else kv_capacity_tokens(
            model, gpu, activation_reserve_frac=entry.activation_reserve_frac,
            weight_bytes=rank_weight_bytes(model, entry.data_parallel, "gpu.data_parallel"))
        return gpu, num_gpus, cap
    cap = (fixed_cap if fixed_cap is not None else
           kv_capacity_tokens(model, gpu, activation_reserve_frac=entry.activation_reserve_frac,
                              num_gpus=num_gpus * pipeline_stages(entry, model),  # the stages' memory adds up too
                              tensor_parallel=num_gpus))
    return gpu, num_gpus, cap


def data_parallel_model(entry: GpuEntry, model) -> None:
    """`gpu.data_parallel` > 1 is a mixture of experts' ranks stepping together; a dense model's data-parallel
    ranks are independent engines, which replicas behind a router already are."""
    if not model.n_experts:
        raise ConfigError(f"gpu.data_parallel={entry.data_parallel}: {model.name} is a dense model, whose data-parallel "
                          f"ranks are independent engines: use cluster.replicas={entry.data_parallel} (with "
                          "cluster.router=least_outstanding, say) instead")
    if not entry.expert_parallel:
        raise ConfigError(f"gpu.data_parallel={entry.data_parallel} without gpu.expert_parallel=true: vLLM then shards "
                          "every expert over the ranks (tensor parallel inside the MoE layer), which no profile here "
                          "measures; set gpu.expert_parallel=true")


@dataclass
class Hardware:
    """What one engine of a config runs on, checked before any workload is read: its GPU, GPUs per stage, KV
    capacity in tokens and latency model."""
    gpu: object
    num_gpus: int
    capacity_tokens: int  # one rank's, where `ranks` > 1
    latency: object
    ranks: int = 1  # an MoE model's data-parallel ranks stepping together (`gpu.data_parallel`)


def engine_hardware(cfg, spec: RunSpec, model) -> Hardware:
    """The GPU, KV capacity and latency model of the engine `cfg` (of run spec `spec`) describes (a model that
    does not fit, or cannot be split across its GPUs, fails here, before the workload is read)."""
    if spec.gpu is None:
        raise ConfigError("gpu: the run names no GPU preset; valid: gpu=<a preset of s3sim/hardware/gpu_presets/>, "
                          "e.g. gpu=a100-80gb-pcie")
    gpu, num_gpus, cap = engine_capacity(spec.gpu, model, spec.kv_capacity_tokens)
    latency = build_latency(required_node(cfg, "latency", LATENCY_MODELS), model, gpu, num_gpus,
                            pipeline_stages(spec.gpu, model))
    if spec.gpu.data_parallel > 1:
        latency = data_parallel_latency(cfg["latency"], latency, spec.gpu, gpu)
    return Hardware(gpu, num_gpus, cap, latency, spec.gpu.data_parallel)


def data_parallel_latency(lat_cfg, latency, entry: GpuEntry, gpu):
    """One rank's latency model as `gpu.data_parallel` ranks stepping together (`s3sim.latency.data_parallel`),
    their expert-parallel exchanges priced by `latency.all_reduce` (`s3sim.latency.operators.priced_exchanges`),
    padded up to `latency.graph_tokens`."""
    from s3sim.latency.data_parallel import DataParallelLatency
    from s3sim.latency.operators import priced_exchanges

    gather = priced_exchanges(str(lat_cfg.get("all_reduce", "auto")), gpu, entry.data_parallel)
    graphs = int(lat_cfg.get("graph_tokens", 0))  # latency=operators checks it; another model refuses below
    how = (f"{entry.data_parallel} data-parallel ranks stepping together, experts split over them (hidden states "
           f"exchanged twice a layer, with the router logits the first time: {gather.source})"
           + (f", padded to the largest rank's tokens up to {graphs}" if graphs else ""))
    return DataParallelLatency(latency, entry.data_parallel, gather, how, graph_tokens=graphs)


def build_engine(cfg, spec: RunSpec, model, prompt, output, keys, hw: Hardware):
    """One engine of `cfg` (of run spec `spec`) on `hw` for these requests: (scheduler, latency model, KV
    capacity in tokens)."""
    max_seq_len = spec.max_seq_len
    check_fits(hw.capacity_tokens, int(prompt.max()), max_seq_len, f"{model.name} on {hw.num_gpus} x {hw.gpu.name}",
               "lower max_seq_len or use a larger GPU")
    ranks = [build_scheduler(cfg, hw.capacity_tokens, output, keys, context=model.max_context, layers=model.n_layers,
                             spec=spec) for _ in range(hw.ranks)]
    sched = ranks[0]  # every rank is built from one config and one capacity: checked once
    check_requests(sched, prompt, output)
    if sched.copies_kv:
        if hw.ranks > 1:
            raise ConfigError(f"policy={sched.name} copies its KV cache every step, which data-parallel ranks do not "
                              "price: use gpu.data_parallel=1")
        hw.latency.copy_time(0)  # refuses now, not mid-run, if it cannot price the copies of a growing cache
    if hw.ranks > 1:
        from s3sim.core.data_parallel import DataParallelScheduler
        sched = DataParallelScheduler(ranks)
    return sched, hw.latency, hw.capacity_tokens * hw.ranks


def check_requests(sched, prompt, output) -> None:
    """A policy that checks each request alone (hf: its peak memory) checks them all before the run starts."""
    if hasattr(sched, "check_fits"):
        for i, (p, o) in enumerate(zip(np.asarray(prompt).tolist(), np.asarray(output).tolist())):
            sched.check_fits(i, p, o)


def served(rows, idx) -> int:
    """Requests (rows `idx` served, a cycled row once per time) among the workload rows flagged in `rows` (None:
    none is)."""
    return 0 if rows is None else int(np.asarray(rows)[idx].sum())


def served_clipped(wl, idx) -> int:
    """Requests whose output was cut to max_seq_len."""
    return served(wl.clipped_rows, idx)


def served_raised(wl, idx) -> int:
    """Requests whose trace row had a 0-token prompt or output, served as 1 token."""
    return served(wl.raised_rows, idx)


def pipeline_stages(entry: GpuEntry, model) -> int:
    """`gpu.pipeline_stages`: pipeline parallelism's stages, each of `gpu.count` GPUs (1: none)."""
    stages = entry.pipeline_stages
    if stages > model.n_layers:
        raise ConfigError(f"gpu.pipeline_stages={stages}: {model.name} has only {model.n_layers} layers to split")
    return stages


def build_latency(lat_cfg, model, gpu, num_gpus: int = 1, pipeline_stages: int = 1):
    """The `latency` group: per-operator on the datasheet, the roofline, or a measured profile."""
    cls = LATENCY_MODELS[choice(lat_cfg["name"], tuple(LATENCY_MODELS), "latency.name")]
    conf = structured(cls.Config, lat_cfg, "latency")
    if pipeline_stages == 1:
        return cls.from_config(conf, model, gpu, num_gpus)
    if not getattr(cls, "pipelines", False):
        raise ConfigError(f"gpu.pipeline_stages={pipeline_stages}: pipeline parallelism is priced by latency=datasheet "
                          f"only, not latency={cls.name}")
    return cls.from_config(conf, model, gpu, num_gpus, pipeline_stages=pipeline_stages)


def required_node(cfg, key: str, valid) -> dict:
    """The run's `key` node (policy, latency), which every run has: one line where it was removed (`~key`)."""
    node = cfg.get(key)
    if not isinstance(node, dict):
        raise ConfigError(f"{key}: the run has none (was it removed by ~{key}?); every run needs one; valid: "
                          f"{key}={', '.join(valid)}")
    return node


def policy_class(cfg):
    return POLICIES[choice(required_node(cfg, "policy", POLICIES)["name"], tuple(POLICIES), "policy.name")]


def policy_node(cfg, spec: RunSpec | None = None) -> tuple[dict, str]:
    """The run's `policy` node with vllm's `auto` limits replaced by those vLLM V1 picks when none is set (by
    the GPU preset's memory and name, and the entry point: arrival=offline is vLLM's offline LLM class, other
    arrivals its server), and what they are ('' when no limit was auto); `spec`: `cfg`'s run spec, if read."""
    from s3sim.core.policies.vllm import AUTO, vllm_default_limits

    node = dict(cfg["policy"])
    keys = [k for k in ("max_batch_size", "max_num_batched_tokens") if node.get(k) == AUTO]
    if not keys:
        return node, ""
    if node.get("name") != "vllm":
        raise ConfigError(f"policy.{keys[0]}=auto takes vLLM V1's default limits and applies to policy=vllm only, "
                          f"not policy={node.get('name')}; give a number")
    spec = spec if spec is not None else run_spec(cfg)
    if spec.gpu is None:
        cache = (" policy.prefix_caching=false (the executor keeps no prefix cache either)"
                 if node.get("prefix_caching", True) else "")
        raise ConfigError(f"policy.{keys[0]}=auto (vllm's default) takes vLLM V1's limits for a GPU preset, and this "
                          f"run has none (the executor); give numbers, e.g. policy.max_batch_size=256 "
                          f"policy.max_num_batched_tokens=2048 (vLLM's server default below 70 GiB){cache}")
    gpu = get_gpu(spec.gpu.name)
    seqs, tokens, why = vllm_default_limits(gpu.memory_bytes / GiB, gpu.name, spec.offline)
    if node.get("max_num_batched_tokens") == AUTO:
        node["max_num_batched_tokens"] = tokens
    if node.get("max_batch_size") == AUTO:
        budget = node["max_num_batched_tokens"]
        if isinstance(budget, int) and not isinstance(budget, bool) and budget < seqs:
            # vLLM's EngineArgs: a default sequence limit is capped at the token budget, given or not
            why += f", {seqs} sequences capped at the given budget of {budget} tokens as vLLM caps them"
            seqs = budget
        node["max_batch_size"] = seqs
    return node, f"{', '.join(f'policy.{k}' for k in keys)}=auto: {why}"


def build_scheduler(cfg, cap: int, output, keys=None, hidden_states: bool = False, context: int | None = None,
                    layers: int | None = None, spec: RunSpec | None = None):
    """The policy of `cfg` over a KV pool of `cap` tokens (the simulator's and the executor's alike);
    `output` holds the requests' output lengths (quantile buckets are cut from them), `keys` their workload
    rows (a trained predictor finds each prompt by it); `hidden_states`: the engine can hand the served
    model's hidden states to a re-predictor (the executor's paged path); `context` and `layers`: the served
    model's context window and layer count, for the policies whose `from_config` takes them (what orca, ft
    and hf reserve, hf's copy, paged's prompt iterations); None: those of `cfg`'s model.name, if it names one;
    `spec`: `cfg`'s run spec, if read already."""
    run = spec if spec is not None else run_spec(cfg)
    cls = policy_class(cfg)
    node, limits_source = policy_node(cfg, run)
    conf = structured(cls.Config, node, "policy")
    max_seq_len = run.max_seq_len
    predictor = None
    use = getattr(conf, "predictor_use", "")  # a setting that ranks by predicted length (vllm's policy.order)
    if use and not cls.uses_predictor and not cfg.get("predictor"):
        raise ConfigError(f"{use} ranks requests by predicted length and needs a length predictor; valid: "
                          f"predictor={', '.join(PREDICTORS)}")
    pspec = predictor_spec(cfg) if cfg.get("predictor") else None
    if pspec is not None and pspec.repredict is not None and not use:
        raise ConfigError(f"predictor.repredict={pspec.repredict} re-ranks running requests and is read only by "
                          f"policy=vllm with policy.order=sjf or srpt, or policy.victim=longest_remaining; this run "
                          f"has policy={cls.name} with no such setting (set predictor.repredict=null)")
    if cls.uses_predictor and pspec is None:
        raise ConfigError(f"policy={cls.name} reserves by predicted length and needs a predictor node (was it removed "
                          f"by ~predictor?); valid: predictor={', '.join(PREDICTORS)}")
    if cls.uses_predictor or use:
        predictor = build_predictor(cfg, max_seq_len, output, force_oracle=cls.fixed_predictor == "oracle", keys=keys,
                                    spec=pspec, seed=run.seed)
        if pspec is not None and pspec.repredict is not None:
            predictor.reprediction = build_reprediction(pspec.repredict, run.seed, max_seq_len, hidden_states)
    feedback = (pspec or PredictorSpec()).feedback
    sched = cls.from_config(conf, cap, max_seq_len, predictor, feedback=feedback,
                            **model_limits(cls, run, context, layers))
    if limits_source:
        sched.limits_source = limits_source
    if predictor is not None and cls.fixed_predictor is None:  # the oracle stands for a free, perfect predictor
        sched.predict_s = pspec.latency_ms / 1000.0  # what one prediction costs, charged before admission
    return sched


def model_limits(cls, spec: RunSpec, context: int | None, layers: int | None) -> dict:
    """The served model's `context` and `layers` that policy `cls`'s `from_config` takes (`cls.model_limits`:
    given, or read from the run's model); a run that names no model leaves them None (no cap)."""
    wanted = cls.model_limits
    if wanted and (context is None or layers is None) and spec.model is not None:
        model = get_model(spec.model)
        context, layers = context or model.max_context, layers or model.n_layers
    return {k: v for k, v in (("context", context), ("layers", layers)) if k in wanted}


REPREDICTION_TABLE = Path(__file__).parent / "predictor" / "tables" / "reprediction.csv"
REPREDICTION_PROBE = Path(__file__).parent / "predictor" / "tables" / "reprediction_probe.npz"


def build_reprediction(source: str, seed: int, max_seq_len: int, hidden_states: bool = False):
    """The re-prediction model of `predictor.repredict`: `measured` (the error model measured on SmolLM2, the
    shipped table of `python -m s3exec.lab.reprediction`), a CSV with columns generated, log_sd, log_bias (and
    optionally log_corr, each checkpoint's error's correlation with the previous one's), or
    `hidden` (that command's probe reading the served model's hidden states: the executor only)."""
    import csv

    from s3sim.core.predictors.reprediction import HiddenStateRePrediction, RePrediction

    if source == "hidden":
        if not hidden_states:
            raise ConfigError("predictor.repredict=hidden reads the served model's hidden states, which only the "
                              "executor has (s3exec on executor.model=smollm2); the simulator takes "
                              "predictor.repredict=measured, the error measured from those states")
        if not REPREDICTION_PROBE.is_file():
            raise ConfigError(f"predictor.repredict=hidden: no probe at {REPREDICTION_PROBE} (python -m "
                              f"s3exec.lab.reprediction fits it)")
        with np.load(REPREDICTION_PROBE, allow_pickle=False) as z:
            return HiddenStateRePrediction(z["mean"], z["scale"], z["weights"], z["checkpoints"], max_seq_len)
    path = REPREDICTION_TABLE if source == "measured" else Path(source)
    if not path.is_file():
        raise ConfigError(f"predictor.repredict={source}: no table at {path} (valid: null, measured, or a CSV with "
                          f"columns generated, log_sd, log_bias)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = ("generated", "log_sd", "log_bias")
    if not rows or any(c not in rows[0] for c in need):
        raise ConfigError(f"predictor.repredict: {path} needs columns {', '.join(need)} and at least one row")
    try:
        cols = [[float(r[c]) for r in rows] for c in need]
        corr = [float(r["log_corr"]) for r in rows] if "log_corr" in rows[0] else None
    except ValueError as e:
        raise ConfigError(f"predictor.repredict: {path}: a value is not a number ({e})") from None
    return RePrediction(*cols, seed=seed, max_seq_len=max_seq_len, name=source, log_corr=corr)


def predictor_spec(cfg):
    """The run's `predictor` node read into its structured config (`s3sim.core.predictors.spec`): one default and
    one check per knob; a wrong type, an unknown key or a value out of range is one line naming the field."""
    from s3sim.core.predictors.spec import SPECS

    pc = dict(cfg["predictor"])
    choice(pc.get("name"), PREDICTORS, "predictor.name")
    for key, what in (("num_buckets", "an integer of at least 2"), ("accuracy", "a number between 0 and 1"),
                      ("latency_ms", "a non-negative number of milliseconds")):
        v = pc.get(key)
        if key in pc and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                          or (key == "num_buckets" and not float(v).is_integer())):
            raise ConfigError(f"predictor.{key} must be {what}, got {v!r}")
    return structured(SPECS[pc["name"]], pc, "predictor")


def build_predictor(cfg, max_seq_len, output_lengths, force_oracle=False, keys=None, spec=None, seed: int | None = None):
    spec = spec if spec is not None else predictor_spec(cfg)
    k, scheme = spec.num_buckets, spec.bucketing
    buckets = (Buckets.equal(k, max_seq_len) if scheme == "equal"
               else Buckets.quantile(k, max_seq_len, output_lengths))
    name = "oracle" if force_oracle else spec.name
    if name == "oracle":
        return OraclePredictor(buckets)
    if name == "trained":  # its buckets come from its training data, not from this run's lengths
        from s3sim.predictor.trained.predictor import from_config
        return from_config(cfg, scheme, k, max_seq_len, keys, spec)
    return SyntheticPredictor(buckets, spec.accuracy, spec.error_shape, seed=seed_of(cfg) if seed is None else seed)
