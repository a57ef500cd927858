"""What the experiment drivers share: configs composed as `s3sim` composes them, runs that resume, and
the search for the highest arrival rate that still meets the SLO.

Every run goes into `<runs>/<key>` through `runner.run_dir`, the same function the Hydra app uses, with
`key` named like Hydra's `override_dirname` (sorted `k=v`, comma-joined), so a rerun reuses every run
whose resolved config is unchanged and a run computed by `s3sim -m experiment=...` (on a cluster, say)
under the same sweep dir is reused too.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.config import CONF_DIR
from s3sim.config_groups import config_groups
from s3sim.core.errors import ConfigError
from s3sim.runner import run_dir

ATTAINMENT = 0.9  # a rate meets the SLO when at least this share of requests meets every SLO
GROUPS = config_groups()


def jobs_default() -> int:
    """Worker processes: S3SIM_JOBS, else one per core this process may use."""
    if "S3SIM_JOBS" in os.environ:
        return int(os.environ["S3SIM_JOBS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class Composer:
    """`compose("config", overrides)` as a plain dict, composed once per choice of config groups; value
    overrides (`arrival.rate=40`) are then set on a copy, parsed as Hydra parses them (YAML scalars)."""

    def __init__(self, preset: str | None = None):
        self.preset = preset
        self._cache: dict[tuple, dict] = {}

    def __call__(self, overrides) -> dict:
        choices = tuple(sorted(o for o in overrides if o.split("=")[0].lstrip("+~") in GROUPS))
        values = [o for o in overrides if o not in choices]
        if choices not in self._cache:
            base = [f"experiment={self.preset}"] if self.preset else []
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                self._cache[choices] = OmegaConf.to_container(compose("config", overrides=base + list(choices)),
                                                              resolve=True)
        cfg = copy.deepcopy(self._cache[choices])
        for o in values:
            key, _, text = o.partition("=")
            *path, last = key.split(".")
            node = cfg
            for k in path:
                node = node.get(k) if isinstance(node, dict) else None
            if not isinstance(node, dict) or last not in node:
                raise ConfigError(f"override {o!r}: no field {key} in the config")
            node[last] = yaml.safe_load(text)
        return cfg


def key(overrides) -> str:
    """Run directory name, as Hydra's override_dirname (path separators made safe)."""
    return ",".join(sorted(overrides)).replace("/", "_") or "base"


def _one(cfg, out, write_iterations):
    t0 = time.perf_counter()
    try:
        row, reused = run_dir(cfg, out, write_iterations=write_iterations)
        return {**row, "status": "finished", "reused": reused, "wall_s": time.perf_counter() - t0}
    except Exception as e:  # recorded in failed.txt by run_dir; reported by the caller
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


def run_many(points: list[dict], runs: Path, composer: Composer, jobs: int | None = None,
             write_iterations: bool = False, label: str = "") -> pd.DataFrame:
    """Run every point (a dict with `overrides` and any tags to keep) into `runs/<key>`, in parallel.

    Returns one row per point: the summary, `status`, then the point's tags (which win over summary
    fields of the same name) and `key`. Failed points are printed and kept as rows with
    `status=failed`, so one bad point never loses the others."""
    if not points:
        return pd.DataFrame()
    jobs = jobs_default() if jobs is None else jobs
    cfgs = [composer(p["overrides"]) for p in points]
    dirs = [Path(runs) / key(p["overrides"]) for p in points]
    args = list(zip(cfgs, dirs, [write_iterations] * len(points)))
    t0 = time.perf_counter()
    if jobs > 1 and len(points) > 1:
        from joblib import Parallel, delayed
        rows = Parallel(n_jobs=jobs, prefer="processes")(delayed(_one)(*a) for a in args)
    else:
        rows = [_one(*a) for a in args]
    out = pd.DataFrame([{**r, **{k: v for k, v in p.items() if k != "overrides"}, "key": key(p["overrides"])}
                        for p, r in zip(points, rows)])
    reused = int(out.get("reused", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
    print(f"  {label or 'runs'}: {len(points)} points ({reused} reused) in {time.perf_counter() - t0:.1f}s",
          flush=True)
    for _, r in out[out.status == "failed"].iterrows():
        print(f"  failed: {runs}/{r.key}: {r.error}", file=sys.stderr)
    return out


def meets_slo(row) -> bool:
    return row.get("status") == "finished" and row.get("slo_attainment", 0.0) >= ATTAINMENT


def rate_text(r: float) -> str:
    """A rate to 4 significant digits, written so that YAML reads it back as that float."""
    return repr(float(f"{r:.4g}"))


def _bracket(rows: pd.DataFrame) -> tuple[float, float | None]:
    """(highest passing rate below the lowest failing one, lowest failing rate or None)."""
    ok = rows.apply(meets_slo, axis=1) if len(rows) else pd.Series(dtype=bool)
    done = rows.status == "finished" if len(rows) else ok
    fail = rows.rate[done & ~ok]
    hi = float(fail.min()) if len(fail) else None
    below = rows.rate[ok] if hi is None else rows.rate[ok & (rows.rate < hi)]
    return (float(below.max()) if len(below) else 0.0), hi


def online_requests(rate: float, window_s: float, least: int) -> int:
    """Requests for a run at `rate`: enough to keep arriving for `window_s` seconds.

    A fixed count would let a fast configuration pass at any rate: 4,000 requests arriving within a
    second or two are a burst the TTFT bound absorbs, not a load the server sustains. Over `window_s`,
    a server that is a fraction e too slow queues e * window_s seconds of work, so with a 2 s TTFT
    bound and 90 % attainment a 60 s window lets an overload of at most ~4 % pass."""
    return max(least, math.ceil(rate * window_s))


def slo_capacity(points: list[dict], runs: Path, composer: Composer, grid=(0.25, 0.5, 0.75, 1.0),
                 rounds: int = 4, jobs: int | None = None, label: str = "", arrival=("arrival=poisson",),
                 window_s: float = 60.0, least: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The highest arrival rate (Poisson unless `arrival` says otherwise) at which a configuration meets
    the SLO, for every point.

    Each point gives `overrides` and `scale` (its offline maximum throughput). Rates start at `grid`
    times the scale, then `rounds` bisections between the highest passing and the lowest failing rate
    (all points in parallel each round); the grid extends downwards (or upwards) when every rate fails
    (or passes). Each run lasts `window_s` seconds of arrivals (`online_requests`). Returns (one row per
    point with `capacity`, every online run)."""
    tags = [{k: v for k, v in p.items() if k not in ("overrides", "scale")} for p in points]
    todo = {i: [p["scale"] * f for f in grid] for i, p in enumerate(points)}
    done = pd.DataFrame()
    for rnd in range(rounds + 1):
        batch = [{**tags[i], "point": i, "rate": float(rate_text(r)),
                  "overrides": points[i]["overrides"] + list(arrival) + [
                      f"arrival.rate={rate_text(r)}",
                      f"num_requests={online_requests(float(rate_text(r)), window_s, least)}"]}
                 for i, rates in todo.items() for r in rates]
        done = pd.concat([done, run_many(batch, runs, composer, jobs=jobs, label=f"{label} round {rnd}")],
                         ignore_index=True)
        todo = {}
        for i, p in enumerate(points):
            lo, hi = _bracket(done[done.point == i])
            if hi is None:
                todo[i] = [max(lo, p["scale"]) * 1.5]
            elif lo == 0.0:
                todo[i] = [hi / 4]
            elif hi / lo > 1.02:
                todo[i] = [(lo + hi) / 2]
        if not todo:
            break
    cap = []
    for i in range(len(points)):
        lo, hi = _bracket(done[done.point == i])
        cap.append({**tags[i], "scale": points[i]["scale"], "capacity": lo, "first_failing_rate": hi})
    return pd.DataFrame(cap), done


def replicas_needed(points: list[dict], runs: Path, composer: Composer, router: str = "least_outstanding",
                    jobs: int | None = None, label: str = "", window_s: float = 60.0, least: int = 2000,
                    max_rounds: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fewest replicas behind `router` that serve a Poisson stream at each point's `target` rate within
    the SLO, found by simulating the cluster (`s3sim.cluster`), for every point.

    Each point gives `overrides` (one replica's configuration), `target` and `start` (the replica count to
    try first, the arithmetic estimate). A failing count doubles until one passes; then the gap between the
    largest failing and the smallest passing count is bisected. Returns (one row per point with
    `replicas`, None where nothing up to 64 times `start` passed; every run)."""
    tags = [{k: v for k, v in p.items() if k != "overrides"} for p in points]
    todo = {i: int(p["start"]) for i, p in enumerate(points) if p["target"] > 0 and p["start"] >= 1}
    done = pd.DataFrame()
    for rnd in range(max_rounds * 3):
        if not todo:
            break
        batch = []
        for i, n in todo.items():
            rate = rate_text(points[i]["target"])
            batch.append({**tags[i], "point": i, "n": n,
                          "overrides": points[i]["overrides"] + [
                              "arrival=poisson", f"arrival.rate={rate}", f"cluster.replicas={n}",
                              f"cluster.router={router}",
                              f"num_requests={online_requests(float(rate), window_s, least)}"]})
        done = pd.concat([done, run_many(batch, runs, composer, jobs=jobs, label=f"{label} round {rnd}")],
                         ignore_index=True)
        todo = {}
        for i, p in enumerate(points):
            rows = done[done.point == i] if len(done) else done
            if not len(rows):
                continue
            lo, hi = _replica_bounds(rows)
            if hi is None:
                nxt = max(lo, 1) * 2
                if nxt <= 64 * p["start"] and not (rows.status != "finished").all():
                    todo[i] = nxt
            elif hi - lo > 1:
                todo[i] = (lo + hi) // 2
    out = []
    for i in range(len(points)):
        rows = done[done.point == i] if len(done) else done
        out.append({**tags[i], "replicas": _replica_bounds(rows)[1] if len(rows) else None, "router": router})
    return pd.DataFrame(out), done


def _replica_bounds(rows: pd.DataFrame) -> tuple[int, int | None]:
    """(the largest replica count that finished and missed the SLO, 0 if none; the smallest passing count
    above it, else the smallest passing count, None if none passed) of one point's cluster runs."""
    ok = rows.apply(meets_slo, axis=1)
    failing = rows.n[(rows.status == "finished") & ~ok]
    lo = int(failing.max()) if len(failing) else 0
    passing = rows.n[ok]
    above = passing[passing > lo]
    return lo, int(above.min()) if len(above) else (int(passing.min()) if len(passing) else None)
