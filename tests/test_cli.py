"""The user-facing surface: the s3sim app, its run directory, sweeps, collection, and clear errors."""
import re
import subprocess
import sys

import pandas as pd
import pytest

from s3sim.cluster.build import build
from s3sim.core.errors import ConfigError
from s3sim.runner import run_config

S3SIM = [sys.executable, "-c", "from s3sim.cli import main; main()"]
SMALL = ["num_requests=200", "max_seq_len=512"]


def s3sim(*args, cwd):
    return subprocess.run([*S3SIM, *args], capture_output=True, text=True, cwd=cwd)


def test_run_writes_summary_records_and_config(tmp_path):
    p = s3sim(*SMALL, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "run"
    summary = pd.read_csv(run / "summary.csv")
    assert len(summary) == 1 and summary.policy[0] == "s3"
    records = pd.read_parquet(run / "requests.parquet")
    assert len(records) == 200 and (records.generated == records.output_len).all()
    assert "max_seq_len: 512" in (run / "resolved_config.yaml").read_text()
    assert summary.workload_rows[0] == 10_000 and summary.rows_used[0] == "sample"
    assert "note: 200 requests from 10,000 workload rows (a seeded sample); num_requests=null replays every row once" \
        in p.stdout
    # the line of headline numbers carries the summary's units (seconds beside s3sim-validate's milliseconds)
    from s3sim.metrics.schema import SUMMARY
    units = {c.name: c.unit for c in SUMMARY}
    line = p.stdout.splitlines()[0]
    for key, unit in (("request_throughput", units["request_throughput"]), ("ttft_p50", units["ttft_{stat}"]),
                      ("tpot_p50", units["tpot_{stat}"]), ("e2e_latency_p99", units["e2e_latency_{stat}"])):
        assert re.search(rf"\b{key}=[\d.e+-]+ {re.escape(unit)}(  |$)", line), (key, unit, line)


def test_a_run_on_several_gpus_says_how_many_in_its_summary(cfg):
    """summary.csv's gpu names the preset; a tensor-parallel (or pipelined) engine's GPU count is beside it."""
    one = run_config(cfg("num_requests=30", "max_seq_len=256"))
    two = run_config(cfg("num_requests=30", "max_seq_len=256", "gpu.count=2"))
    assert "gpus_per_engine" not in one and two["gpus_per_engine"] == 2 and two["gpu"] == one["gpu"]


@pytest.mark.parametrize("latency", ["roofline", "datasheet"])
def test_free_collectives_are_named_in_the_summary_by_every_latency_model(cfg, latency):
    """latency.all_reduce=none on several GPUs: the summary's collectives says they were free, for the roofline as
    for the datasheet (the roofline used to leave the column out, as if nothing were split)."""
    row = run_config(cfg("num_requests=30", "max_seq_len=256", "gpu.count=2", f"latency={latency}",
                         "latency.all_reduce=none"))
    assert row["collectives"] == "none (free)"


def test_with_repeats_the_headline_says_it_holds_means_and_their_intervals(tmp_path):
    p = s3sim(*SMALL, "repeats=2", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    line = p.stdout.splitlines()[0]
    ci = pd.read_csv(tmp_path / "run" / "summary.csv").request_throughput_ci95[0]
    assert line.startswith("mean of 2 seeds (± 95 % interval): policy=s3  request_throughput=")
    assert f" ± {ci:.2g} req/s" in line
    # the simulator's time is the whole run's, every seed's together (it was the first seed's)
    summary, seeds = (pd.read_csv(tmp_path / "run" / f) for f in ("summary.csv", "repeats.csv"))
    assert summary.sim_wall_s[0] == pytest.approx(seeds.sim_wall_s.sum())
    assert summary.sim_requests_per_s[0] == pytest.approx(seeds.num_requests.sum() / seeds.sim_wall_s.sum())


def test_keys_of_a_users_own_mapping_can_be_added(tmp_path):
    """A replica's overrides and a log's column names are the user's keys: `+` adds them (they are checked where
    read), and without `+` the error says to add one."""
    p = s3sim(*SMALL, "cluster.replicas=2", "+cluster.overrides.1.gpu.name=a40", f"hydra.run.dir={tmp_path}/a",
              cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    log = tmp_path / "log.csv"
    log.write_text("ts,pin,pout\n0,10,5\n1,12,3\n")
    cols = ["workload=trace", f"workload.path={log}", "workload.format=columns", "arrival=trace", "max_seq_len=64",
            "num_requests=2"]
    p = s3sim(*cols, "+workload.columns.timestamp=ts", "+workload.columns.prompt=pin", "+workload.columns.output=pout",
              f"hydra.run.dir={tmp_path}/b", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = s3sim(*cols, "workload.columns.timestamp=ts", f"hydra.run.dir={tmp_path}/c", cwd=tmp_path)
    assert p.returncode == 2 and "add it with +workload.columns.timestamp=ts" in p.stderr


def test_a_true_false_setting_given_as_off_is_false_everywhere(tmp_path):
    """policy.prefix_caching=off reached the scheduler as false but the summary as true; write_iterations=no wrote
    iterations.csv. Both are read as a typed config reads them now, and anything else is one line."""
    p = s3sim(*SMALL, "policy=vllm", "policy.prefix_caching=off", "write_iterations=no",
              f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not pd.read_csv(tmp_path / "run" / "summary.csv").prefix_caching[0]
    assert not (tmp_path / "run" / "iterations.csv").exists()
    # in the folder of a finished run, the refused one leaves no summary: it would be taken for this run's
    p = s3sim(*SMALL, "write_iterations=maybe", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 2 and "write_iterations must be true or false, got 'maybe'" in p.stderr
    assert not (tmp_path / "run" / "summary.csv").exists()


def test_a_split_and_a_trace_replay_whole_by_default(tmp_path, cfg):
    """No num_requests given: every row of the held-out split, every request of the trace, once; a number
    given is a recorded sample (or a recorded cycle), never a silent cut."""
    split = build(cfg("workload=sharegpt_pairs", "workload.split=test"))
    whole = build(cfg("workload=sharegpt_pairs", "workload.split=test", "num_requests=null"))
    assert len(split.prompt_len) == split.workload_rows == len(whole.prompt_len) > 2000
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{i}.0,{10 + i},5\n" for i in range(30)))
    c = cfg("workload=trace", f"workload.path={trace}", "arrival=trace", "max_seq_len=64")
    row = run_config(c)
    assert row["num_requests"] == row["workload_rows"] == 30 and row["rows_used"] == "all"
    more = run_config(cfg("workload=trace", f"workload.path={trace}", "max_seq_len=64", "num_requests=45"))
    assert more["rows_used"] == "cycled" and more["workload_rows"] == 30


def test_multirun_compares_policies_and_collects(tmp_path):
    p = s3sim("-m", "policy=ft,orca,s3,oracle,paged", *SMALL, f"hydra.sweep.dir={tmp_path}/mr", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = subprocess.run([sys.executable, "-c", "from s3sim.cli import collect_main; collect_main()",
                          str(tmp_path / "mr"), str(tmp_path / "all.csv")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(tmp_path / "all.csv")
    assert sorted(table.policy) == sorted(["ft", "orca", "s3", "oracle", "paged"])
    assert (table.num_requests == 200).all()


@pytest.mark.parametrize("args, message", [
    (["policy=nope"], "policy=nope: unknown; valid: ft, hf, oracle, orca, paged, paged_spf, s3, vllm"),
    (["polcy.name=s3"], "polcy.name: no such key; did you mean policy.name?"),
    (["policy.name=nope"], "policy.name 'nope' is unknown; valid: ft, hf, orca, s3, oracle, paged"),
    (["arrival=poisson", "arrival.rate=-1"], "arrival.rate must be a positive number"),
    (["arrival=poisson", "arrival.rate=0"], "arrival.rate must be a positive number"),
    (["model=opt-30b", "gpu=a100-40gb-pcie"], "does not fit"),
    (["model.name=gpt-5"], "gpt-j-6b"),
    (["gpu.name=tpu"], "a100-80gb-pcie"),
    (["workload.data_dir=/nonexistent/data"], "data file not found"),
    (["predictor.num_buckets=1"], "predictor.num_buckets must be"),
    (["predictor.accuracy=1.5"], "predictor.accuracy must be between 0 and 1"),
    (["max_seq_len=100000000"], "max_seq_len=100000000 exceeds the context window of gpt-j-6b (2,048 tokens)"),
    (["+kv_capacity_tokens=10"], "cannot hold one request"),
    (["gpu.count=3"], "gpu.count=3 cannot split gpt-j-6b's 16 attention heads"),
    (["seed=1.7"], "seed must be a non-negative integer, got 1.7"),
    (["seed=abc"], "seed must be a non-negative integer, got 'abc'"),
    (["seed=-1"], "seed must be a non-negative integer, got -1"),
    (["predictor.accuracy=true"], "predictor.accuracy must be a number between 0 and 1, got True"),
    (["slo.ttft=-1"], "slo.ttft must be a positive number of seconds or null, got -1"),
    (["slo.tpot=abc"], "slo.tpot must be a positive number of seconds or null, got 'abc'"),
    (["arrival=poisson", "arrival.rate=1e-300"], "arrival.rate: arrivals would reach"),
    (["latency.compute_efficiency=abc"], "latency.compute_efficiency"),
    (["model.dtype=int8"], "model.dtype 'int8' is unknown; valid: float16, bfloat16, float32"),
    # a key that would be carried along and ignored is refused, and the nearest key is one of the chosen config's
    (["+num_request=50"], "+num_request: no part of s3sim reads this key, so it would be ignored; did you mean "
                          "num_requests?"),
    (["+arrival.rate=3"], "arrival.rate=3 is set, but arrival=offline takes no rate"),
    (["+gpu.foo=1"], "+gpu.foo: no part of s3sim reads this key"),
    (["arrival=poisson", "+arrival.burstiness=0.5"], "arrival=poisson takes no burstiness: choose arrival=gamma"),
    (["arrival.rate=3"], "arrival.rate: the chosen arrival has no such key; arrival=gamma, arrival=poisson have it"),
    (["arrival=poisson", "arival.rate=3"], "arival.rate: no such key; did you mean arrival.rate?"),
    (["+policy.max_batch=8"], "Key 'max_batch' not in 'S3Config'; did you mean policy.max_batch_size?"),
    (["kv_capacity_tokens=3000"], "kv_capacity_tokens: this config does not set it; add it with "
                                  "+kv_capacity_tokens=3000"),
    (["model=llama-3.1-8b", "gpu.count=3"], "valid: 1, 2, 4, 8, 16, 32"),
    (["policy=vllm", "policy.max_batch_size=null"], "or auto (vLLM V1's default for the GPU), got None"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    p = s3sim(*SMALL, *args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "summary.csv").exists()


def test_malformed_trace_row_names_the_line(tmp_path, cfg):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0.0,10,5\n1.5,12,oops\n")
    with pytest.raises(ConfigError, match=r"line 3.*GeneratedTokens"):
        build(cfg("workload=trace", f"workload.path={trace}", "arrival=trace", "max_seq_len=64"))


def test_trace_replay_uses_its_timestamps(tmp_path, cfg):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0.0,10,5\n2.0,12,7\n4.0,8,3\n")
    c = cfg("workload=trace", f"workload.path={trace}", "workload.time_scale=0.5", "arrival=trace",
            "max_seq_len=64", "num_requests=null")
    row = run_config(c, tmp_path / "run")
    rec = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert rec.arrival.tolist() == [0.0, 1.0, 2.0]
    assert row["num_requests"] == 3


def test_trace_arrivals_need_a_trace_workload(cfg):
    with pytest.raises(ConfigError, match="arrival.process=trace needs"):
        build(cfg("arrival=trace", *SMALL))


def test_same_config_same_numbers(cfg):
    c = cfg("arrival=gamma", "arrival.rate=30", *SMALL)
    a, b = run_config(c), run_config(c)
    for key in ("request_throughput", "ttft_p99", "itl_p50", "preemptions", "mispredictions"):
        assert a[key] == b[key]


def test_a_router_with_one_replica_is_said_to_route_nothing():
    """cluster.router is read only with several replicas: a sweep over it at one replica would run one experiment
    at every point, so the run says so (and stays silent at the default router or with replicas)."""
    from s3sim.config import unread_notes

    one = unread_notes({"cluster": {"replicas": 1, "router": "least_kv"}})
    assert one == ["note: cluster.router=least_kv routes nothing with one replica (cluster.replicas=1): the run is "
                   "the single engine's, as with any router"]
    assert unread_notes({"cluster": {"replicas": 1, "router": "round_robin"}}) == []
    assert unread_notes({"cluster": {"replicas": 4, "router": "least_kv"}}) == []


def test_predictor_settings_a_policy_does_not_read_are_said_to_change_nothing(tmp_path):
    """policy=orca reads no prediction: predictor.accuracy on its command line (a sweep over it) changes nothing,
    and the run says so; a policy that reads one, or a command line without predictor settings, stays silent."""
    from s3sim.config import unread_notes

    said = unread_notes({}, {"policy": "orca", "predictor": "none"}, ["policy=orca", "predictor.accuracy=0.5"])
    assert said == ["note: predictor.accuracy=0.5: policy=orca reads no length prediction, so the run is the same "
                    "whatever the predictor (the summary's predictor column says none)"]
    assert unread_notes({}, {"policy": "s3", "predictor": "synthetic"}, ["predictor.accuracy=0.5"]) == []
    assert unread_notes({}, {"policy": "orca", "predictor": "none"}, ["policy=orca"]) == []
    # replicas behind the predicted router (or one with its own policy) may read the predictor: no note
    for cluster in ({"replicas": 4, "router": "predicted"}, {"replicas": 2, "overrides": {1: {"policy": {}}}}):
        assert unread_notes({"cluster": cluster}, {"policy": "orca", "predictor": "none"},
                            ["predictor.accuracy=0.5"]) == []
    p = s3sim(*SMALL, "policy=orca", "predictor=oracle", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert p.returncode == 0 and "note: predictor=oracle: policy=orca reads no length prediction" in p.stdout
