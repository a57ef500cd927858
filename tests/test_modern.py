"""The modern-engine comparison replays a run under every policy with the same budget, batch cap and KV
memory; its vllm row is the very replay s3sim-validate checks against the real run."""
import pandas as pd
from test_validate import R4090, pytestmark, trim  # noqa: F401  (skips without the shared runs)

from s3sim.experiments.modern import compare, main


def test_every_policy_replays_the_run_and_vllm_is_the_validated_replay(tmp_path, capsys):
    run = trim(R4090, tmp_path / "rtx4090-llama-3.1-8b")
    table = compare(run)
    assert list(table.policy) == ["vllm", "s3 oracle", "s3 80% adjacent", "s3 50% under", "orca", "paged (2023)"]
    assert (table.request_throughput > 0).all() and table.set_index("policy").throughput_vs_vllm["vllm"] == 1.0
    from s3sim.validation.cli import main as validate
    from s3sim.validation.metrics import metric_name
    assert validate([str(run), "--out", str(tmp_path / "v")]) == 0
    v = pd.read_csv(tmp_path / "v" / "validation.csv").set_index("metric").simulated
    row = table.set_index("policy").loc["vllm"]
    for m in ("ttft_mean", "tpot_p50", "e2e_latency_p99", "request_throughput"):
        assert row[metric_name(m)] == v[metric_name(m)]  # both in ms, as both names say (ttft_mean_ms)
    assert "ttft_mean" not in table and "tpot_p50_ms" in table  # ms never under a name that means seconds
    assert table.set_index("policy").loc["s3 oracle", "mispredictions"] == 0
    assert main(["--runs", "rtx4090-llama-3.1-8b", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "rtx4090-llama-3.1-8b.csv").is_file()
    assert main(["--runs", "nowhere", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "modern: error:" in capsys.readouterr().err
