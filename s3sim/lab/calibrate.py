"""Calibrate the roofline's efficiency factors to a measured profile.

The roofline (`latency=roofline`) stays a formula, so it extends to models, GPU counts and batch shapes
nobody profiled; the profile says how far this hardware's kernels fall short of the datasheet. The fit
chooses `compute_efficiency`, `memory_efficiency` and `overhead_s` minimising the relative error of
`overhead + max(compute / compute_efficiency, memory / memory_efficiency)` over the profile's points
(a log-spaced search over the two efficiencies, refined twice around the best pair; the best overhead
for each pair is a closed-form weighted mean). Efficiencies are relative to the chosen GPU preset's datasheet peak, and the
effective FLOP/s and bytes/s are printed beside them.

    python -m s3sim.lab.calibrate results/profiles/smollm2-cpu.csv --gpu a100-80gb-pcie
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from s3sim.commandline import Parser
from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec, get_gpu
from s3sim.hardware.models import ModelSpec, get_model
from s3sim.latency.profiled import FEATURES, load_profile
from s3sim.latency.roofline import RooflineLatency


@dataclass
class Calibration:
    compute_efficiency: float
    memory_efficiency: float
    overhead_s: float
    flops_per_s: float  # effective rates: datasheet peak times efficiency
    bytes_per_s: float
    mean_error: float  # relative, over the profile's points
    max_error: float
    default_mean_error: float  # the roofline's defaults on the same points

    def overrides(self) -> str:
        return (f"latency=roofline latency.compute_efficiency={self.compute_efficiency:.4g} "
                f"latency.memory_efficiency={self.memory_efficiency:.4g} latency.overhead_s={self.overhead_s:.4g}")


def _best_overhead(c, m, t):
    """For each efficiency pair (rows of c, m: seconds at efficiency 1 scaled), the overhead >= 0 minimising
    the relative error, and that error's mean of squares."""
    base = np.maximum(c, m)
    w = 1.0 / t
    o = np.maximum(((1.0 - base * w) * w).sum(-1) / (w * w).sum(), 0.0)
    err = (o[..., None] + base) * w - 1.0
    return o, (err * err).mean(-1)


def calibrate(table, model: ModelSpec, gpu: GpuSpec, num_gpus: int = 1) -> Calibration:
    """Fit the roofline's efficiencies and overhead to a profile table (see the module doc)."""
    ideal = RooflineLatency(model, gpu, 1.0, 1.0, 0.0, num_gpus)
    p, sq, d, ctx = (table[f].to_numpy(np.float64) for f in FEATURES)
    comp, mem = ideal._compute_s(p, sq, d, ctx), ideal._memory_s(p, d, ctx)
    t = table["median_s"].to_numpy(np.float64)
    gc = gm = np.arange(-8.0, 0.05, 0.1)  # log10 of the efficiencies searched, then refined around the best
    for _ in range(3):
        ec, em = np.meshgrid(10.0 ** gc, 10.0 ** gm, indexing="ij")
        o, mse = _best_overhead(comp / ec[..., None], mem / em[..., None], t)
        i, j = np.unravel_index(np.argmin(mse), mse.shape)
        best, step = (gc[i], gm[j]), (gc[1] - gc[0]) / 10
        gc, gm = (np.clip(np.arange(b - 10 * step, b + 10.5 * step, step), -8.0, 0.0) for b in best)
    ce, me = 10.0 ** best[0], 10.0 ** best[1]
    over = float(o[i, j])
    pred = over + np.maximum(comp / ce, mem / me)
    err = np.abs(pred - t) / t
    default = RooflineLatency(model, gpu, num_gpus=num_gpus).iteration_time(p, sq, d, ctx)
    return Calibration(float(ce), float(me), over, float(gpu.peak_flops * ce * num_gpus),
                       float(gpu.mem_bandwidth * me * num_gpus), float(err.mean()), float(err.max()),
                       float((np.abs(default - t) / t).mean()))


def profile_model(meta: dict, name: str | None) -> ModelSpec:
    """The model a profile measured: a preset or config named on the command line, else the shape the
    profiler recorded."""
    if name:
        return get_model(name)
    spec = meta.get("model_spec")
    if not isinstance(spec, dict):
        raise ConfigError("the profile's JSON records no model shape (model_spec); name one with --model")
    try:
        return ModelSpec(**spec)
    except TypeError as e:
        raise ConfigError(f"the profile's model_spec is malformed ({e})") from None


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", help="a profile CSV written by `python -m s3exec.lab.profile`")
    ap.add_argument("--gpu", default="a100-80gb-pcie", help="GPU preset the efficiencies are relative to")
    ap.add_argument("--model", help="model preset or config.json (default: the shape the profile recorded)")
    args = ap.parse_args(argv)
    try:
        table, meta = load_profile(args.profile)
        cal = calibrate(table, profile_model(meta, args.model), get_gpu(args.gpu))
    except ConfigError as e:
        print(f"calibrate: error: {e}", file=sys.stderr)
        return 2
    print(f"roofline calibrated to {args.profile} ({meta.get('device_name', '?')}), relative to {args.gpu}:\n"
          f"  {cal.overrides()}\n"
          f"  effective {cal.flops_per_s / 1e9:.3g} GFLOP/s, {cal.bytes_per_s / 1e9:.3g} GB/s; relative error mean "
          f"{cal.mean_error:.1%}, max {cal.max_error:.1%} (the roofline's defaults: mean {cal.default_mean_error:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
