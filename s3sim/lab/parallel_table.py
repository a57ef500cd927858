"""`python -m s3sim.lab.parallel_table PROFILE --model M --gpu G [--tp N]`: what tensor parallelism
costs and saves on the per-operator model, iteration by iteration.

For a few decode and prefill shapes it prints the iteration time from the profile's `tp1/` folder (one
GPU), from its `tp<N>/` folder with communication free (`latency.all_reduce=none`), with the two
all-reduces per layer priced as a ring over the GPU preset's link (`ring`), and as `latency=operators` prices
them by default (`auto`: the GPU's measured table as the engine ran it where the preset has one, with the
logits' gather; else measured alone; else the ring). The line above the table says what `auto` chose.
"""
from __future__ import annotations

import sys

from s3sim.commandline import Parser
from s3sim.core.errors import ConfigError

SHAPES = (("decode 1 x 512", 0, 1, 512), ("decode 64 x 512", 0, 64, 512), ("decode 256 x 1024", 0, 256, 1024),
          ("prefill 2048", 2048, 0, 0))


def table(profile, model: str, gpu: str, tp: int) -> tuple[list[tuple[str, float, float, float, float]], str]:
    """((shape, one GPU, tp GPUs with free communication, with a ring, as `auto` prices them) in seconds, per
    shape; what `auto` chose)."""
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.models import get_model
    from s3sim.hardware.network import NoAllReduce, all_reduce_model
    from s3sim.latency.operators import OperatorLatency, OperatorsConfig

    m, g = get_model(model), get_gpu(gpu)
    one = OperatorLatency.from_profile(profile, m, g, tp=1)
    free = OperatorLatency.from_profile(profile, m, g, tp=tp, all_reduce=NoAllReduce())
    ring = OperatorLatency.from_profile(profile, m, g, tp=tp, all_reduce=all_reduce_model("ring", g))
    auto = OperatorLatency.from_config(OperatorsConfig(path=str(profile), tp=tp), m, g, tp)
    rows = []
    for name, p, n, ctx in SHAPES:
        args = (float(p), float(p * p), float(n), float(n * ctx))
        rows.append((name, *(float(x.iteration_time(*args)) for x in (one, free, ring, auto))))
    return rows, auto.all_reduce.source


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", help="an operator profile folder holding tp1/ and tp<N>/")
    ap.add_argument("--model", required=True, help="the model preset the profile measured (its layer count)")
    ap.add_argument("--gpu", required=True, help="the GPU preset whose link the ring runs over")
    ap.add_argument("--tp", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        rows, auto = table(args.profile, args.model, args.gpu, args.tp)
    except ConfigError as e:
        print(f"parallel_table: error: {e}", file=sys.stderr)
        return 2
    print(f"auto: {auto}")
    print(f"{args.model} on {args.gpu}, iteration time in ms: 1 GPU | {args.tp} GPUs, free communication | "
          f"{args.tp} GPUs, ring all-reduces | {args.tp} GPUs, auto")
    for name, *times in rows:
        print(f"  {name:18s}" + "".join(f" {t * 1e3:8.2f}" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
