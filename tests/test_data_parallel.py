"""Data-parallel ranks of an MoE model stepping together (`s3sim.core.data_parallel`,
`s3sim.latency.data_parallel`): vLLM's load balancing, lockstep steps priced by the slowest rank plus the
experts, every request finished once, and s3sim-validate replaying a run recorded under DP + EP."""
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from s3sim.core.data_parallel import DataParallelScheduler
from s3sim.core.kv_pool import KVPool
from s3sim.core.policies.vllm import VllmScheduler
from s3sim.core.request import make_requests
from s3sim.simulator.engine import simulate

DATA = Path(__file__).parents[2] / "shared" / "data" / "vllm_runs"
MOE = DATA / "rtxpro6000-qwen3-30b-a3b" / "profile"
LLAMA = DATA / "rtxpro6000-llama-3.1-8b" / "run"


def rank(blocks=200):
    return VllmScheduler(KVPool(blocks, unit_tokens=16), 64, max_num_batched_tokens=64, max_batch_size=8)


class Flat:
    """A latency model for the scheduler tests: every step 10 ms per rank's work, the slowest rank's."""

    def batch_time(self, out):
        return 0.001 + 0.0001 * max(p.prefill_tokens + p.decode_n for p in out.parts)


def test_requests_go_to_the_least_loaded_rank_and_every_one_finishes_once():
    dp = DataParallelScheduler([rank(), rank()])
    reqs = make_requests([20] * 12, [10] * 12, [0.0] * 12)
    dp.add(reqs)
    assert [dp.rank_of[r.id] for r in reqs] == [0, 1] * 6  # 4 x waiting + running: alternate on ties
    res = simulate(make_requests([20, 30, 5, 60, 8, 40], [10, 3, 30, 7, 12, 1], [0, 0, 0.001, 0.002, 0.01, 0.02]),
                   DataParallelScheduler([rank(), rank()]), Flat())
    assert sorted(r.id for r in res.scheduler.finished) == list(range(6))
    for r in res.requests:
        assert r.arrival <= r.admitted <= r.first_token <= r.last_token <= r.finished and r.generated == r.output_len
    res.scheduler.pool.check_empty()


def test_a_step_lasts_as_long_as_its_slowest_rank_and_the_ranks_step_together():
    res = simulate(make_requests([64, 4], [2, 40], [0.0, 0.0]), DataParallelScheduler([rank(), rank()]), Flat())
    frame = res.log.frame()
    # the first step: rank 0 prefills 64 tokens, rank 1 4: the step is rank 0's
    assert frame.duration.iloc[0] == pytest.approx(0.001 + 0.0064)
    assert (frame.batch_size >= 1).all() and res.engine_steps == len(frame)


def exchanges(gather, m, tokens: int) -> float:
    """vLLM's two exchanges a layer for `tokens` (ranks x the largest rank's): the hidden states with each token's
    router logits gathered, then the hidden states handed back."""
    return (float(gather.time_s(2, tokens * (m.hidden_size + m.n_experts) * m.dtype_bytes))
            + float(gather.time_s(2, tokens * m.hidden_size * m.dtype_bytes)))


@pytest.mark.skipif(not MOE.is_dir(), reason="no shared MoE profile")
def test_expert_parallel_pricing_adds_the_experts_of_the_whole_batch_and_its_exchange():
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.models import get_model
    from s3sim.hardware.network import all_gather_model
    from s3sim.latency.data_parallel import DataParallelLatency
    from s3sim.latency.operators import OperatorLatency
    from s3sim.core.data_parallel import merged
    from s3sim.core.output import SchedulerOutput

    m, g = get_model("qwen3-30b-a3b"), get_gpu("rtx-pro-6000")
    inner = OperatorLatency.from_profile(MOE, m, g)
    gather = all_gather_model(g, 2)
    ep = DataParallelLatency(inner, 2, gather)
    busy = SchedulerOutput(decode=[], decode_n=32, decode_ctx=32 * 1000)
    idle = SchedulerOutput()
    one_busy = ep.batch_time(merged([busy, idle]))
    both_busy = ep.batch_time(merged([busy, busy]))
    assert both_busy > one_busy > 0  # the experts see both ranks' tokens
    expected = (ep._rank(busy)[0] + inner.layers * (inner.experts.seconds_expert_parallel(33.0, 2)
                + exchanges(gather, m, 2 * 32)))
    # the idle rank's dummy token joins the expert layer; each exchange moves the largest rank's 32 from each rank
    assert one_busy == pytest.approx(expected)
    alone = OperatorLatency.from_profile(MOE, m, g).batch_time(SimpleNamespace(
        decode_n=32, decode_ctx=32000, prefill_lens=[], prefill_prefix=[], prefill_tokens=0, prefill=[],
        partial=[], transfer_tokens=0))
    assert abs(one_busy / alone - 1) < 1.0  # the same order as one engine serving it


@pytest.mark.skipif(not MOE.is_dir(), reason="no shared MoE profile")
def test_within_a_cuda_graph_every_rank_is_padded_to_the_largest_ranks_tokens():
    """vLLM pads the data-parallel ranks to the same token count where their batches fit a CUDA graph: the idle
    rank's dummy runs 33 tokens and the expert layer sees 2 x 33; beyond the largest graph, nothing is padded."""
    from s3sim.core.data_parallel import merged
    from s3sim.core.output import SchedulerOutput
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.models import get_model
    from s3sim.hardware.network import all_gather_model
    from s3sim.latency.data_parallel import DataParallelLatency
    from s3sim.latency.operators import OperatorLatency

    m, g = get_model("qwen3-30b-a3b"), get_gpu("rtx-pro-6000")
    inner = OperatorLatency.from_profile(MOE, m, g)
    gather = all_gather_model(g, 2)
    busy = SchedulerOutput(decode=[], decode_n=33, decode_ctx=33 * 1000)
    step = merged([busy, SchedulerOutput()])
    padded, eager = (DataParallelLatency(inner, 2, gather, graph_tokens=k).batch_time(step) for k in (512, 16))
    rank = DataParallelLatency(inner, 2, gather)._rank(busy)[0]
    experts = lambda total: inner.layers * (inner.experts.seconds_expert_parallel(float(total), 2)
                                            + exchanges(gather, m, 66))
    assert padded == pytest.approx(rank + experts(66))
    assert eager == pytest.approx(rank + experts(34))  # 33 tokens and the idle rank's one; the exchange 2 x 33


@pytest.mark.skipif(not MOE.is_dir(), reason="no shared MoE profile")
def test_each_ranks_uneven_decode_contexts_cost_what_the_profile_measured():
    """The MoE profile measured uneven decode contexts (its skew_fit alpha): a rank whose longest context is far
    above its mean pays the inner model's extra for it, and the step is the slowest rank's; the engine hands
    every rank's longest context (DataParallelScheduler.max_context)."""
    from s3sim.core.data_parallel import merged
    from s3sim.core.output import SchedulerOutput
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.models import get_model
    from s3sim.hardware.network import all_gather_model
    from s3sim.latency.data_parallel import DataParallelLatency
    from s3sim.latency.operators import OperatorLatency

    m, g = get_model("qwen3-30b-a3b"), get_gpu("rtx-pro-6000")
    inner = OperatorLatency.from_profile(MOE, m, g)
    ep = DataParallelLatency(inner, 2, all_gather_model(g, 2))
    assert ep.skew_alpha == inner.skew_alpha > 0
    busy = SchedulerOutput(decode=[], decode_n=32, decode_ctx=32 * 1000)
    step = merged([busy, busy])
    even, uneven = ep.batch_time(step, (1000, 1000)), ep.batch_time(step, (1000, 8000))
    extra = inner.batch_time(busy, max_ctx=8000, experts=False) - inner.batch_time(busy, experts=False)
    assert extra > 0 and uneven - even == pytest.approx(extra)
    assert even == pytest.approx(ep.batch_time(step))  # contexts at their mean: no extra
    dp = DataParallelScheduler([rank(), rank()])
    dp.add(make_requests([20, 900], [5, 5], [0.0, 0.0]))
    dp.schedule(0.0)
    assert len(dp.max_context()) == 2


def moe_run(tmp_path, n=40, **engine):
    """The first `n` requests of the PRO 6000 Llama run, recorded as if Qwen3-30B-A3B under `engine` settings."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    meta = json.loads((LLAMA / "meta.json").read_text())
    meta["model"] = "Qwen/Qwen3-30B-A3B"
    meta["num_requests"] = n
    meta["engine_kwargs"].update(model="Qwen/Qwen3-30B-A3B", **engine)
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "requests.jsonl").write_text("".join((LLAMA / "requests.jsonl").read_text().splitlines(True)[:n]))
    ts = pd.read_csv(LLAMA / "timeseries.csv")
    ts.to_csv(run / "timeseries.csv", index=False)
    (tmp_path / "profile").symlink_to(MOE)
    return run


@pytest.mark.skipif(not (MOE.is_dir() and LLAMA.is_dir()), reason="no shared runs")
def test_validate_replays_a_data_parallel_expert_parallel_run_and_refuses_what_it_does_not_model(tmp_path, capsys):
    from s3sim.validation.cli import main
    run = moe_run(tmp_path / "a", data_parallel_size=2, enable_expert_parallel=True)
    rc = main([str(run), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "data parallel 2 with expert parallelism" in out.out and "all-gather measured" in out.out
    assert "on each of the 2 ranks" in out.out
    table = pd.read_csv(tmp_path / "out" / "validation.csv")
    queue = table.metric.str.startswith("queue_")  # taken in at once where there is room: 0, as vLLM records it
    assert (table.simulated[~queue] > 0).all() and (table.simulated[queue] >= 0).all()
    for bad, words in ((dict(data_parallel_size=2, tensor_parallel_size=2), "not modelled"),
                       (dict(enable_expert_parallel=True), "data_parallel_size=1"),
                       (dict(data_parallel_size=2), "without enable_expert_parallel")):
        run = moe_run(tmp_path / str(len(words)) / words[:3], **bad)
        assert main([str(run), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not (MOE.is_dir() and LLAMA.is_dir()), reason="no shared runs")
def test_ranks_that_ran_without_cuda_graphs_are_not_padded(tmp_path, capsys):
    """vLLM pads every rank to the largest rank's tokens only to fit a captured CUDA graph: a run with
    enforce_eager has none, and its replay pads nothing (so its steps cost less than the padded ones)."""
    from s3sim.validation.cli import main
    results = {}
    for eager in (False, True):
        run = moe_run(tmp_path / str(eager), data_parallel_size=2, enable_expert_parallel=True, enforce_eager=eager)
        assert main([str(run), "--out", str(tmp_path / f"out{eager}")]) == 0
        results[eager] = (capsys.readouterr().out, pd.read_csv(tmp_path / f"out{eager}" / "validation.csv"))
    assert "every rank padded to the largest rank's" in results[False][0]
    assert "no CUDA graphs (engine_kwargs.enforce_eager), so no rank padded" in results[True][0]
    tpot = {k: float(t.set_index("metric").simulated["tpot_mean_ms"]) for k, (_, t) in results.items()}
    assert tpot[True] < tpot[False]


@pytest.mark.skipif(not LLAMA.is_dir(), reason="no shared runs")
def test_a_dense_model_under_data_parallelism_replays_as_independent_engines_behind_vllms_balancer(tmp_path, capsys):
    """Llama 3.1 8B at data_parallel_size 2: two engines that step on their own (no lockstep, no dummy steps),
    each request sent to the rank with the lowest 4 x waiting + running, every request finished once; with the
    same arrivals, two such ranks serve them sooner than one engine does."""
    from s3sim.validation.cli import main
    run = tmp_path / "dp" / "run"
    run.mkdir(parents=True)
    meta = json.loads((LLAMA / "meta.json").read_text())
    meta["num_requests"] = 40
    meta["engine_kwargs"].update(data_parallel_size=2)
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "requests.jsonl").write_text("".join((LLAMA / "requests.jsonl").read_text().splitlines(True)[:40]))
    pd.read_csv(LLAMA / "timeseries.csv").to_csv(run / "timeseries.csv", index=False)
    (tmp_path / "dp" / "profile").symlink_to(LLAMA.parent / "profile")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 ranks of a dense model, independent engines" in out and "step together" not in out
    two = pd.read_csv(tmp_path / "out" / "validation.csv").set_index("metric").simulated
    meta["engine_kwargs"].update(data_parallel_size=1)
    (run / "meta.json").write_text(json.dumps(meta))
    assert main([str(run), "--out", str(tmp_path / "one")]) == 0
    one = pd.read_csv(tmp_path / "one" / "validation.csv").set_index("metric").simulated
    assert two["e2e_latency_mean_ms"] < one["e2e_latency_mean_ms"]


def test_vllms_balancer_counts_what_was_routed_and_not_yet_taken_in_as_waiting():
    from s3sim.cluster.routers import VllmDataParallel
    replicas = [SimpleNamespace(dp_load=3), SimpleNamespace(dp_load=1), SimpleNamespace(dp_load=1)]
    assert VllmDataParallel().place(None, replicas, 0) == 1  # the lowest load, the lowest index on a tie
    from s3sim.simulator.engine import ReplicaState
    sched = SimpleNamespace(running={1: 0, 2: 0}, prefilling={3: 0}, finished=[0] * 4, waiting=[])
    state = ReplicaState(SimpleNamespace(sched=sched), 1000)
    state.routed = 9  # 4 finished, 3 in the batch, 2 routed and waiting (or not yet taken in)
    assert state.dp_load == 4 * 2 + 3


QWEN = DATA / "rtxpro6000-qwen3-32b"


@pytest.mark.skipif(not (QWEN / "run").is_dir(), reason="no shared Qwen3-32B run")
def test_a_dense_models_data_parallel_ranks_may_each_be_tensor_parallel(tmp_path, capsys):
    from s3sim.validation.cli import main
    run = tmp_path / "q" / "run"
    run.mkdir(parents=True)
    meta = json.loads((QWEN / "run" / "meta.json").read_text())
    meta["num_requests"] = 30
    meta["engine_kwargs"].update(data_parallel_size=2)
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "requests.jsonl").write_text("".join((QWEN / "run" / "requests.jsonl").read_text().splitlines(True)[:30]))
    pd.read_csv(QWEN / "run" / "timeseries.csv").to_csv(run / "timeseries.csv", index=False)
    (tmp_path / "q" / "profile").symlink_to(QWEN / "profile")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "tp2; data parallel 2" in out and "independent engines" in out and "as the engine ran it" in out


DP = ("model=qwen3-30b-a3b-instruct-2507", "gpu=rtx-pro-6000", "gpu.data_parallel=2", "latency=operators",
      f"latency.path={MOE}", "workload=sharegpt", "arrival=poisson", "arrival.rate=8", "num_requests=120",
      "max_seq_len=512")


@pytest.mark.skipif(not MOE.is_dir(), reason="no shared MoE profile")
@pytest.mark.parametrize("policy", ["s3", "vllm", "orca", "paged"])
def test_s3sim_serves_an_moe_model_on_data_parallel_expert_parallel_ranks(cfg, tmp_path, policy):
    """`gpu.data_parallel=2 gpu.expert_parallel=true`: two one-GPU ranks stepping together behind vLLM's balancer,
    each holding the shared weights and half the experts (so more KV than a rank holding them all), every request
    finished once, the pools empty, and the summary saying so (gpus_per_engine, collectives)."""
    from s3sim.cluster.build import build
    from s3sim.core.data_parallel import DataParallelScheduler
    from s3sim.latency.data_parallel import DataParallelLatency
    from s3sim.runner import run_config

    from s3sim.hardware.capacity import rank_weight_bytes
    from s3sim.hardware.models import get_model

    ep = build(cfg(*DP, "gpu.expert_parallel=true", f"policy={policy}"))
    assert isinstance(ep.scheduler, DataParallelScheduler) and isinstance(ep.latency, DataParallelLatency)
    pool = ep.scheduler.ranks[0].pool
    assert 0 <= ep.capacity_tokens // 2 - pool.capacity * pool.unit_tokens < pool.unit_tokens  # each rank its half
    m = get_model("qwen3-30b-a3b-instruct-2507")
    assert rank_weight_bytes(m, 2) < m.weight_bytes  # half the experts leave room for KV
    row = run_config(cfg(*DP, "gpu.expert_parallel=true", f"policy={policy}"), tmp_path, write_iterations=True)
    req = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(req) == 120 and req.id.is_unique and req.finished.notna().all()
    assert row["gpus_per_engine"] == 2 and "all-gather" in row["collectives"]
    assert 0 < row["kv_peak_reserved_frac"] <= 1 and row["policy"] == policy
    it = pd.read_csv(tmp_path / "iterations.csv")  # KV in use (paused decodes' too) within what is reserved
    assert (it.kv_used <= it.kv_reserved).all() and (it.kv_used > 0).any()


@pytest.mark.skipif(not MOE.is_dir(), reason="no shared MoE profile")
@pytest.mark.parametrize("overrides, words", [
    (("model=llama-3.1-8b", f"latency.path={DATA / 'rtxpro6000-llama-3.1-8b' / 'profile'}"),
     ["dense model", "cluster.replicas=2"]),
    (("gpu.count=2",), ["gpu.data_parallel=2 with gpu.count=2", "one GPU each"]),
    (("gpu.data_parallel=1", "gpu.expert_parallel=true"), ["gpu.expert_parallel=true needs gpu.data_parallel > 1"]),
    ((), ["without gpu.expert_parallel=true", "shards every expert"]),
    (("gpu.data_parallel=200", "gpu.expert_parallel=true"), ["gpu.data_parallel=200", "128 experts"]),
    (("gpu.expert_parallel=true", "latency.all_reduce=link:16:20"), ["prices all-reduces only"]),
    (("gpu.expert_parallel=maybe",), ["gpu.expert_parallel must be true or false"]),
    (("gpu.data_parallel=0",), ["gpu.data_parallel"]),
    (("policy=hf", "gpu.expert_parallel=true"), ["policy=hf copies its KV cache", "gpu.data_parallel=1"]),
    (("latency=datasheet", "gpu.expert_parallel=true"), ["latency=operators with a moe.csv"]),
    (("latency.graph_tokens=-1", "gpu.expert_parallel=true"), ["latency.graph_tokens must be >= 0"]),
])
def test_what_data_parallel_ranks_do_not_model_is_one_line(cfg, overrides, words):
    from s3sim.cluster.build import build
    from s3sim.core.errors import ConfigError

    base = [o for o in DP if not o.startswith("latency.")] if "latency=datasheet" in overrides else DP
    with pytest.raises(ConfigError) as e:
        build(cfg(*[o for o in base if o != "latency=operators" or "latency=datasheet" not in overrides],
                  *overrides))
    assert all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.skipif(not MOE.is_dir(), reason="no shared MoE profile")
@pytest.mark.parametrize("router", ["predicted", "least_kv"])
def test_data_parallel_engines_behind_a_router_finish_every_request_once(cfg, tmp_path, router):
    """Two such engines behind a router: the router reads each engine's finished requests in the order they
    finished and its reserved KV (summed over its ranks), and every replica drains (simulate_cluster checks)."""
    from s3sim.runner import run_config

    row = run_config(cfg(*DP, "gpu.expert_parallel=true", "policy=s3", "cluster.replicas=2",
                         f"cluster.router={router}"), tmp_path)
    req = pd.read_parquet(tmp_path / "requests.parquet")
    reps = pd.read_csv(tmp_path / "replicas.csv")
    assert len(req) == 120 and req.finished.notna().all() and reps.num_requests.sum() == 120
    assert row["gpus_per_engine"] == 2
