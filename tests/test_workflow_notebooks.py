"""The experiment drivers end to end on tiny inputs, and the notebooks executed on what they wrote, so
that neither the drivers' tables nor the notebooks reading them can drift apart unnoticed."""
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from s3sim.experiments import beyond, paper

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TINY = ["--window", "1", "--least-requests", "40", "--rounds", "0", "--jobs", "1"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    paper.main(["--models", "gpt-j-6b", "--gpu-multiples", "1", "--num-requests", "60", "--timeline-requests", "40",
                "--out", str(root / "paper"), "--runs", str(root / "runs"), *TINY])
    beyond.main(["--quick", "--models", "gpt-j-6b", "--paging-models", "gpt-j-6b", "--num-requests", "40",
                 "--out", str(root / "beyond"), "--runs", str(root / "runs"), *TINY])
    return root


def test_paper_tables_and_figures_with_their_data(results):
    out = results / "paper"
    for name in ("throughput", "frontier", "gpus_needed", "timeline"):
        assert (out / f"{name}.png").stat().st_size > 0
        assert len(pd.read_csv(out / f"{name}_data.csv"))
    table = pd.read_csv(out / "paper_vs_sim.csv")
    assert table.model.tolist() == ["gpt-j-6b"] and table["offline_s3/orca"].iloc[0] > 0
    gpus = pd.read_csv(out / "gpus_needed.csv").set_index("policy")
    assert gpus.gpus["s3"] == 1  # the target is s3's own rate


def test_beyond_writes_every_sweep(results):
    out = results / "beyond"
    for name in ("accuracy", "buckets", "workloads", "burstiness", "hardware", "paging"):
        assert len(pd.read_csv(out / f"{name}.csv"))
    assert (out / "accuracy_gpt-j-6b.png").exists() and (out / "accuracy_gpt-j-6b_data.csv").exists()


@pytest.mark.parametrize("name", ["paper", "beyond"])
def test_notebook_runs_on_small_results(results, name, monkeypatch):
    monkeypatch.setenv("S3SIM_RESULTS", str(results))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "no figure drawn"
