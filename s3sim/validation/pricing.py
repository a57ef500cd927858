"""How a replay prices its steps: the run's operator profile (or the GPU's datasheet), its collectives between
GPUs (`--all-reduce`), data-parallel MoE ranks stepping together, and whole-step calibration."""
from __future__ import annotations

from pathlib import Path

from s3sim.core.errors import ConfigError
from s3sim.validation.engine import Engine


def build_latency(profile: Path | None, model, gpu, tp: int, fit_from=None, all_reduce: str = "auto"):
    """The run's operator profile, or the operator sum on the GPU's datasheet when there is none, with the
    efficiencies the GPU preset was fitted to, or those of `fit_from` (another preset: what a GPU never
    profiled would get); tp > 1 prices its all-reduces by `all_reduce` (`latency.all_reduce`'s values; auto:
    the GPU's measured table as the engine ran it where the preset names a step table to fit that to, else the
    measured table alone, else a ring); (model, description)."""
    from s3sim.latency.operators import priced_collectives, priced_logits_gather

    ring = priced_collectives(all_reduce, gpu, tp) if tp > 1 else None
    if profile is None:
        from s3sim.latency import DatasheetLatency
        f = fit_from or gpu
        lat = DatasheetLatency(model, gpu, num_gpus=tp, all_reduce=ring, compute_efficiency=f.compute_efficiency,
                               memory_efficiency=f.memory_efficiency, launch_s=f.launch_s,
                               attention_prefill_efficiency=f.attention_prefill_efficiency,
                               attention_decode_efficiency=f.attention_decode_efficiency)
        whose = "" if fit_from is None else f" borrowed from {fit_from.name}"
        return lat, (f"operators on the {gpu.name} datasheet (no profile; efficiencies{whose} "
                     f"{lat.compute_efficiency:.3g} / {lat.memory_efficiency:.3g}, attention "
                     f"{lat.attention_prefill_efficiency:.3g} / {lat.attention_decode_efficiency:.3g}, launch "
                     f"{lat.launch_s * 1e6:.3g} us: {f.calibration}"
                     + (f"; tp{tp} all-reduces: {getattr(ring, 'source', '') or 'free (none)'}" if tp > 1 else "")
                     + ")")
    if tp > 1 and not (profile / f"tp{tp}").is_dir():
        have = sorted(d.name for d in profile.glob("tp*") if d.is_dir())
        raise ConfigError(f"profile {str(profile)!r} has no tp{tp}/ folder for tensor_parallel_size={tp} (it has "
                          f"{', '.join(have) or 'none'}): give --profile measured at tp{tp}, or --profile none for the "
                          "datasheet operator model")
    from s3sim.latency.operators import OperatorLatency  # its tp<N> folder times one GPU's shard
    gather = priced_logits_gather(all_reduce, gpu, tp) if tp > 1 else None
    lat = OperatorLatency.from_profile(profile, model, gpu, tp=tp, all_reduce=ring, gather=gather)
    how = (f"operator profile {profile} (tp{tp}" + (f", all-reduces: {ring.source}" if ring else "")
           + (f"; the logits' gathering: {gather.source}" if gather is not None else "")
           + (f", uneven decode contexts at the profile's measured alpha {lat.skew_alpha:g}" if lat.skew_alpha
              else ", decodes at their mean context (the profile measured no skew)") + ")")
    return lat, how


def profile_reach(latency, engine: Engine) -> str | None:
    """What the engine's limits ask of an operator profile beyond what it measured (its largest token count,
    prefill chunk and decode batch), said in words; None where everything is within it (or no profile)."""
    from s3sim.latency.operators import OperatorLatency
    if not isinstance(latency, OperatorLatency):
        return None
    over = []
    tokens, chunk, decodes = float(latency.dense.x[-1]), float(latency.attention.c[-1]), float(latency.attention.n[-1])
    if engine.max_num_batched_tokens > tokens:
        over.append(f"max_num_batched_tokens={engine.max_num_batched_tokens} is beyond the {tokens:,.0f} tokens its "
                    "dense operators were timed at")
    if engine.max_num_batched_tokens > chunk:
        over.append(f"a prefill chunk may exceed the {chunk:,.0f} tokens its attention was timed at")
    if engine.max_num_seqs > decodes:
        over.append(f"max_num_seqs={engine.max_num_seqs} is beyond the {decodes:,.0f} decodes its attention was "
                    "timed at")
    return "; ".join(over) or None


def check_all_reduce_flag(spec: str) -> None:
    """`--all-reduce` read before anything else, on every run (`s3sim.latency.operators.check_all_reduce_spec`)."""
    from s3sim.latency.operators import check_all_reduce_spec
    check_all_reduce_spec(spec, "--all-reduce")


def data_parallel_latency(latency, engine: Engine, model, gpu, all_reduce: str = "auto"):
    """The step of `engine.dp` MoE ranks in lockstep (`s3sim.latency.data_parallel`); (model, description)."""
    from s3sim.latency.data_parallel import DataParallelLatency
    from s3sim.latency.operators import OperatorLatency, priced_exchanges
    if not isinstance(latency, OperatorLatency):
        raise ConfigError("data-parallel MoE ranks are priced from an operator profile with a moe.csv "
                          "(not --profile none or --step-calibration)")
    gather = priced_exchanges(all_reduce, gpu, engine.dp)  # expert parallelism: replay refuses DP without it
    graphs = engine.graph_tokens
    if graphs is None:
        graphs, padded = min(2 * engine.max_num_seqs, 512), "vLLM's largest CUDA graph by default"
    else:
        padded = f"the largest CUDA graph ({engine.graphs_from})"
    padding = (f"up to {graphs} tokens, {padded}, every rank padded to the largest rank's" if graphs else
               f"no CUDA graphs ({engine.graphs_from}), so no rank padded")
    how = (f"{engine.dp} data-parallel ranks step together (the slowest rank's batch, an idle rank a dummy token; "
           f"{padding})"
           + "; experts split over them, every MoE layer exchanging the batch's hidden states twice, the first time "
           + f"with its router logits ({gather.source})")
    return DataParallelLatency(latency, engine.dp, gather, how, graph_tokens=graphs), how


def calibrate_steps(latency, how: str, profile: Path | None, tp: int, graph_tokens: int | None = None):
    """The operator model priced as whole steps (`s3sim.latency.steps`): `own` fits the profile's
    `tp<N>/step.csv`, anything else names a step table; (model, description). `graph_tokens`: the run's
    largest CUDA-graph batch where meta.json says it (0: none, every step eager), else the table's."""
    from s3sim.latency.operators import OperatorLatency
    from s3sim.latency.steps import StepCalibrated, fit_table
    if not isinstance(latency, OperatorLatency):
        raise ConfigError("--step-calibration prices an operator profile's sum as whole steps: it needs a profile "
                          "(not --profile none)")
    path = profile / f"tp{tp}" / "step.csv" if how == "own" else Path(how)
    if how == "own" and not path.is_file():
        raise ConfigError(f"--step-calibration own: the profile has no {path} (give a step table, or none)")
    fit, _ = fit_table(latency, path)
    modes = ", ".join(f"{b} {fit.scale[b]:.3g} x + {fit.offset_s[b] * 1e3:.3g} ms" for b in fit.scale)
    how = f"whole steps fitted to {path} ({modes})"
    if graph_tokens is not None and graph_tokens != fit.graph_tokens:
        from dataclasses import replace
        fit = replace(fit, graph_tokens=graph_tokens)
        how += f"; graph modes up to {graph_tokens} tokens, as the run had them"
    return StepCalibrated(latency, fit), how
