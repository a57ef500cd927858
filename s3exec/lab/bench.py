"""`make bench-exec`: the executor on this machine, in one run, with SmolLM2-135M-Instruct's real weights.

1. Engine speed: the same prompts and output lengths (fixed, end-of-sequence ignored) served by
   `transformers`' own continuous batching (the manager behind `generate_batch`, with per-request
   `max_new_tokens` and a cache of the same size) and by the executor (paged policy); output tokens/s,
   best of alternated runs, their ratio, and whether the greedy tokens agree.
2. Policy: ORCA and S3 (synthetic predictor, 80 % accurate) under one KV budget, Alpaca-length requests
   with max_seq_len 2048 as in the paper: the batches each policy builds and the throughput they give.
"""
from __future__ import annotations

import os
import time
from s3sim.commandline import Parser

POLICY_BUDGET_TOKENS = 8800  # ORCA fits 4 requests of prompt + 2048 tokens


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from s3sim.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("exec", overrides=overrides), resolve=True)


def hf_continuous_batching(model, prompts, lengths, kv_bytes: int, kv_bytes_per_token: int):
    """Serve the prompts with transformers' continuous batching, its cache sized to `kv_bytes` as the
    executor's is; returns (wall seconds, outputs)."""
    from transformers import ContinuousBatchingConfig, GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    gc = GenerationConfig(do_sample=False, max_new_tokens=max(lengths), eos_token_id=-1, pad_token_id=0)
    hints = WorkloadHints(max_prompt_length=max(map(len, prompts)), max_generated_length=max(lengths),
                          num_requests=len(prompts))
    model.set_attn_implementation("sdpa")  # the executor's runner may have set its own
    cb = ContinuousBatchingConfig()
    cb.num_blocks = max(1, kv_bytes // (kv_bytes_per_token * cb.page_size))
    with model.continuous_batching_context_manager(generation_config=gc, workload_hints=hints,
                                                   continuous_batching_config=cb) as manager:
        t0 = time.perf_counter()
        ids = [manager.add_request(p, request_id=f"r{i}", max_new_tokens=int(n))
               for i, (p, n) in enumerate(zip(prompts, lengths))]
        done = {}
        while len(done) < len(ids):
            out = manager.get_result(timeout=1)
            if out is None:
                if not manager.is_running():
                    raise RuntimeError("transformers' continuous batching stopped before finishing")
                continue
            if out.is_finished():
                done[out.request_id] = out.generated_tokens
        wall = time.perf_counter() - t0
    return wall, [done[i] for i in ids]


def run_setup(setup):
    t0 = time.perf_counter()
    res = setup.executor.run(setup.requests, setup.prompts, setup.caps)
    return time.perf_counter() - t0, res


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=32, help="requests for the engine comparison")
    ap.add_argument("--policy-n", type=int, default=64, help="requests for ORCA versus S3")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="alternated runs of each engine (the best counts)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before torch: the manager's thread too
    import torch

    from s3exec.config import build_exec
    from s3exec.models import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    # no untimed warm-up: the timed region starts cold for both engines, as when these numbers were first taken
    base = [f"executor.model={args.model}", f"executor.threads={args.threads}", "executor.mode=fixed",
            "workload=alpaca", "executor.progress=false", "executor.warmup=false"]

    engine_cfg = compose([*base, f"num_requests={args.n}", "max_seq_len=128", "policy=paged",
                          "executor.kv_memory=256MiB"])
    hf_walls, ex_walls = [], []
    for _ in range(args.repeat):  # alternated, best of each: the machine is shared, so single runs are noisy
        setup = build_exec(engine_cfg, loaded=loaded)
        lengths = [r.output_len for r in setup.requests]
        wall, hf_out = hf_continuous_batching(loaded.model, setup.prompts, lengths, setup.kv_bytes,
                                              loaded.kv_bytes_per_token)
        hf_walls.append(wall)
        wall, res = run_setup(setup)
        ex_walls.append(wall)
    tokens = sum(lengths)
    same = sum(res.outputs[r.id] == hf_out[i] for i, r in enumerate(setup.requests))
    print(f"1. engine speed: {args.model} ({str(loaded.dtype).removeprefix('torch.')}, {args.threads} CPU thread), "
          f"{args.n} Alpaca-length requests capped at 128 ({tokens:,} output tokens, fixed lengths), all at t=0; "
          f"best of {args.repeat} alternated runs")
    print(f"   {'engine':34s} {'wall s':>8s} {'output tok/s':>13s}   runs (s)")
    for name, walls in (("transformers continuous batching", hf_walls), ("s3exec (paged)", ex_walls)):
        print(f"   {name:34s} {min(walls):8.2f} {tokens / min(walls):13.1f}   "
              + ", ".join(f"{w:.2f}" for w in walls))
    print(f"   ratio s3exec / transformers: {min(hf_walls) / min(ex_walls):.2f}x; identical greedy tokens for {same} "
          f"of {args.n} requests\n")

    budget = POLICY_BUDGET_TOKENS * loaded.kv_bytes_per_token
    rows = {}
    for policy in ("orca", "s3"):
        s = build_exec(compose([*base, f"num_requests={args.policy_n}", "max_seq_len=2048", f"policy={policy}",
                                f"executor.kv_memory={budget}"]), loaded=loaded)
        wall, r = run_setup(s)
        f = r.log.frame()
        rows[policy] = (wall, sum(q.output_len for q in r.requests), f, r)
    print(f"2. one KV budget of {POLICY_BUDGET_TOKENS:,} tokens ({budget / 2**20:.0f} MiB), {args.policy_n} "
          f"Alpaca-length requests, max_seq_len 2048, all at t=0; 'busy' = iterations that left requests waiting")
    print(f"   {'policy':7s} {'max batch':>9s} {'mean batch':>10s} {'busy batch':>10s} {'wall s':>7s} {'tok/s':>6s} "
          f"{'busy tok/s':>10s} {'KV reserved':>11s} {'KV used':>7s} {'preempted':>9s}")
    stats = {}
    for policy, (wall, tok, f, r) in rows.items():
        w = f.duration.to_numpy()
        cap = r.kv_capacity_tokens
        busy = f[f.waiting > 0]
        made = busy.itl_tokens + busy.batch_size - busy.decode_tokens  # tokens each busy iteration produced
        stats[policy] = (f.batch_size.mean(), busy.batch_size.mean(), tok / wall, made.sum() / busy.duration.sum())
        print(f"   {policy:7s} {f.batch_size.max():9d} {stats[policy][0]:10.1f} {stats[policy][1]:10.1f} {wall:7.1f} "
              f"{stats[policy][2]:6.1f} {stats[policy][3]:10.1f} {(f.kv_reserved * w).sum() / w.sum() / cap:11.0%} "
              f"{(f.kv_used * w).sum() / w.sum() / cap:7.0%} {r.scheduler.preemptions:9d}")
    o, s3 = stats["orca"], stats["s3"]
    print(f"   s3 / orca: mean batch {s3[0] / o[0]:.1f}x (busy {s3[1] / o[1]:.1f}x), output throughput "
          f"{s3[2] / o[2]:.2f}x (busy {s3[3] / o[3]:.2f}x)")


if __name__ == "__main__":
    main()
