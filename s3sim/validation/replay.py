"""`validate`: one run replayed end to end: inputs read and checked, priced, replayed twice (the second with
every step 1 % slower, for the sensitivity column), compared, and written atomically into --out."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.hardware.models import preset_of_hf_name
from s3sim.inputs import SHARED_DATA_DIR
from s3sim.validation import checks
from s3sim.validation.engine import (SCHEMA_READ, engine_limits, engine_settings, other_version_note,
                                     unread_engine_kwargs)
from s3sim.validation.kv_capacity import check_kv_memory, kv_capacity
from s3sim.validation.metrics import real_metrics, replay_records, simulated_metrics, split_metrics, comparison
from s3sim.validation.model_gpu import (check_gpu_agrees, check_model_agrees, resolve_gpu, resolve_model,
                                       served_16_bit)
from s3sim.validation.outputs import clear_outputs, staged_outputs
from s3sim.validation.peer import read_peer, peer_mismatch
from s3sim.validation.pricing import (build_latency, profile_reach, check_all_reduce_flag, data_parallel_latency,
                                      calibrate_steps)
from s3sim.validation.run_files import META, REQUESTS, TIMESERIES, PEER, beside_run, read_run, unserved_note
from s3sim.validation.timeline import timeline, draw_timeline
from s3sim.validation.verdict import format_table, target_line, SENSITIVITY_PCT, SENSITIVITY_COLUMN, small_times_note


def validate(run_dir, out, profile: str | None = None, model: str | None = None, gpu: str | None = None,
             echo=print, fit_from: str | None = None, all_reduce: str = "auto",
             step_calibration: str = "none", async_scheduling: str = "auto",
             vllm_entry: str | None = None) -> pd.DataFrame:
    """Replay the run in `run_dir`, write the results into `out` and return the validation table.
    `profile`: a profile folder, "none", or None for the run's own (`profile/` in or beside the run folder) when it has one.
    `fit_from`: with no profile, price with this GPU preset's fitted efficiencies instead of the run GPU's.
    `vllm_entry`: offline or server, for vLLM's default limits where meta.json records none (`engine_limits`)."""
    from s3sim.config import build_scheduler
    from s3sim.core.request import make_requests
    from s3sim.simulator.engine import simulate

    out = checks.check_out(out)
    run = read_run(run_dir)
    engine = engine_settings(run.meta, str(run.dir / META))
    own = beside_run(run.dir, "profile", folder=True)
    if profile is None:
        prof = own
    elif str(profile).lower() == "none":
        prof = None
    else:
        prof = Path(profile)
        if not str(profile).strip() or not prof.is_dir():
            raise ConfigError(f"--profile {str(profile)!r}: no such folder (or 'none' for the datasheet operator "
                              "model)")
    checks.check_out_apart(out, {"run folder": run.dir, "profile": prof, "the run's own profile": own,
                                 "shared data folder": SHARED_DATA_DIR})
    if fit_from is not None and prof is not None:
        raise ConfigError("--fit-from prices the datasheet model, which runs without a profile: add --profile none")
    check_all_reduce_flag(all_reduce)
    from s3sim.hardware.gpus import get_gpu
    try:
        borrowed = None if fit_from is None or fit_from == "others" else get_gpu(fit_from)
    except ConfigError as e:
        raise ConfigError(f"--fit-from {fit_from!r}: {e}; or others (the mean fit of every other GPU)") from None
    spec, served_note = served_16_bit(resolve_model(model, engine, beside_run(run.dir, "config.json"), run.dir))
    if engine.tp > 1 and (spec.n_heads % engine.tp or spec.n_kv_heads % engine.tp and engine.tp % spec.n_kv_heads):
        raise ConfigError(f"{str(run.dir / META)!r}: engine_kwargs.tensor_parallel_size={engine.tp} does not divide "
                          f"{spec.name}'s {spec.n_heads} attention heads and {spec.n_kv_heads} KV heads as vLLM "
                          "requires")
    check_model_agrees(spec, model, engine, prof or own)
    if engine.dp > 1 and engine.tp > 1 and spec.n_experts:
        raise ConfigError(f"{str(run.dir / META)!r}: data_parallel_size={engine.dp} with tensor_parallel_size="
                          f"{engine.tp} of a mixture of experts is not modelled (its data-parallel ranks of one GPU "
                          "each only)")
    if engine.dp > 1 and spec.n_experts and not engine.expert_parallel:
        raise ConfigError(f"{str(run.dir / META)!r}: data_parallel_size={engine.dp} without enable_expert_parallel: "
                          "vLLM then shards every expert over the ranks (tensor parallel inside the MoE layer), which "
                          "no profile here measures")
    needs = ("vLLM's default max_num_seqs and max_num_batched_tokens" if None in (engine.max_num_seqs,
                                                                                 engine.max_num_batched_tokens) else
             ("the datasheet latency (no profile/ in or beside the run folder: --profile DIR names one)"
              if profile is None else "the datasheet latency (--profile none)") if prof is None else
             "deriving the KV capacity" if engine.num_gpu_blocks is None and engine.device_memory is None else
             "pricing tensor parallelism's all-reduces" if engine.tp > 1 and all_reduce != "none" else None)
    # a profile names the device it ran on; with --profile none, the one beside the run only where meta.json names none
    named_by = prof if prof is not None else (own if engine.device_name is None else None)
    check_gpu_agrees(gpu, engine, named_by)  # first: a disagreement is the error, not the missing --gpu it leads to
    gpu_spec, gpu_how = resolve_gpu(gpu, engine, named_by, needs)
    limits_how = engine_limits(engine, gpu_spec, vllm_entry, str(run.dir / META))
    peer_path = beside_run(run.dir, PEER)
    peer = read_peer(peer_path) if peer_path is not None else None
    check_kv_memory(engine, spec, gpu_spec, repr(str(run.dir / META)))
    blocks, kv_how = kv_capacity(engine, spec, gpu_spec)
    capacity = blocks * engine.block_size
    if fit_from == "others":  # leave the run's GPU out: what it would get had it never been profiled
        from s3sim.hardware.gpus import leave_one_out_fit
        borrowed = leave_one_out_fit(gpu_spec)
    try:  # the collectives' errors name the flag that chose them (s3sim's own key is latency.all_reduce)
        latency, lat_how = build_latency(prof, spec, gpu_spec, engine.tp, borrowed, all_reduce)
        if step_calibration != "none":
            latency, step_how = calibrate_steps(latency, step_calibration, prof, engine.tp, engine.graph_tokens)
            lat_how += f"; {step_how}"
        beyond = profile_reach(latency, engine)
        dense_ranks = engine.dp > 1 and not spec.n_experts  # independent engines behind vLLM's load balancer
        if engine.dp > 1 and not dense_ranks:
            latency, dp_how = data_parallel_latency(latency, engine, spec, gpu_spec, all_reduce)
            lat_how += f"; {dp_how}"
    except ConfigError as e:
        raise ConfigError(str(e).replace("latency.all_reduce", "--all-reduce")) from None
    if beyond:
        echo(f"note: {beyond}: priced beyond what was measured (extrapolated: the dense operators at the rate of "
             "their top octave of token counts, attention along its grid's last segments)")

    req = run.requests
    limit, field = checks.max_model_len(run.meta)
    longest, said = ((limit, f"meta.json's {field}") if limit is not None else
                     (spec.max_context, f"the model's context ({spec.name}: max_context, meta.json records no "
                                        "max_model_len)"))
    checks.check_context(req, longest, said, run.dir / REQUESTS)
    if limit is not None and limit > spec.max_context:
        echo(f"note: {said}, {limit:,} tokens, is longer than the model's context ({spec.name}: max_context "
             f"{spec.max_context:,}), which vLLM starts with only under rope scaling or "
             f"VLLM_ALLOW_LONG_MAX_MODEL_LEN=1; replayed with {limit:,} as the longest request")
    if longest is not None and capacity < longest:  # vLLM refuses to start a cache that cannot hold one request of that length
        echo(f"note: the KV capacity ({capacity:,} tokens, {engine.kv_capacity_source}) holds less than one request "
             f"of {said}, {longest:,} tokens, which vLLM refuses at start: "
             + ("the derived capacity is likely too small (the run's kv_cache.num_gpu_blocks would settle it)"
                if engine.num_gpu_blocks is None else "meta.json does not agree with itself"))
    too_big = np.flatnonzero(-(-(req.input_toks + req.output_toks) // engine.block_size) > blocks)
    if len(too_big):
        k = int(too_big[0])
        raise ConfigError(f"{str(run.dir / REQUESTS)!r} line {req.line[k]}: {req.input_toks[k]} + "
                          f"{req.output_toks[k]} tokens do not fit in the KV cache of {capacity:,} tokens")

    echo(f"run: {run.dir} ({len(req)} requests); model {spec.name}"
         + (f" (read from {spec.source}: meta.json's {engine.model!r} has no preset)"
            if model is None and preset_of_hf_name(engine.model) is None else "")
         + (f"; gpu {gpu_how}" if gpu_how else "") + f"; tp{engine.tp}"
         + (f"; data parallel {engine.dp}" + (" with expert parallelism" if engine.expert_parallel else "")
            if engine.dp > 1 else ""))
    if served_note:
        echo(served_note)
    unserved = req.attrs.get("unserved", [])
    if unserved:
        echo(unserved_note(req))
    if limits_how:
        echo(limits_how)
    echo(f"KV capacity: {capacity:,} tokens ({blocks:,} blocks x {engine.block_size}), {kv_how}"
         + (f"; on each of the {engine.dp} ranks" if engine.dp > 1 else ""))
    how = ("as recorded" if engine.prefix_caching_recorded else "vLLM V1's default (the run does not record it)"
           + other_version_note(run.meta, "engine_kwargs.enable_prefix_caching in meta.json sets it as the run had it"))
    echo(f"prefix caching: {'on' if engine.prefix_caching else 'off'}, {how}"
         + ("; modelled for preempted requests' own blocks (prompts are not shared between requests here)"
            if engine.prefix_caching else ""))
    asynchronous = {"auto": engine.async_scheduling, "on": True, "off": False}.get(async_scheduling)
    if asynchronous is None:
        raise ConfigError(f"--async-scheduling must be auto, on or off, got {async_scheduling!r}")
    how = ("--async-scheduling" if async_scheduling != "auto" else "as recorded" if engine.async_recorded
           else "vLLM V1's default (the run does not record it)"
           + other_version_note(run.meta, "--async-scheduling on or off sets it as the run had it"))
    echo(f"asynchronous scheduling: {'on' if asynchronous else 'off'}, {how}"
         + ("; an arrival joins the step after next, its scheduled_ts is its step's scheduling" if asynchronous
            else ""))
    echo(f"latency: {lat_how}")
    if engine.graph_tokens == 0:
        echo(f"note: the run ran without CUDA graphs ({engine.graphs_from}): the replay prices its steps by the "
             "operator profile, timed without graphs too (with --step-calibration: every step in its eager mode), "
             "and pads no data-parallel rank to a graph's size")
    unread = unread_engine_kwargs(run.meta)
    if unread:
        echo(f"note: meta.json's engine_kwargs sets {', '.join(unread)}, which the replay does not model: its "
             "effect, if any, is in the errors")
    schema = run.meta.get("schema_version")
    if schema is not None and schema != SCHEMA_READ:
        echo(f"note: meta.json's schema_version is {schema!r}; the replay reads schema {SCHEMA_READ}'s fields, and a "
             "field that a later schema renamed or added is not read")
    if prof is None:
        echo("note: no operator profile: priced from the GPU's datasheet and efficiencies fitted to operators (the "
             "line above says whose): read its errors against the band the README's 'How well it generalises' "
             "measures for datasheet replays, not against a profiled replay's targets")
    if borrowed is not None and borrowed.name != gpu_spec.name:
        echo(f"note: cross-GPU pricing: the run's {gpu_spec.name} datasheet with {borrowed.name}'s fitted "
             f"efficiencies (--fit-from), as a GPU never profiled would be priced; not the run GPU's own fit")

    arrivals = (req.queued_ts - req.queued_ts.min()).to_numpy(dtype=float)
    max_seq_len = int(req.output_toks.max())  # bounds outputs only: vllm reserves nothing by it
    policy = {"name": "vllm", "block_size": engine.block_size, "max_batch_size": engine.max_num_seqs,
              "max_num_batched_tokens": engine.max_num_batched_tokens, "prefix_caching": engine.prefix_caching}
    conf = {"max_seq_len": max_seq_len, "policy": policy}

    def replay(lat):
        """(result, the runs of its engines) of one replay of the run's requests priced by `lat`."""
        requests = make_requests(req.input_toks.to_numpy(), req.output_toks.to_numpy(), arrivals)
        ranks = [build_scheduler(conf, capacity, req.output_toks.to_numpy()) for _ in range(engine.dp)]
        if dense_ranks:
            from s3sim.cluster.routers import VllmDataParallel
            from s3sim.simulator.engine import simulate_cluster
            result = simulate_cluster(requests, [(s, lat, capacity) for s in ranks], VllmDataParallel(),
                                      async_scheduling=asynchronous)
            return result, result.replicas
        from s3sim.core.data_parallel import DataParallelScheduler
        result = simulate(requests, DataParallelScheduler(ranks) if engine.dp > 1 else ranks[0], lat,
                          async_scheduling=asynchronous)
        return result, [result]

    def metrics(records) -> dict:
        """The replay's metrics from its records (`replay_records`), TTFT split where the run records it."""
        sim = simulated_metrics(records)
        if "scheduled_ts" in req.columns:
            sim.update(split_metrics(records.queued, records.admitted, records.first_token))
        return sim

    if dense_ranks:
        echo(f"data parallel: {engine.dp} ranks of a dense model, independent engines (each its own KV cache, "
             "max_num_seqs, token budget and steps); a request goes to the rank with the lowest 4 x waiting + running")
    elif engine.dp > 1:  # one scheduler per rank behind vLLM's load balancer, stepping together
        echo(f"data parallel: {engine.dp} ranks, each with its own KV cache, max_num_seqs and token budget; a request "
             "goes to the rank with the lowest 4 x waiting + running; the ranks step together")
    real = real_metrics(req)
    mismatch = peer_mismatch(peer, real) if peer is not None else None
    if mismatch:  # a table about another run (a trimmed copy of a run, another run's file): left out, said so
        echo(f"note: {peer_path} is not about this run ({mismatch}): peer.csv is not written")
        peer = None
    clear_outputs(out)  # the inputs are good: an earlier run's results go, so a failed replay leaves none
    t0 = time.perf_counter()
    result, runs = replay(latency)
    wall = time.perf_counter() - t0

    records = replay_records(result.requests)
    sim = metrics(records)
    if "scheduled_ts" in req.columns:  # the run says when each request was first scheduled: TTFT's split
        real.update(split_metrics(req.queued_ts, req.scheduled_ts, req.first_token_ts))
    else:
        lacking = req.attrs.get("lacking", {}).get("scheduled_ts", len(req))
        echo("note: " + ("no row of requests.jsonl records scheduled_ts" if lacking == len(req) else
                         f"{lacking} of the {len(req)} rows of requests.jsonl lack scheduled_ts")
             + ": TTFT is not split into queueing and prefill")
    table = comparison(real, sim)
    # how far each error moves were every step SENSITIVITY_PCT % slower: a second replay
    from s3sim.latency.scaled import ScaledLatency
    slower = comparison(real, metrics(replay_records(
        replay(ScaledLatency(latency, 1 + SENSITIVITY_PCT / 100))[0].requests)))
    table[SENSITIVITY_COLUMN] = (slower.error_pct - table.error_pct) / SENSITIVITY_PCT
    table["kv_capacity_source"] = engine.kv_capacity_source
    table["unserved_requests"] = len(unserved)
    frames = [r.log.frame() for r in runs]
    data = timeline(run.timeseries, frames, capacity * engine.dp, float(records.last_token.max()))

    echo(format_table(table))
    echo(target_line(table, profiled=prof is not None))
    if run.timeseries.empty:
        echo(f"note: {TIMESERIES + ' holds no rows' if run.has_timeseries else 'the run has no ' + TIMESERIES}: the "
             "real curves of timeline.png stay blank (validation.csv does not use it)")
    small = small_times_note(table)
    if small:
        echo(small)
    counts = {k: sum(r.scheduler.counters()[k] for r in runs) for k in ("preemptions", "prefill_preemptions",
                                                                          "cached_tokens")}
    iterations, steps = sum(len(f) for f in frames), sum(r.engine_steps for r in runs)
    echo(f"replay: {wall:.2f} s wall, {iterations:,} simulated iterations ({steps:,} engine steps), "
         f"{int(counts['preemptions'])} preemptions ({int(counts['prefill_preemptions'])} of them part-way through a prefill), "
         f"{int(counts['cached_tokens']):,} recomputed tokens found in the prefix cache")

    from s3sim.plots import save
    from s3sim.writers import write_csv
    kind = f"operator profile, tp{engine.tp}" if prof is not None else f"operators on the {gpu_spec.name} datasheet"
    with staged_outputs(out) as stage:
        save(draw_timeline(data, f"{run.name}: vLLM against the replay ({kind})"), data, stage, "timeline")
        if peer is not None:
            write_csv(peer, stage / "peer.csv")
            echo(f"peer: {len(peer)} rows of {peer_path} -> {out / 'peer.csv'}")
        elif not mismatch:
            echo(f"peer: no peer table ({PEER}) in or beside the run folder")
        write_csv(table, stage / "validation.csv")  # moved in last: its presence marks a finished validation
    echo(f"results: {out}")
    return table
