"""The output schema against the files real runs write: every column of every kind is in it exactly once,
with a unit and a definition; no entry describes a column no file has; axis labels carry the units;
`s3sim-schema` prints it; and the README's Outputs section is its output, so the two cannot disagree."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.cli import CONF_DIR
from s3sim.metrics import schema
from s3sim.metrics.schema import FLAG, ID, KINDS, SCHEMAS, TEXT, Column, axis_label, lookup, unit
from s3sim.runner import CI_SKIP, run_dir

ROOT = Path(__file__).parents[1]
CMD = [sys.executable, "-m", "s3sim.metrics.schema"]
SMALL = ("num_requests=40", "max_seq_len=256")


def compose_cfg(name, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose(name, overrides=list(overrides)), resolve=True)


def validation_files(tmp: Path) -> list[Path]:
    """A fresh s3sim-validate run on a trimmed real run when the shared runs are there, else the committed ones."""
    import test_validate as tv
    if (tv.R4090 / "run").is_dir():
        from s3sim.validation.cli import main
        out = tmp / "validation"
        assert main([str(tv.trim(tv.R4090, tmp / "r4090")), "--out", str(out), "--profile", "none"]) == 0
        return [out]
    return sorted(p.parent for p in (ROOT / "results" / "validation").glob("*/validation.csv"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """kind -> the tables real runs wrote: a simulator run of every policy (with iterations), S3 with
    max_wait, a run with repeats, a two-replica vllm by re-predicted remaining length with vLLM's default limits, two-replica clusters (policies with columns of their own), an executor
    run, and a validation."""
    tmp = tmp_path_factory.mktemp("runs")
    policies = ("s3", "vllm", "hf", "ft", "orca", "paged", "paged_spf")
    runs = [compose_cfg("config", *SMALL, f"policy={p}") for p in policies]
    runs += [compose_cfg("config", *SMALL, "policy=s3", "policy.max_wait=0.01", "arrival=poisson", "arrival.rate=20"),
             compose_cfg("config", *SMALL, "repeats=2"),
             compose_cfg("config", *SMALL, "cluster.replicas=2", "policy=vllm", "policy.order=srpt",
                         "predictor=synthetic", "predictor.repredict=measured", "policy.max_batch_size=auto",
                         "policy.max_num_batched_tokens=auto"),
             compose_cfg("config", *SMALL, "cluster.replicas=2", "policy=s3", "policy.max_wait=0.01", "arrival=poisson",
                         "arrival.rate=20"),
             compose_cfg("config", *SMALL, "cluster.replicas=2", "policy=hf")]
    dirs = []
    for i, cfg in enumerate(runs):
        run_dir(cfg, tmp / f"sim{i}", write_iterations=True)
        dirs.append(tmp / f"sim{i}")
    from s3exec.runner import run_exec
    run_exec(compose_cfg("exec", "num_requests=4", "max_seq_len=16", "executor.kv_memory=1MiB", "executor.threads=1",
                         "executor.progress=false"), tmp / "exec", write_iterations=True)
    dirs.append(tmp / "exec")
    replays = validation_files(tmp)
    out = {"summary": [pd.read_csv(d / "summary.csv") for d in dirs],
           "requests": [pd.read_parquet(d / "requests.parquet") for d in dirs],
           "iterations": [pd.read_csv(d / "iterations.csv") for d in dirs],
           "replicas": [pd.read_csv(d / "replicas.csv") for d in dirs if (d / "replicas.csv").is_file()],
           "validation": [pd.read_csv(d / "validation.csv") for d in replays],
           "timeline": [pd.read_csv(d / "timeline_data.csv") for d in replays],
           "peer": [pd.read_csv(d / "peer.csv") for d in replays if (d / "peer.csv").is_file()],
           "tokens": [pd.read_csv(tmp / "exec" / "tokens.csv")]}
    assert all(out.values()) and "repeats.csv" in {p.name for p in (tmp / "sim8").iterdir()}
    return out


# the GPU check's files: tests/test_gpu_check.py holds them to the schema on its smoke run's
RUN_KINDS = tuple(k for k in KINDS if k not in ("bandwidth", "fidelity"))


def written(tables: list[pd.DataFrame], kind: str) -> tuple[set, set]:
    """(columns, validation rows) the tables hold."""
    cols = {c for t in tables for c in t.columns}
    rows = {m for t in tables for m in t.metric} if kind == "validation" else set()
    return cols, rows


def entries(kind: str, column: str, row: bool = False) -> list[Column]:
    return [c for c in SCHEMAS[kind] if c.row == row and column in c.names()]


@pytest.mark.parametrize("kind", RUN_KINDS)
def test_every_written_column_is_defined_once_with_unit_and_definition(files, kind):
    cols, rows = written(files[kind], kind)
    for name, row in [(c, False) for c in cols] + [(m, True) for m in rows]:
        found = entries(kind, name, row)
        assert len(found) == 1, f"{kind}: {name!r} matches {len(found)} schema entries"
        assert found[0].unit.strip() and found[0].definition.strip()


@pytest.mark.parametrize("kind", RUN_KINDS)
def test_no_entry_describes_a_column_no_file_has(files, kind):
    cols, rows = written(files[kind], kind)
    for c in SCHEMAS[kind]:
        present = [n for n in c.names() if n in (rows if c.row else cols)]
        if c.future or c.only and not present:
            continue  # a change under way adds it, or it is written only where `only` says; files lack it
        if "{metric}" in c.name:  # confidence intervals: those the repeats run gave, none unexplained
            assert present
            continue
        assert present == list(c.names()), f"{kind}: {c.name} names columns no run wrote: " \
                                           f"{sorted(set(c.names()) - set(present))}"


def test_confidence_intervals_are_of_measured_numeric_columns(files):
    cols, _ = written(files["summary"], "summary")
    ci = {c for c in cols if c.endswith("_ci95")}
    assert ci
    for c in ci:
        base = c.removesuffix("_ci95")
        assert base in cols and base not in CI_SKIP and unit(c) == unit(base) not in (TEXT, FLAG, ID)


def test_a_column_marked_future_is_one_no_file_has_yet(files):
    """`future` marks a column a change under way adds: tolerated while absent, and wrong once files have it."""
    for kind in RUN_KINDS:
        cols, rows = written(files[kind], kind)
        for c in SCHEMAS[kind]:
            if c.future:
                assert not set(c.names()) & (rows | cols), f"{kind}: {c.name} is written now; drop its future mark"


def test_overlong_and_steady_columns_have_their_units():
    for name, u in (("dropped_requests", "requests"), ("clipped_prompts", "requests"),
                    ("steady_request_throughput", "req/s"), ("steady_output_throughput", "tok/s"),
                    ("tail_frac", "fraction")):
        assert unit(name, "summary") == u


def test_units_other_than_seconds_are_in_the_name():
    for kind in KINDS:
        for c in SCHEMAS[kind]:
            for name in c.names():
                if c.unit == "ms":
                    assert name.endswith("_ms"), name
                if name.endswith("_ms"):
                    assert c.unit == "ms", name
                if name.endswith("_gb_s"):
                    assert c.unit == "GB/s", name
                elif name.endswith("_s") and not name.endswith("_per_s"):
                    assert c.unit == "s", name


def test_axis_label_carries_the_unit(files):
    cols, _ = written(files["summary"], "summary")
    for c in cols:
        u = unit(c, "summary")
        assert axis_label(c, "summary") == (c if u in (TEXT, FLAG, ID) else f"{c} ({u})")
    assert axis_label("ttft_p50") == "ttft_p50 (s)"
    assert axis_label("request_throughput") == "request_throughput (req/s)"
    assert axis_label("output_throughput") == "output_throughput (tok/s)"
    assert axis_label("ttft_p99_ci95") == "ttft_p99_ci95 (s)"
    assert axis_label("ttft_p50_ms", "validation") == "ttft_p50_ms (ms)"
    assert axis_label("no_such_column") == "no_such_column" and lookup("no_such_column") is None


def run(*args):
    return subprocess.run([*CMD, *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("kind", KINDS)
def test_command_prints_each_kind(kind):
    for args in ([kind], [kind, "--markdown"]):
        p = run(*args)
        assert p.returncode == 0 and not p.stderr
        assert schema.FILES[kind] in p.stdout
        for c in SCHEMAS[kind]:
            if not (kind == "replicas" and c in schema.MEASURED + schema.STEADY):
                assert c.pattern() in p.stdout and c.definition in p.stdout.replace("\\|", "|")
    md = run(kind, "--markdown").stdout
    assert "| column | unit | definition |" in md


@pytest.mark.parametrize("args, message", [
    (["summaries"], "kind must be one of summary, requests, iterations, validation, replicas, timeline, peer, "
                    "tokens, bandwidth, fidelity, got 'summaries'"),
    (["--md"], "unrecognized arguments: --md"),
    (["summary", "requests"], "unrecognized arguments: requests"),
])
def test_command_bad_argument_is_one_line_exit_2(args, message):
    p = run(*args)
    assert p.returncode == 2 and not p.stdout
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("s3sim-schema: error: ") and message in p.stderr


def test_readme_outputs_section_is_the_commands_output():
    text = (ROOT / "README.md").read_text()
    begin, end = "<!-- outputs:begin -->\n", "<!-- outputs:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    section = text.split(begin)[1].split(end)[0]
    p = run("--markdown")
    assert p.returncode == 0 and section == p.stdout
    assert text.count("\n## Outputs\n") == 1
    order = [text.index(s) for s in ("\n## Outputs\n", begin, end, "\n## How the code is laid out")]
    assert order == sorted(order)


def test_update_readme_refuses_what_it_cannot_update_in_one_line(tmp_path):
    from s3sim.metrics.schema import main

    cases = {"binary.md": (b"\x81\xff\x00junk", "cannot be read as text"),
             "swapped.md": (b"a\n<!-- outputs:end -->\nx\n<!-- outputs:begin -->\nold\n", "and, after it, one"),
             "none.md": (None, "is not a file")}
    for name, (content, message) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        p = subprocess.run([sys.executable, "-c", "from s3sim.metrics.schema import main; import sys; "
                            "sys.exit(main())", "--update-readme", str(tmp_path / name)],
                           capture_output=True, text=True)
        assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
        if content is not None:
            assert (tmp_path / name).read_bytes() == content
    assert main(["summary", "--update-readme", str(tmp_path / "swapped.md")]) == 2
