"""Replicas behind a router: one replica is the single engine to the last bit, each router places requests
as it says on hand-built states, a cluster keeps every invariant, and bad input is one line."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from s3sim.simulator.engine import simulate_cluster
from s3sim.cluster.routers import ROUTERS, LeastKv, LeastOutstanding, Predicted, RoundRobin
from s3sim.cluster.build import build
from s3sim.core.errors import ConfigError
from s3sim.core.request import Request, make_requests
from s3sim.metrics.summary import request_records, summarize
from s3sim.runner import run_config
from s3sim.simulator.engine import simulate

SMALL = ("num_requests=400", "arrival=poisson", "arrival.rate=30", "max_seq_len=512", "model=llama-2-7b")


def _requests(setup):
    return make_requests(setup.prompt_len, setup.output_len, setup.arrivals)


@pytest.mark.parametrize("policy", ["s3", "orca", "vllm", "paged"])
def test_one_replica_is_the_single_engine_bit_for_bit(cfg, policy):
    c = cfg(*SMALL, f"policy={policy}")
    a = build(c)
    single = simulate(_requests(a), a.scheduler, a.latency)
    b = build(cfg(*SMALL, f"policy={policy}", "cluster.router=least_kv"))
    cluster = simulate_cluster(_requests(b), b.replicas, b.router)
    one = cluster.replicas[0]
    assert one.end_time == single.end_time and one.engine_steps == single.engine_steps
    pd.testing.assert_frame_equal(request_records(one.requests), request_records(single.requests))
    assert summarize(one, a.slo) == summarize(single, a.slo)
    assert (cluster.assignment == 0).all()


# ---- routers on hand-built replicas ---------------------------------------------------------------
def _state(outstanding=0, kv=0.0, predicted=0, cap=1000):
    return SimpleNamespace(outstanding=outstanding, kv_load=kv, predicted_tokens=predicted, capacity_tokens=cap)


def _req(i=0, prompt=10, output=100):
    return Request(i, prompt, output, 0.0)


def test_round_robin_cycles():
    r = RoundRobin()
    reps = [_state() for _ in range(3)]
    assert [r.place(_req(i), reps, 10) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_and_least_kv():
    reps = [_state(5, 0.2), _state(2, 0.9), _state(2, 0.1), _state(3, 0.1)]
    assert LeastOutstanding().place(_req(), reps, 10) == 1  # ties go to the lower index
    assert LeastKv().place(_req(), reps, 10) == 2  # least KV, then fewest outstanding
    assert LeastKv().place(_req(), [_state(4, 0.5), _state(1, 0.5)], 10) == 1


def test_predicted_places_by_footprint_per_pool_token():
    predictor = SimpleNamespace(predict=lambda rs: np.array([2] * len(rs)),
                                buckets=SimpleNamespace(midpoint=lambda b: {2: 300.0}[b]))
    r = Predicted(predictor, max_seq_len=512)
    assert r.footprint(_req(prompt=20)) == 320
    # 600 + 320 over 1000 vs 1500 + 320 over 4000: the larger pool wins although it holds more
    assert r.place(_req(), [_state(predicted=600, cap=1000), _state(predicted=1500, cap=4000)], 320) == 1
    assert r.place(_req(), [_state(predicted=100, cap=1000), _state(predicted=1500, cap=4000)], 320) == 0


# ---- invariants -------------------------------------------------------------------------------------
@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_every_request_finishes_once_on_one_replica(cfg, router, tmp_path):
    c = cfg(*SMALL, "cluster.replicas=3", f"cluster.router={router}")
    row = run_config(c, tmp_path)
    req = pd.read_parquet(tmp_path / "requests.parquet")
    reps = pd.read_csv(tmp_path / "replicas.csv")
    assert len(req) == 400 and req.id.is_unique and req.finished.notna().all()
    assert set(req.replica) <= {0, 1, 2}
    assert list(reps.num_requests) == [int((req.replica == i).sum()) for i in range(3)]
    assert row["replicas"] == 3 and row["router"] == router and row["num_requests"] == 400
    assert row["replica_requests"] == "/".join(str(n) for n in reps.num_requests)
    if router == "round_robin":
        assert list(reps.num_requests) == [134, 133, 133]
    assert pd.read_csv(tmp_path / "summary.csv").replicas.item() == 3


def test_three_replicas_serve_a_load_one_cannot(cfg):
    heavy = ("num_requests=600", "arrival=poisson", "arrival.rate=60", "max_seq_len=512", "model=llama-2-7b",
             "policy=orca")
    one = run_config(cfg(*heavy))
    three = run_config(cfg(*heavy, "cluster.replicas=3", "cluster.router=least_outstanding"))
    assert three["ttft_p50"] < one["ttft_p50"] and three["request_throughput"] > one["request_throughput"]
    assert 0 < three["gpu_busy_frac"] <= 1


def test_a_replica_on_another_gpu(cfg):
    s = build(cfg(*SMALL, "cluster.replicas=2", 'cluster.overrides={1: {gpu: {name: h200}}}'))
    assert s.gpus == ["1 x a100-80gb-pcie", "1 x h200"]
    assert s.replicas[1][2] > s.replicas[0][2]  # more KV on the larger GPU


# ---- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("cluster.replicas=0", "cluster.replicas must be a positive integer"),
    ("cluster.router=random", "cluster.router"),
    ('cluster.overrides={5: {gpu: {name: a40}}}', "cluster.overrides: replica 5 does not exist"),
    ('cluster.overrides={1: {model: {name: opt-13b}}}', "replica 1 sets 'model'; a replica may differ in"),
    ('cluster.overrides={1: {gpu: {name: rtx-4090}}}', "cluster replica 1: "),
    ('cluster.overrides={1: {policy: {name: orca}}}',
     "cluster.overrides: replica 1 sets policy.name=orca, but every replica runs the run's policy (s3)"),
    ('cluster.overrides={1: {policy: oracle}}', "replica 1 sets policy.name=oracle, but every replica runs"),
    ('cluster.overrides={1: {policy: {name: nope}}}', "replica 1 policy.name 'nope' is unknown; valid: ft, hf"),
    ('cluster.overrides={1: {latency: {name: nope}}}', "replica 1 latency.name 'nope' is unknown; valid: datasheet"),
    ('cluster.overrides={1: {latency: {name: roofline, launch_s: 1}}}', "cluster replica 1: latency.launch_s"),
    ('cluster.overrides={1: {policy: 3}}', "replica 1 policy must be settings such as {name: ...}, got 3"),
    ('cluster.overrides={1.5: {gpu: {count: 2}}}', "cluster.overrides: 1.5 is not a replica index (0..1)"),
    ("cluster.overrides=0", "cluster.overrides must map replica indices to settings, got 0"),
])
def test_bad_cluster_input_is_one_line(cfg, override, message):
    c = cfg(*SMALL[:-1], "model=llama-2-13b", "cluster.replicas=2", override)
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        build(c)
    assert "\n" not in str(e.value)


def test_replicas_needed_finds_the_fewest_that_meet_the_slo(tmp_path):
    from s3sim.experiments.common import Composer, meets_slo, replicas_needed

    pts = [{"policy": "orca", "target": 250.0, "start": 1,
            "overrides": ["model=llama-2-7b", "policy=orca", "max_seq_len=512", "slo.ttft=2.0"]}]
    found, runs = replicas_needed(pts, tmp_path, Composer(), jobs=1, window_s=10.0, least=300)
    n = int(found.replicas.iloc[0])
    ok = {int(r.n): meets_slo(r) for _, r in runs.iterrows()}
    assert ok[n] and n > 1 and (n - 1) in ok and not ok[n - 1]  # n passes; n - 1 was tried and failed
    assert list(runs.n) == sorted(set(runs.n), key=list(runs.n).index)  # no count simulated twice
    assert found.router.iloc[0] == "least_outstanding"


# ---- a replica's own policy settings or latency model ---------------------------------------------
def _group(group, name):
    from omegaconf import OmegaConf

    from s3sim.config import CONF_DIR
    return OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/{group}/{name}.yaml"))


def test_a_replica_naming_its_policy_starts_from_that_policys_defaults(cfg):
    run = (*SMALL, "policy=vllm", "policy.max_num_batched_tokens=4096", "policy.block_size=32", "cluster.replicas=3")
    s = build(cfg(*run, "cluster.overrides={1: {policy: {name: vllm, max_batch_size: 64}}, "
                                "2: {policy: {max_batch_size: 64}}}"))
    from s3sim.config import policy_node

    defaults = _group("policy", "vllm")
    assert defaults["max_num_batched_tokens"] == "auto" and defaults["block_size"] != 32  # the run set its own
    resolved, _ = policy_node(cfg(*SMALL, "policy=vllm"))  # vLLM's limits for this GPU preset and arrival
    assert resolved["max_num_batched_tokens"] != 4096 and resolved["max_batch_size"] != 64
    (s0, _, _), (s1, _, _), (s2, _, _) = s.replicas
    assert (s0.token_budget, s0.pool.unit_tokens, s0.max_batch) == (4096, 32, resolved["max_batch_size"])
    # named: as `policy=vllm` composes it, the override's other settings over that
    assert (s1.token_budget, s1.pool.unit_tokens, s1.max_batch) == (
        resolved["max_num_batched_tokens"], defaults["block_size"], 64)
    # not named: merged over the run's
    assert (s2.token_budget, s2.pool.unit_tokens, s2.max_batch) == (4096, 32, 64)


@pytest.mark.parametrize("override", ["{1: {latency: {name: roofline}}}", "{1: {latency: roofline}}",
                                      "{1: {latency: {name: roofline, overhead_s: 0.01}}}"])
def test_a_replica_on_another_latency_model(cfg, override, tmp_path):
    c = cfg(*SMALL, "cluster.replicas=2", "policy=orca", f"cluster.overrides={override}")
    assert c["latency"]["name"] == "datasheet"
    s = build(c)
    (_, lat0, _), (_, lat1, _) = s.replicas
    assert (lat0.name, lat1.name) == ("datasheet", "roofline")
    want = {**_group("latency", "roofline"), **({"overhead_s": 0.01} if "overhead_s" in override else {})}
    assert lat1.overhead_s == want["overhead_s"]
    row = run_config(c, tmp_path)  # end to end: the summary row and one row per replica
    reps = pd.read_csv(tmp_path / "replicas.csv")
    assert row["num_requests"] == 400 and row["policy"] == "orca" and list(reps.replica) == [0, 1]
    assert reps.num_requests.sum() == 400


def test_mixed_policies_are_refused_before_anything_is_simulated(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", "policy=orca",
                        "cluster.replicas=2", "cluster.overrides={1: {policy: {name: s3}}}", "num_requests=100000",
                        f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-500:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "replica 1 sets policy.name=s3, but every replica runs the run's policy (orca)" in lines[0]
    assert not (tmp_path / "run" / "summary.csv").exists() and not (tmp_path / "run" / "requests.parquet").exists()
