"""The GPU check in its CPU smoke form: the very script a lent GPU runs, so it cannot rot between GPUs; and
its verdict, judged on fabricated measurements, since a GPU run's verdict is the one that must be believed."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from s3exec.lab import gpu_check
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
    assert summary["errors"] == {} and set(summary["steps"]) == {"greedy", "bandwidth", "hf_memory", "profile",
                                                                "engines", "fidelity"}
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["bandwidth.csv", "fidelity.csv", "profile/meta.yaml", "profile/tp1/attention.csv",
                     "profile/tp1/dense.csv", "profile/tp1/per_sequence.csv", "summary.json", "summary.md"]
    assert len(files) <= 8  # what a device run brings back
    assert (out / "summary.md").read_text().splitlines()[-1].endswith(gpu_check.SMOKE_VERDICT)
    assert summary["verdict"] == "smoke: parts ran; targets not judged" and summary["exit_code"] == 0


def test_the_smoke_check_shows_every_target_and_judges_none(smoke):
    out = smoke[1]
    rows = json.loads((out / "summary.json").read_text())["targets"]
    assert [r["target"] for r in rows] == [t.name for t in gpu_check.TARGETS]
    assert all(r["pass"] is None for r in rows)
    shown = {r["target"]: r for r in rows}
    assert shown["greedy_identical"]["value"] == 1.0
    assert shown["cuda_graph_speedup"]["value"] > 0  # the graph path ran (with the rerun backend)
    md = (out / "summary.md").read_text()
    assert all(f"| {t.name} |" in md and md.count("not judged") >= len(rows) for t in gpu_check.TARGETS)


def test_greedy_tokens_equal_generate_for_every_policy_and_kernel(smoke):
    rows = json.loads((smoke[1] / "summary.json").read_text())["greedy"]
    assert {(r["policy"], r["attention"]) for r in rows} == {(p, k) for p in gpu_check.greedy_policies()
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
    hf = s["hf_memory"]  # generate ran; on the CPU there is no allocator to read, and no GPU preset
    plan = gpu_check.PLANS["smoke"]
    assert (hf["rows"], hf["prompt"], hf["new_tokens"]) == (plan["hf_rows"], plan["hf_prompt"], plan["hf_new"])
    assert hf["model_peak_bytes"] > 0 and hf["seconds"] > 0
    assert hf["margin"] is None and hf["peak_bytes"] is None and hf["copy_efficiency"] is None


def test_without_a_gpu_and_without_smoke_it_says_so_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "s3exec.lab.gpu_check", "--out", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == ("s3exec.lab.gpu_check: error: no CUDA device: run on a GPU, or pass --smoke for the "
                                "CPU run with tiny shapes")


def test_missing_packages_name_the_wheels(monkeypatch):
    monkeypatch.setitem(gpu_check.NEEDS, "no_such_module_s3", "no-such-package")
    with pytest.raises(gpu_check.ConfigError, match="missing Python packages no-such-package: install the project"):
        gpu_check.preflight()
    monkeypatch.setitem(gpu_check.PURE, "no_such_module_s3", "no-such-package")
    with pytest.raises(gpu_check.ConfigError, match=r"make gpu-wheels` downloads \(no-such-package; README"):
        gpu_check.preflight()


@pytest.mark.parametrize("hidden", ["sortedcontainers", "pandas", "psutil"])
def test_a_package_the_image_lacks_is_named_before_anything_imports_it(tmp_path, hidden):
    """On a lent GPU (minutes, rarely) a missing package must be one line at once: sortedcontainers and pandas were
    an import traceback before the check could look, psutil a failure of every part in turn (exit 1)."""
    code = (f"import sys; sys.modules[{hidden!r}] = None\n"
            "from s3exec.lab import gpu_check\n"
            f"sys.exit(gpu_check.main(['--smoke', '--out', {str(tmp_path / 'out')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and f"missing Python packages {hidden}" in r.stderr
    assert not (tmp_path / "out").exists()


def test_an_abbreviated_option_is_refused_not_read_as_the_option_it_begins():
    r = subprocess.run([sys.executable, "-m", "s3exec.lab.gpu_check", "--smok"], capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments: --smok" in r.stderr


# ---- the verdict, on fabricated measurements ------------------------------------------------------------
TARGET = {t.name: t for t in gpu_check.TARGETS}


def inside(name: str, margin: float = 0.0) -> float:
    """A value `margin` (relative) on the passing side of a target's threshold (0: on the threshold)."""
    t = TARGET[name]
    return t.threshold * (1 + margin if t.op == ">=" else 1 - margin)


def measured(margin: float = 0.1) -> dict:
    """A GPU run's summary in which every part ran and every target is met by `margin` where it can be."""
    greedy = [{"model": m, "policy": p, "attention": k, "cuda_graphs": k == "flex", "requests": 8, "identical": 8,
               "graph_replays": 40 if k == "flex" else 0}
              for m in ("tiny-llama", "smollm2-135m") for p in gpu_check.greedy_policies() for k in ("sdpa", "flex")]
    return {"mode": "gpu", "errors": {}, "greedy": greedy,
            "bandwidth": {"model": "llama-2-7b", "attention": "flex", "cuda_graphs": True, "copy_gb_s": 3000.0,
                          "batches": [1, 64, 128], "batch1_vs_floor": inside("batch1_vs_floor", margin),
                          "min_utilisation_batch64_up": inside("utilisation_batch64_up", margin),
                          "graph_speedup_batch1": inside("cuda_graph_speedup", margin), "graph_detail": "eager/graph"},
            "engines": {"model": "llama-2-7b", "requests": 64, "identical": "64/64",
                        "ratio": inside("engine_speedup", margin)},
            "fidelity": {"model": "llama-2-7b", "cells_within_5pct": "20/20 cells within 5%",
                         "worst_abs_error": inside("fidelity_worst_error", margin)}}


def miss(summary: dict, name: str) -> dict:
    """The same summary with one target missed, as the issue's GPU run missed them."""
    s = copy.deepcopy(summary)
    if name == "greedy_identical":
        s["greedy"][3]["identical"] = 7
    elif name == "cuda_graphs_replayed":
        s["greedy"][1]["graph_replays"] = 0
    elif name == "batch1_vs_floor":
        s["bandwidth"]["batch1_vs_floor"] = 95.0  # what the issue's run printed
    elif name == "utilisation_batch64_up":
        s["bandwidth"]["min_utilisation_batch64_up"] = inside(name, -0.2)
    elif name == "cuda_graph_speedup":
        s["bandwidth"]["graph_speedup_batch1"] = inside(name, -0.2)
    elif name == "engine_speedup":
        s["engines"]["ratio"] = inside(name, -0.2)
    elif name == "fidelity_worst_error":
        s["fidelity"].update(worst_abs_error=inside(name, -1.0), cells_within_5pct="8/20 cells within 5%")
    return s


def test_every_target_met_passes_with_exit_code_0():
    for margin in (0.1, 0.0):  # a value on the threshold meets it
        rows = gpu_check.judge(measured(margin))
        assert [r["target"] for r in rows] == list(TARGET) and all(r["pass"] is True for r in rows)
        code, line = gpu_check.verdict(rows, {}, smoke=False)
        assert code == 0 and line.startswith("PASS") and "missed" not in line


def test_the_thresholds_are_one_per_target_and_named():
    assert len(TARGET) == len(gpu_check.TARGETS) >= 7
    assert all(t.op in (">=", "<=") and t.threshold > 0 and t.unit in ("x", "%") for t in gpu_check.TARGETS)
    assert gpu_check.FIDELITY_TOLERANCE == TARGET["fidelity_worst_error"].threshold


@pytest.mark.parametrize("name", [t.name for t in gpu_check.TARGETS])
def test_one_missed_target_fails_the_run_and_is_named(name):
    rows = gpu_check.judge(miss(measured(), name))
    failed = [r["target"] for r in rows if not r["pass"]]
    assert failed == [name]
    code, line = gpu_check.verdict(rows, {}, smoke=False)
    assert code == 1 and line.startswith("FAIL") and name in line and "every part ran" in line
    # a smoke run measures it too, but judges nothing
    smoke_rows = gpu_check.judge(miss(measured(), name), smoke=True)
    assert all(r["pass"] is None for r in smoke_rows)
    assert [r["value"] for r in smoke_rows] == [r["value"] for r in rows]
    assert gpu_check.verdict(smoke_rows, {}, smoke=True) == (0, gpu_check.SMOKE_VERDICT)


@pytest.mark.parametrize("part", gpu_check.PARTS)
def test_a_failed_part_leaves_its_targets_unmeasured_and_missed(part):
    s = measured()
    s["errors"][part] = "RuntimeError: out of memory"
    s.pop(part, None)
    rows = gpu_check.judge(s)
    lost = [r for r in rows if r["value"] is None]
    # no number of its own judged: profile (the fidelity part, which reads it, then fails) and hf_memory (reported)
    assert lost or part in ("profile", "hf_memory")
    assert all(r["pass"] is False and r["shown"] == "not measured" for r in lost)
    assert all(r["pass"] for r in rows if r["value"] is not None)
    code, line = gpu_check.verdict(rows, s["errors"], smoke=False)
    assert code == 1 and f"parts FAILED: {part}" in line
    code, line = gpu_check.verdict(gpu_check.judge(s, smoke=True), s["errors"], smoke=True)
    assert code == 1 and part in line  # a smoke run fails on a part that did not run


def test_a_measurement_that_is_not_a_number_is_not_a_pass():
    s = measured()
    s["bandwidth"]["batch1_vs_floor"] = math.nan
    s["engines"]["ratio"] = None
    rows = {r["target"]: r for r in gpu_check.judge(s)}
    assert rows["batch1_vs_floor"]["pass"] is False and rows["engine_speedup"]["pass"] is False
    assert gpu_check.verdict(list(rows.values()), {}, smoke=False)[0] == 1


def test_the_issue_run_is_judged_a_failure():
    """Batch 1 at 95x the floor and 12 of 20 fidelity cells outside 5 %: exit 1, both named."""
    s = miss(miss(measured(), "batch1_vs_floor"), "fidelity_worst_error")
    rows = gpu_check.judge(s)
    code, line = gpu_check.verdict(rows, {}, smoke=False)
    assert code == 1 and "batch1_vs_floor" in line and "fidelity_worst_error" in line
    table = "\n".join(gpu_check.target_table(rows))
    assert table.count("FAIL") == 2 and "95.00x" in table


def test_a_run_removes_an_earlier_runs_outputs_first(tmp_path, monkeypatch):
    """Every output of an earlier run is gone before the parts run (a stale profile would otherwise feed the
    fidelity part); what the check does not write stays."""
    for name in gpu_check.OUTPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("an earlier run\n")
    (tmp_path / ".fidelity.csv.abc123.tmp").write_text("half a file")
    (tmp_path / "notes.txt").write_text("mine")
    seen = {}

    def greedy(self):
        seen["left"] = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
        raise RuntimeError("no device today")

    monkeypatch.setattr(gpu_check.Check, "greedy", greedy)
    for part in ("bandwidth", "hf_memory", "profile", "engines"):
        monkeypatch.setattr(gpu_check.Check, part, greedy)
    code = gpu_check.Check(tmp_path, smoke=True, log=lambda *_: None).run()  # fidelity runs: no profile to read
    assert seen["left"] == ["notes.txt"]
    assert code == 1
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["notes.txt", "summary.json", "summary.md"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["errors"]) == set(gpu_check.PARTS)
    assert summary["errors"]["fidelity"].startswith("ConfigError: no operator profile")
    assert all(r["value"] is None for r in summary["targets"])


def test_the_files_it_writes_are_the_schemas(smoke):
    """bandwidth.csv and fidelity.csv hold exactly the columns `s3sim-schema` defines for them, and the schema's
    fidelity metrics are the check's."""
    from s3sim.metrics.schema import FILES, SCHEMAS, family
    assert family("fid") == gpu_check.FIDELITY_METRICS
    for kind in ("bandwidth", "fidelity"):
        cols = list(pd.read_csv(smoke[1] / FILES[kind]).columns)
        names = [n for c in SCHEMAS[kind] for n in c.names()]
        assert len(cols) == len(set(cols)) and set(cols) == set(names), (kind, set(cols) ^ set(names))
