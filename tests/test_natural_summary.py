"""`make natural`'s summary table: a comparison with no orca run has no "x orca" ratio (it printed "nanx")."""
import types

import pandas as pd

from s3exec.lab.natural import summary_markdown


def _row(engine, policy, rate):
    return {"engine": engine, "policy": policy, "request_throughput": rate, "mean_batch_size": 4.0, "duration": 10.0,
            "iterations": 100, "preemptions": 1, "preemptions_overflow": 0, "preemptions_memory": 1,
            "recomputed_tokens": 12, "kv_reserved_frac": 0.9, "kv_used_frac": 0.8, "same_length_as_table": 1.0}


def _table(policies):
    df = pd.DataFrame([_row(e, p, r * (1.1 if e == "sim" else 1.0)) for p, r in policies for e in ("exec", "sim")])
    return summary_markdown(df, types.SimpleNamespace(requests=8, cap=64, threads=1), 1024)


def test_without_an_orca_run_the_ratio_is_a_dash_not_nan():
    text = _table([("vllm", 0.5), ("vllm-sjf", 0.6)])
    assert "nan" not in text
    assert text.count("| — / — |") == 2


def test_with_an_orca_run_each_engine_is_divided_by_its_own_orca():
    lines = _table([("orca", 0.4), ("s3", 0.6)]).splitlines()
    s3 = next(line for line in lines if line.startswith("| s3 |"))
    assert "| 1.50x / 1.50x |" in s3
