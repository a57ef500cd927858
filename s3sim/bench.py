"""`make bench`: simulated requests per wall-clock second for each policy, and the memory of a 10^6 run.

Each policy simulates 100,000 Alpaca-length requests (GPT-J 6B, A100 80 GB, the default per-operator
datasheet latency) offline, then under Poisson arrivals at 1x and 2x the throughput it served offline; vllm on
the RTX 4090 run's operator profile, and vllm and s3 from the config on per-operator latency at about twice what
that GPU serves (`operators_command`); the 10^6-request run happens in a child process so its peak memory
(ru_maxrss) is its own, and so does the cluster run: 64 replicas behind a router serving 10^6 requests of the
Azure conversation trace's shape (`cluster_scale`), beside one engine on the same load per replica
(`cluster_against_one`).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.commandline import Parser
from s3sim.config import CONF_DIR
from s3sim.cluster.build import build
from s3sim.config import build_scheduler
from s3sim.core.policies import COMPARED
from s3sim.core.request import make_requests
from s3sim.simulator.engine import simulate


def cfg_for(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)


def time_one(overrides) -> tuple[float, int, float, float]:
    """Wall seconds, engine steps, simulated requests per wall second, and simulated requests per
    simulated second (the throughput served) of one run on the default latency model."""
    setup = build(cfg_for(overrides))
    reqs = make_requests(setup.prompt_len, setup.output_len, setup.arrivals)
    t0 = time.perf_counter()
    res = simulate(reqs, setup.scheduler, setup.latency)
    wall = time.perf_counter() - t0
    return wall, res.engine_steps, len(reqs) / wall, len(reqs) / res.end_time


def vllm_operators(n: int, run: str = "../shared/data/vllm_runs/rtx4090-llama-3.1-8b") -> None:
    """The vllm policy with the RTX 4090 run's settings (2,588 blocks, a 2,048-token budget, 256 sequences)
    and its operator profile, on ShareGPT lengths at Poisson 1x and 2x the rate that run sustained (1.63/s)."""
    import numpy as np

    from s3sim.hardware.models import get_model
    from s3sim.latency.operators import OperatorLatency
    from s3sim.workload import arrival_times, load_workload

    latency = OperatorLatency.from_profile(f"{run}/profile", get_model("llama-3.1-8b"))
    wl = load_workload("sharegpt", max_output=1024)
    idx = np.random.default_rng(0).integers(0, len(wl.prompt_len), n)
    prompts, outputs = np.minimum(wl.prompt_len[idx], 4096), wl.output_len[idx]
    print(f"\nvllm on per-operator latency (RTX 4090 profile), {n:,} ShareGPT requests")
    for rate in (1.63, 3.26):
        sched = build_scheduler({"max_seq_len": 1024, "policy": {"name": "vllm", "block_size": 16, "max_batch_size": 256,
                                                                  "max_num_batched_tokens": 2048}}, 2588 * 16, outputs)
        reqs = make_requests(prompts, outputs, arrival_times(n, "poisson", rate=rate, seed=0))
        t0 = time.perf_counter()
        res = simulate(reqs, sched, latency)
        wall = time.perf_counter() - t0
        print(f"vllm    {f'poisson@{rate}/s':>16s} {n:>9,d} {wall:8.2f} {res.engine_steps:8d} {n / wall:10,.0f}", flush=True)


OPERATORS_COMMAND = ["latency=operators", "model=llama-3.1-8b", "gpu=rtx-4090", "workload=sharegpt", "arrival=poisson",
                     "arrival.rate=3"]


def operators_command(n: int) -> None:
    """vllm and s3 as a user sweeps them on per-operator latency: `s3sim policy=P latency=operators
    model=llama-3.1-8b gpu=rtx-4090 workload=sharegpt arrival=poisson arrival.rate=3` (about twice what the
    GPU serves), the simulation alone, as `time_one` times it."""
    print(f"\nvllm and s3 from the config, as a user sweeps them: `s3sim policy=P {' '.join(OPERATORS_COMMAND)} "
          f"num_requests={n}`")
    for p in ("vllm", "s3"):
        wall, steps, rate, served = time_one([f"policy={p}", f"num_requests={n}", *OPERATORS_COMMAND])
        print(f"{p:7s} {'poisson@3/s':>16s} {n:>9,d} {wall:8.2f} {steps:8d} {rate:10,.0f}   (served "
              f"{served:.2f} req/s)", flush=True)


TIMED_CHILD = ("import sys\nfrom s3sim.bench import OPERATORS_COMMAND, time_one\n"
               "for p in ('vllm', 's3'):\n"
               "    wall, steps, rate, _ = time_one([f'policy={p}', f'num_requests={sys.argv[1]}', *OPERATORS_COMMAND])\n"
               "    print(p, rate, steps, flush=True)\n")


def against(rev: str, n: int, rounds: int = 2) -> None:
    """`operators_command` timed on this tree and on git revision `rev`, one after the other, `rounds` times, in
    fresh processes, with the ratio of each pair: how much faster a change made the simulator, measured in one
    run (this machine drifts by 10-30 % between runs). `rev` is checked out in a temporary git worktree beside
    a link to the shared data; its `s3sim.bench` must have `time_one` and `OPERATORS_COMMAND`."""
    import tempfile
    from pathlib import Path

    from s3sim.core.errors import ConfigError
    from s3sim.inputs import SHARED_DATA_DIR

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        made = subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev],
                              capture_output=True, text=True)
        if made.returncode:
            raise ConfigError(f"--against {rev!r}: not a revision git can check out here "
                              f"({(made.stderr.strip().splitlines() or ['no git'])[-1]})")
        try:
            (Path(tmp) / "shared").symlink_to(SHARED_DATA_DIR.parent.resolve())
            print(f"\n{' '.join(OPERATORS_COMMAND)} num_requests={n}, simulated requests/s: this tree against {rev}")
            for i in range(rounds):
                rates = {}
                for label, where in (("this tree", root), (rev, tree)):
                    ran = subprocess.run([sys.executable, "-c", TIMED_CHILD, str(n)], cwd=where, capture_output=True,
                                         text=True)
                    if ran.returncode:
                        raise ConfigError(f"--against {rev!r}: its bench did not run "
                                          f"({(ran.stderr.strip().splitlines() or ['no output'])[-1]})")
                    rates[label] = {p: float(rate) for p, rate, _ in (line.split() for line in ran.stdout.splitlines())}
                print(f"round {i + 1}: " + "; ".join(
                    f"{p} {rates['this tree'][p]:,.0f} vs {rates[rev][p]:,.0f} ({rates['this tree'][p] / rates[rev][p]:.2f}x)"
                    for p in ("vllm", "s3")), flush=True)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], capture_output=True)


def cluster_scale(n: int, replicas: int, per_replica_rate: float, policy: str = "s3",
                  router: str = "least_outstanding") -> float:
    """`replicas` replicas (Llama 3.1 8B on A100 80 GB: the trace's prompts need its long context) behind `router` serving `n` requests of the Azure conversation
    trace's shape: its rows cycled, its arrival times laid end to end and compressed to `per_replica_rate`
    requests per second per replica on average, so its bursts stay bursts. Prints wall time, simulated
    requests per wall second and this process's peak RSS; returns the simulated requests per wall second.
    One replica is the single engine (a cluster of one)."""
    import numpy as np

    from s3sim.simulator.engine import simulate_cluster
    from s3sim.workload import load_workload

    t0 = time.perf_counter()
    setup = build(cfg_for([f"policy={policy}", "model=llama-3.1-8b", "workload=trace", "arrival=offline",
                                   f"num_requests={n}", f"cluster.replicas={replicas}", f"cluster.router={router}"]))
    ts = load_workload("trace").timestamps
    ts = ts - ts[0]
    period = ts[-1] * len(ts) / (len(ts) - 1)  # one trace's span plus one mean gap
    i = np.arange(n)
    arrivals = ts[i % len(ts)] + (i // len(ts)) * period
    arrivals = arrivals * (n / arrivals[-1]) / (replicas * per_replica_rate)
    reqs = make_requests(setup.prompt_len, setup.output_len, arrivals)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = simulate_cluster(reqs, setup.replicas, setup.router)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    counts = np.bincount(res.assignment, minlength=replicas)
    print(f"cluster {replicas} x {policy} ({router}) {n:>9,d} requests  {wall:7.2f} s wall (+{built:.1f} s to build) "
          f"{n / wall:9,.0f} req/s  peak RSS {rss:.2f} GiB; {res.end_time:,.0f} simulated s, requests per replica "
          f"{counts.min():,}-{counts.max():,}")
    return n / wall


def cluster_against_one(n: int, replicas: int, per_replica_rate: float) -> None:
    """The cluster's rate beside the single engine's on the same load per replica (n / replicas requests at
    `per_replica_rate`), the engine measured before and after the cluster (this machine drifts)."""
    one = [cluster_scale(n // replicas, 1, per_replica_rate)]
    many = cluster_scale(n, replicas, per_replica_rate)
    one.append(cluster_scale(n // replicas, 1, per_replica_rate))
    print(f"cluster / single engine at the same load per replica: {many / max(one):.2f} to {many / min(one):.2f}")


def main(argv=None) -> None:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="requests per policy (0 skips the policy table)")
    ap.add_argument("--big", type=int, default=1_000_000, help="requests for the memory run (0 skips it)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cluster", type=int, default=1_000_000,
                    help="requests for the 64-replica cluster run (0 skips it)")
    ap.add_argument("--cluster-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--e2e-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="s3")
    ap.add_argument("--vllm", type=int, default=20_000,
                    help="requests for the vllm policy on per-operator latency (0 skips it)")
    ap.add_argument("--against", metavar="REV",
                    help="only time the per-operator command (vllm and s3, --vllm requests) here and on git revision "
                         "REV, alternately, and print each ratio")
    args = ap.parse_args(argv)
    if args.against:
        from s3sim.commandline import exit_code

        sys.exit(exit_code("s3sim.bench", lambda: against(args.against, args.vllm or 20_000)))
    if args.cluster_child:
        cluster_against_one(args.cluster, 64, 4.0)
        return
    if args.e2e_child:  # the user's command, whole: config, simulation, metrics, requests.parquet, summary
        import tempfile

        from s3sim.cli import main as s3sim_main

        with tempfile.TemporaryDirectory() as out:
            sys.argv = ["s3sim", f"policy={args.policy}", f"num_requests={args.n}", f"hydra.run.dir={out}"]
            t0 = time.perf_counter()
            s3sim_main()
            wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"s3sim policy={args.policy} num_requests={args.n:,} end to end: {wall:.2f} s wall, peak RSS {rss:.2f} GiB")
        return
    if args.child:
        wall, steps, rate, _ = time_one([f"policy={args.policy}", f"num_requests={args.n}"])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        print(f"{args.policy:7s} {args.n:>9,d} requests  {wall:7.2f} s wall  {rate:9,.0f} req/s  peak RSS {rss:.2f} GiB")
        return
    print(f"{'policy':7s} {'arrivals':>16s} {'requests':>9s} {'wall s':>8s} {'steps':>8s} {'sim req/s':>10s}")
    for p in COMPARED if args.n else ():
        # offline first: its throughput is the policy's capacity, then Poisson arrivals at 1x and 2x it
        wall, steps, rate, capacity = time_one([f"policy={p}", f"num_requests={args.n}", "arrival=offline"])
        print(f"{p:7s} {'offline':>16s} {args.n:>9,d} {wall:8.2f} {steps:8d} {rate:10,.0f}   (capacity "
              f"{capacity:,.1f} req/s)", flush=True)
        for x in (1, 2):
            arrival = ["arrival=poisson", f"arrival.rate={x * capacity:.4g}"]
            wall, steps, rate, _ = time_one([f"policy={p}", f"num_requests={args.n}", *arrival])
            label = f"poisson {x}x"
            print(f"{p:7s} {label:>16s} {args.n:>9,d} {wall:8.2f} {steps:8d} {rate:10,.0f}", flush=True)
    if args.vllm:
        vllm_operators(args.vllm)
        operators_command(args.vllm)
    if args.big:
        print(f"\nmemory: {args.big:,} requests offline in a fresh process")
        for p in ("s3", "orca"):
            subprocess.run([sys.executable, "-m", "s3sim.bench", "--child", "-n", str(args.big), "--policy", p],
                           check=True)
        print("the same s3 run as a user runs it, with its results written (compare with the simulation alone)")
        subprocess.run([sys.executable, "-m", "s3sim.bench", "--e2e-child", "-n", str(args.big), "--policy", "s3"],
                       check=True)
    if args.cluster:
        print(f"\ncluster: 64 replicas, {args.cluster:,} requests of the Azure conversation trace's shape, in a "
              f"fresh process, beside one engine serving {args.cluster // 64:,} of them at the same rate")
        subprocess.run([sys.executable, "-m", "s3sim.bench", "--cluster-child", "--cluster", str(args.cluster)],
                       check=True)


if __name__ == "__main__":
    main()
