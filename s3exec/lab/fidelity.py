"""`python -m s3exec.lab.fidelity`: how far the simulator is from the executor it models.

For each model, arrival and policy the same workload, KV capacity (in tokens) and seed run once through
the executor on this machine and once through the simulator with `latency=profiled` (a profile of this
machine, measured first if missing; `--fresh-profile` measures one into `<out>/profiles` just before each
group of cells (offline, each Poisson rate), since a shared CPU drifts over minutes; each row names its
profile). The table gives the simulator's relative error per metric; with
`--spread` the executor runs twice and its own run-to-run difference is shown beside the error, since
no simulator can be closer than the hardware is to itself. Poisson rates are fractions of the mean
offline request throughput the executor reached. Writes `results/fidelity/`: `fidelity.csv`,
`requests.csv` (per request: measured and simulated finish times) and one scatter PNG per model, and
prints how many cells meet the targets (`target_summary`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3exec.config import exec_policy
from s3sim.commandline import Parser, out_path
from s3sim.config import CONF_DIR
from s3sim.core.errors import ConfigError
from s3sim.core.policies import COMPARED

METRICS = ("request_throughput", "output_throughput", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99",
           "e2e_latency_p50", "e2e_latency_p99")
# model -> (requests, max_seq_len, KV capacity in tokens): small enough for a 2-core CPU in minutes, tight
# enough that the policies build different batches
SIZES = {"tiny-llama": (32, 128, 1200), "smollm2": (12, 64, 600)}


def exec_config(model: str, policy: str, n: int, msl: int, cap_tokens: int, kv_bytes_per_token: int,
                rate: float | None = None, seed: int = 0) -> dict:
    """An `s3exec` config (conf/exec.yaml) whose KV pool holds exactly `cap_tokens` tokens."""
    over = [*exec_policy(policy), f"num_requests={n}", f"max_seq_len={msl}", f"seed={seed}",
            f"executor.kv_memory={cap_tokens * kv_bytes_per_token}", "executor.progress=false",
            "executor.write_tokens=false", "executor.threads=1"]
    over += ["arrival=offline"] if rate is None else ["arrival=poisson", f"arrival.rate={rate}"]
    if model == "smollm2":  # its real weights, and the simulator prices (and checks the profile against) its shape
        over += ["executor.model=smollm2", "model=smollm2-135m"]
    elif model != "tiny-llama":
        over.append(f"executor.model={model}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("exec", overrides=over), resolve=True)


def sim_config(exec_cfg: dict, cap_tokens: int, profile: str | Path) -> dict:
    """The simulator's config of the same run: shared groups copied, the executor's pool, the profile."""
    cfg = {k: exec_cfg[k] for k in ("seed", "max_seq_len", "num_requests", "model", "workload", "arrival",
                                    "policy", "predictor", "slo")}
    cfg.update(gpu={"name": "a100-80gb-pcie"}, latency={"name": "profiled", "path": str(profile), "overhead_s": None},
               kv_capacity_tokens=int(cap_tokens), max_jump=None)
    return cfg


def compare(exec_cfg: dict, cap_tokens: int, profile, loaded=None, repeats: int = 1):
    """Run one config through the executor (`repeats` times) and the simulator; returns (executor rows,
    simulator row, per-request finish times of the first executor run and of the simulator)."""
    from s3exec.runner import run_exec
    from s3sim.core.request import make_requests
    from s3sim.simulator.engine import simulate
    from s3sim.metrics.summary import request_records, summarize

    runs = [run_exec(exec_cfg, loaded=loaded) for _ in range(repeats)]
    setup = replay_setup(sim_config(exec_cfg, cap_tokens, profile))
    result = simulate(make_requests(setup.prompt_len, setup.output_len, setup.arrivals), setup.scheduler,
                      setup.latency)
    sim_req = request_records(result.requests)
    sim_row = summarize(result, setup.slo, sim_req)
    ex_req = request_records(runs[0][1].requests)
    finish = pd.DataFrame({"id": ex_req.id, "arrival": ex_req.arrival, "exec_finished": ex_req.finished,
                           "sim_finished": sim_req.set_index("id").finished.reindex(ex_req.id).to_numpy()})
    return [r for r, _ in runs], sim_row, finish


def replay_setup(sim_cfg: dict):
    """The simulator's setup of a replay; one that cuts outputs the executor served whole is another run."""
    from s3sim.cluster.build import build

    setup = build(sim_cfg)
    if setup.context_clipped:
        raise ConfigError(f"the simulator's model {setup.model.name} ({setup.model.max_context}-token context) cut "
                          f"{setup.context_clipped} outputs the executor served whole; set the model group to the "
                          f"executor's model")
    return setup


def simulate_config(sim_cfg: dict) -> dict:
    """The simulator's summary row of a `sim_config`."""
    from s3sim.core.request import make_requests
    from s3sim.metrics.summary import summarize
    from s3sim.simulator.engine import simulate

    setup = replay_setup(sim_cfg)
    result = simulate(make_requests(setup.prompt_len, setup.output_len, setup.arrivals), setup.scheduler,
                      setup.latency)
    return summarize(result, setup.slo)


def resimulate(table: pd.DataFrame, profiles: Path) -> pd.DataFrame:
    """A fidelity table with its simulator columns (and the errors derived from them) computed again from its
    rows: same workload, rate, policy, pool and profile. The executor's columns are measurements and stay."""
    new = table.copy()
    for i, r in table.iterrows():
        rate = None if pd.isna(r["rate"]) else float(r["rate"])
        cfg = exec_config(r["model"], r["policy"], int(r["requests"]), int(r["max_seq_len"]),
                          int(r["kv_capacity_tokens"]), 1, rate)
        name = r["profile"] if "profile" in r and isinstance(r["profile"], str) else f"{r['model']}-cpu.csv"
        sim = simulate_config(sim_config(cfg, int(r["kv_capacity_tokens"]), profiles / name))
        new.loc[i, "sim_mean_batch"] = sim["mean_batch_size"]
        for m in METRICS:
            new.loc[i, f"sim_{m}"] = sim[m]
            new.loc[i, f"err_{m}"] = rel(sim[m], r[f"exec_{m}"])
    return new


# A committed table is re-simulated on whatever CPU runs the check: numpy's SIMD paths and the CSV round trip
# move the last bits of a float (7.5e-16 relative seen on another CPU), so cells agree within this, not bit for bit.
SIMULATOR_RTOL = 1e-9


def compare_simulator(table: pd.DataFrame, again: pd.DataFrame) -> tuple[int, int, float]:
    """(simulator cells equal within SIMULATOR_RTOL, cells, largest relative difference) between a table and
    `resimulate`'s; NaN equals NaN."""
    cols = ["sim_mean_batch"] + [f"sim_{m}" for m in METRICS]
    a, b = table[cols].to_numpy(float), again[cols].to_numpy(float)
    worst = float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1e-300))) if a.size else 0.0
    same = np.isclose(a, b, rtol=SIMULATOR_RTOL, atol=0.0, equal_nan=True)
    return int(same.sum()), a.size, worst


def rel(a, b) -> float:
    return float((a - b) / b) if b else float("nan")


def ensure_profile(model: str, folder: Path, log=print, fresh: bool = False, name: str | None = None,
                   threads: int = 1) -> Path:
    """`<folder>/<name>.csv` (default `<model>-cpu`), measured now (on `threads` CPU threads) if missing or
    `fresh`."""
    path = folder / f"{name or model + '-cpu'}.csv"
    if fresh or not path.is_file():
        from s3exec.lab.profile import profile, write_profile

        log(f"profiling {model} -> {path}")
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            over = [f"executor.threads={threads}"] + ([] if model == "tiny-llama" else [f"executor.model={model}"])
            cfg = OmegaConf.to_container(compose("exec", overrides=over), resolve=True)
        write_profile(*profile(cfg, log=lambda *_: None), folder, path.stem)
    return path


def run_model(model: str, policies, fractions, profile, spread: bool, log=print):
    """Every cell of one model. `profile` is a profile's path, or a function of the group's label ("offline",
    "poisson 0.5x", ...) that measures one just before the group runs."""
    import torch

    from s3exec.models import load_model

    torch.set_num_threads(1)
    n, msl, cap = SIZES.get(model, SIZES["smollm2"])
    loaded = load_model(model)
    rows, finishes = [], []

    def one(policy, rate, label, prof):
        cfg = exec_config(model, policy, n, msl, cap, loaded.kv_bytes_per_token, rate)
        t0 = time.perf_counter()
        ex, sim, fin = compare(cfg, cap, prof, loaded, repeats=2 if spread else 1)
        row = {"model": model, "arrival": label, "rate": rate, "policy": policy, "requests": n, "max_seq_len": msl,
               "kv_capacity_tokens": cap, "profile": Path(prof).name, "exec_mean_batch": ex[0]["mean_batch_size"],
               "sim_mean_batch": sim["mean_batch_size"]}
        for m in METRICS:
            row[f"exec_{m}"], row[f"sim_{m}"] = ex[0][m], sim[m]
            row[f"err_{m}"] = rel(sim[m], ex[0][m])
            if spread:
                row[f"spread_{m}"] = rel(ex[1][m], ex[0][m])
        rows.append(row)
        finishes.append(fin.assign(model=model, arrival=label, policy=policy))
        log(f"  {model} {label} {policy}: throughput err {row['err_request_throughput']:+.1%} "
            f"({time.perf_counter() - t0:.1f} s)")

    def profile_for(label):
        return profile(label) if callable(profile) else profile

    prof = profile_for("offline")
    for p in policies:
        one(p, None, "offline", prof)
    base = float(np.mean([r["exec_request_throughput"] for r in rows]))
    for f in fractions:
        rate = float(f"{f * base:.3g}")
        label = f"poisson {f:g}x"
        prof = profile_for(label)
        for p in policies:
            one(p, rate, label, prof)
    return rows, finishes


def scatter(finish: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrivals = list(dict.fromkeys(finish.arrival))
    fig, axes = plt.subplots(1, len(arrivals), figsize=(4.2 * len(arrivals), 4), squeeze=False)
    for ax, a in zip(axes[0], arrivals):
        sub = finish[finish.arrival == a]
        for p, g in sub.groupby("policy", sort=False):
            ax.scatter(g.exec_finished, g.sim_finished, s=10, label=p)
        top = float(max(sub.exec_finished.max(), sub.sim_finished.max()))
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set(title=f"{finish.model.iloc[0]}, {a}", xlabel="measured finish (s)", ylabel="simulated finish (s)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_text(df: pd.DataFrame) -> str:
    """Relative error (simulator vs executor) per metric; with spread, the executor's own beside it."""
    short = {"request_throughput": "req/s", "output_throughput": "tok/s", "ttft_p50": "ttft50", "ttft_p99": "ttft99",
             "tpot_p50": "tpot50", "tpot_p99": "tpot99", "e2e_latency_p50": "e2e50", "e2e_latency_p99": "e2e99"}
    spread = any(c.startswith("spread_") for c in df.columns)
    head = f"{'model':10s} {'arrival':13s} {'rate':>6s} {'policy':6s} " + " ".join(f"{v:>13s}" for v in short.values())
    lines = [head + ("   (error, executor spread)" if spread else "   (error)")]
    for _, r in df.iterrows():
        cells = [f"{r[f'err_{m}']:+.1%}" + (f" ({r[f'spread_{m}']:+.0%})" if spread else "") for m in short]
        rate = "-" if pd.isna(r["rate"]) else f"{r['rate']:.3g}"
        lines.append(f"{r['model']:10s} {r['arrival']:13s} {rate:>6s} {r['policy']:6s} "
                     + " ".join(f"{c:>13s}" for c in cells))
    return "\n".join(lines)


TARGETS = {"throughput": (("request_throughput", "output_throughput"), 0.05),
           "p50": (("ttft_p50", "tpot_p50", "e2e_latency_p50"), 0.10),
           "p99": (("ttft_p99", "tpot_p99", "e2e_latency_p99"), 0.15)}


def target_summary(df: pd.DataFrame) -> str:
    """How many cells meet the targets (throughput within 5 %, p50 latencies within 10 %, p99 within 15 %),
    and each miss with the executor's own spread where measured."""
    lines, misses = [], []
    for name, (metrics, bound) in TARGETS.items():
        cells = [(r, m) for _, r in df.iterrows() for m in metrics]
        bad = [(r, m) for r, m in cells if not abs(r[f"err_{m}"]) <= bound]
        lines.append(f"{name} within {bound:.0%}: {len(cells) - len(bad)}/{len(cells)}")
        for r, m in bad:
            spread = f" (executor spread {r[f'spread_{m}']:+.0%})" if f"spread_{m}" in r else ""
            misses.append(f"  {r['model']} {r['arrival']} {r['policy']} {m}: {r[f'err_{m}']:+.1%}{spread}")
    return "targets: " + "; ".join(lines) + ("\nmisses:\n" + "\n".join(misses) if misses else "")


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny-llama,smollm2")
    ap.add_argument("--policies", default=",".join(COMPARED))
    ap.add_argument("--rates", default="0.5,1.0", help="Poisson rates as fractions of the offline throughput")
    ap.add_argument("--spread", action="store_true", help="run the executor twice and report its own spread")
    ap.add_argument("--profiles", default="results/profiles")
    ap.add_argument("--fresh-profile", action="store_true",
                    help="profile each model again before each group of cells, into <out>/profiles (a shared CPU "
                         "drifts over minutes)")
    ap.add_argument("--out", type=out_path, default="results/fidelity")
    ap.add_argument("--check-simulator", action="store_true",
                    help="only simulate every row of <out>/fidelity.csv again (with <out>/profiles) and check that "
                         "its simulator columns come out identical")
    ap.add_argument("--resimulate", action="store_true",
                    help="only recompute the simulator and error columns of <out>/fidelity.csv from its rows, in place")
    args = ap.parse_args(argv)
    from s3sim.writers import write_csv

    out = Path(args.out)
    if args.check_simulator or args.resimulate:
        path = out / "fidelity.csv"
        if not path.is_file():
            print(f"fidelity: error: {path} not found (run the experiment first)", file=sys.stderr)
            return 2
        table = pd.read_csv(path)
        again = resimulate(table, out / "profiles")
        same, total, worst = compare_simulator(table, again)
        print(f"simulator cells equal (relative {SIMULATOR_RTOL:g}) to {path}: {same}/{total} "
              f"(largest relative difference {worst:.2g})")
        if args.resimulate:
            write_csv(again, path)
            print(f"rewrote the simulator and error columns of {path}")
            return 0
        return 0 if same == total else 1
    out.mkdir(parents=True, exist_ok=True)
    fractions = [float(x) for x in args.rates.split(",") if x]
    all_rows, all_finish = [], []
    try:
        for model in args.models.split(","):
            if args.fresh_profile:  # one profile per group of cells, measured just before it: this CPU drifts
                for old in (out / "profiles").glob(f"{model}-cpu*"):
                    old.unlink()
                prof = (lambda label, m=model: ensure_profile(m, out / "profiles", fresh=True,
                                                               name=f"{m}-cpu-{label.replace(' ', '-')}"))
            else:
                prof = ensure_profile(model, Path(args.profiles))
            rows, fin = run_model(model, args.policies.split(","), fractions, prof, args.spread)
            all_rows += rows
            finish = pd.concat(fin, ignore_index=True)
            all_finish.append(finish)
            scatter(finish, out / f"finish_{model}.png")
    except ConfigError as e:
        print(f"fidelity: error: {e}", file=sys.stderr)
        return 2
    df = pd.DataFrame(all_rows)
    write_csv(pd.concat(all_finish, ignore_index=True), out / "requests.csv")
    write_csv(df, out / "fidelity.csv")
    print(table_text(df))
    print(target_summary(df))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
