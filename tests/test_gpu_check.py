"""The GPU check in its CPU smoke form: the very script a lent GPU runs, so it cannot rot between GPUs."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from s3exec import gpu_check
from s3sim.hardware.models import get_model
from s3sim.latency.operators import OperatorLatency


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    code = gpu_check.main(["--smoke", "--out", str(out)])
    return code, out


def test_the_smoke_check_runs_every_part_and_writes_a_flat_folder(smoke):
    code, out = smoke
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, summary["errors"]
    assert summary["errors"] == {} and set(summary["steps"]) == {"greedy", "bandwidth", "profile", "engines",
                                                                "fidelity"}
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["bandwidth.csv", "fidelity.csv", "profile/meta.yaml", "profile/tp1/attention.csv",
                     "profile/tp1/dense.csv", "profile/tp1/per_sequence.csv", "summary.json", "summary.md"]
    assert len(files) <= 8  # what a device run brings back
    assert (out / "summary.md").read_text().splitlines()[-1].endswith("every part ran")


def test_greedy_tokens_equal_generate_for_every_policy_and_kernel(smoke):
    rows = json.loads((smoke[1] / "summary.json").read_text())["greedy"]
    assert {(r["policy"], r["attention"]) for r in rows} == {(p, k) for p in gpu_check.GREEDY_POLICIES
                                                             for k in ("sdpa", "flex")}
    assert all(r["identical"] == r["requests"] == 8 for r in rows)
    assert any(r["preemptions"] > 0 for r in rows if r["policy"] == "s3")  # the budget made it preempt


def test_the_parts_measure_what_they_say(smoke):
    out = smoke[1]
    s = json.loads((out / "summary.json").read_text())
    bw = pd.read_csv(out / "bandwidth.csv")
    assert len(bw) == len(gpu_check.PLANS["smoke"]["batches"]) * len(gpu_check.PLANS["smoke"]["contexts"])
    assert (bw.read_gb_s > 0).all() and (bw.vs_floor >= 1).all()  # nothing beats the copy bandwidth's floor
    # the profile is read by the simulator's operator model, as a vLLM profile is
    ops = OperatorLatency.from_profile(out / "profile", get_model("tiny-llama"))
    assert ops.iteration_time(0, 0, 4, 64) > 0
    fid = pd.read_csv(out / "fidelity.csv")
    assert list(fid.policy) == list(gpu_check.FIDELITY_POLICIES)
    assert (fid.exec_request_throughput > 0).all() and (fid.sim_request_throughput > 0).all()
    assert s["engines"]["identical"] == f"{s['engines']['requests']}/{s['engines']['requests']}"


def test_without_a_gpu_and_without_smoke_it_says_so_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "s3exec.gpu_check", "--out", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == ("s3exec.gpu_check: error: no CUDA device: run on a GPU, or pass --smoke for the "
                                "CPU run with tiny shapes")


def test_missing_packages_name_the_wheels(monkeypatch):
    monkeypatch.setitem(gpu_check.NEEDS, "no_such_module_s3", "no-such-package")
    with pytest.raises(gpu_check.ConfigError, match="missing Python packages no-such-package: .*make gpu-wheels"):
        gpu_check.preflight()
