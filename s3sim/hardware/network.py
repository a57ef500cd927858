"""What parallelism costs. Tensor parallelism: two all-reduces of the activations per layer (after attention
and after the MLP), each of `tokens x hidden x dtype bytes`, across the tensor-parallel GPUs. Pipeline
parallelism: one send/recv of the activations at every stage boundary (`PointToPoint`, `MeasuredSendRecv`).

Ways to price one (`latency.all_reduce`):
- `measured`: the table the GPU preset names (`measured_all_reduce`, under the shared data folder: the NCCL
  all-reduce between the two PCIe RTX PRO 6000, the A100 DGX's NVLink); a CSV path names any such table
  (`MeasuredAllReduce`: times by message size and GPU count, linear between sizes; below the smallest size
  measured, that size's time: the latency floor of a small message, 13-15 us on the PCIe pair, where a ring's
  per-hop latency would say 5 us);
- `ring`: a ring over the GPUs' interconnect (`RingAllReduce`): 2 (g - 1) / g of the message crosses each
  link, plus a latency per hop; the fallback for a link never measured;
- `link:<GB/s>:<us>`: one latency plus the message at one effective bandwidth (`LinkAllReduce`), for a link
  known only by those two numbers (a sensitivity study, or another simulator's setting);
- `engine`: the measured table as the serving engine ran it (`InEngineCollective`): its latency floor plus the
  message at its measured bandwidth divided by a factor, never faster than measured alone; the factor is fitted
  to the whole-step table the GPU preset names (`in_engine_steps`, `s3sim.latency.operators.in_engine_factor`);
- `auto` (the default, here and in `s3sim-validate`): `engine` where the preset names such a table and its
  measured table has that many GPUs, else `measured` where it does, else `ring`, its source saying so;
- `none`: free (ideal scaling).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.inputs import SHARED_DATA_DIR, read_csv


RING_FALLBACK = "the ring is a fallback, not a measurement"  # in the source of a ring `auto` fell back to


class RingAllReduce:
    def __init__(self, link_bandwidth: float, hop_latency_s: float = 5e-6, source: str = ""):
        if not link_bandwidth > 0 or not hop_latency_s >= 0:
            raise ConfigError(f"an all-reduce needs a positive link bandwidth and a latency >= 0, got "
                              f"{link_bandwidth!r} and {hop_latency_s!r}")
        self.bandwidth, self.hop_latency, self.source = float(link_bandwidth), float(hop_latency_s), source

    def time_s(self, workers: int, nbytes):
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if workers <= 1:
            return np.zeros_like(nbytes)
        steps = 2 * (workers - 1)
        return steps * self.hop_latency + steps / workers * nbytes / self.bandwidth


class NoAllReduce:
    """Tensor parallelism's communication taken as free (`latency.all_reduce=none`: ideal scaling)."""

    source = "none (free)"

    def time_s(self, workers: int, nbytes):
        return np.zeros_like(np.asarray(nbytes, dtype=np.float64))


LINK_MIN_GBPS = 1e-3  # a link's bandwidth from 1 MB/s (finite), its latency per collective at most a second:
LINK_MAX_US = 1e6  # beyond, a typo, whose steps of years overflowed what a replay draws


class LinkAllReduce:
    """An all-reduce as one latency plus the message at one effective bandwidth, whatever the GPU count."""

    def __init__(self, bandwidth: float, latency_s: float):
        if not LINK_MIN_GBPS <= bandwidth / 1e9 < float("inf") or not 0 <= latency_s * 1e6 <= LINK_MAX_US:
            raise ConfigError(f"latency.all_reduce=link:<GB/s>:<us> needs a finite bandwidth of at least "
                              f"{LINK_MIN_GBPS:g} GB/s and a latency of 0 to {LINK_MAX_US:g} us, got "
                              f"{bandwidth / 1e9:g} GB/s and {latency_s * 1e6:g} us")
        self.bandwidth, self.latency = float(bandwidth), float(latency_s)
        self.source = f"link of {bandwidth / 1e9:g} GB/s with {latency_s * 1e6:g} us per collective"

    def time_s(self, workers: int, nbytes):
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if workers <= 1:
            return np.zeros_like(nbytes)
        return self.latency + nbytes / self.bandwidth


class InEngineCollective:
    """A collective as the serving engine ran it: the one measured alone (`measured`: a `MeasuredAllReduce`) at
    its latency floor (its time for the smallest message) plus the message at its measured bandwidth (the
    slope of its largest messages) divided by `factor`, and never faster than measured alone
    (`s3sim.latency.steps.fit_in_engine_factor` fits the factor to whole steps of the engine)."""

    def __init__(self, measured: "MeasuredAllReduce", factor: float, source: str):
        if not factor > 0:
            raise ConfigError(f"an in-engine collective needs a factor > 0, got {factor!r}")
        self.measured, self.factor, self.source = measured, float(factor), source
        self._link: dict[int, tuple[float, float]] = {}  # workers -> (floor s, bytes/s), read once per count

    def time_s(self, workers: int, nbytes):
        alone = np.asarray(self.measured.time_s(workers, nbytes), dtype=np.float64)
        if workers <= 1:
            return alone
        link = self._link.get(workers)
        if link is None:  # priced at every step of a data-parallel run: the table's floor and slope once
            link = self._link[workers] = (float(self.measured.time_s(workers, 0.0)), self.measured.bandwidth(workers))
        floor, bandwidth = link
        return np.maximum(alone, floor + self.factor * np.asarray(nbytes, dtype=np.float64) / bandwidth)


class MeasuredAllReduce:
    """Median all-reduce times by message size, per GPU count within one node; linear between measured
    sizes and at the largest messages' rate beyond them (`linear`), the smallest size's time below them."""

    def __init__(self, table: pd.DataFrame, source: str):
        self.source = source
        self.curves = {}
        for workers, rows in table.groupby("num_workers"):
            rows = rows.sort_values("size")
            self.curves[int(workers)] = (rows["size"].to_numpy(np.float64), rows.ms.to_numpy(np.float64) * 1e-3)

    @classmethod
    def from_csv(cls, path, collective: str = "all_reduce") -> "MeasuredAllReduce":
        """Either format of the shared tables: `collective, num_gpus, bytes, time_us` (the RTX PRO 6000 pair: its
        `all_reduce` or `all_gather` rows), or Vidur's (`num_workers, size, devices_per_node,
        time_stats.all_reduce.median` in ms).

        An all-gather row's `bytes` is what each GPU contributes (the collective's input), so its sizes are held
        here as the gathered output (`bytes` x GPUs), the size every caller prices (`RingAllGather` too). The
        table itself says so: read as the output, its all-gathers would move half an all-reduce's bytes per GPU
        at equal size and yet take longer at every size from 1 MB up (20 MB: 683 us against 587 us), about 0.4
        of the all-reduce's bus bandwidth on the same link; read as the input, both move `bytes` per GPU, at
        about the same bandwidth (31 and 36 GB/s)."""
        p = Path(path)
        what = collective.replace("_", "-")
        t = _read_table(p, what)
        if {"collective", "num_gpus", "bytes", "time_us"} <= set(t.columns):
            t = t[t.collective == collective]
            if t.empty or t[["num_gpus", "bytes", "time_us"]].isna().any().any():
                raise ConfigError(f"{what} profile {str(p)!r}: needs {collective} rows with num_gpus, bytes and "
                                  f"time_us")
            t = t.rename(columns={"num_gpus": "num_workers", "bytes": "size"}).assign(ms=t.time_us * 1e-3)
            if collective == "all_gather":  # `bytes` is each GPU's share: held as the gathered size, as priced
                t = t.assign(size=t["size"] * t.num_workers)
        else:
            if collective != "all_reduce":
                raise ConfigError(f"{what} profile {str(p)!r}: a table of this format holds all-reduces only")
            t = _median_ms(t, p, "all_reduce", what)
            t = t[t.devices_per_node == t.num_workers]  # within one node
        t = t.groupby(["num_workers", "size"], as_index=False).ms.median()
        if (t.groupby("num_workers").size() < 2).any():
            raise ConfigError(f"{what} profile {str(p)!r}: needs two message sizes at least per GPU count")
        return cls(t, str(p))

    def bandwidth(self, workers: int) -> float:
        """Bytes/s of the largest messages measured (`top_slope`: over the table's top octave of sizes)."""
        self.time_s(workers, 0.0)  # a one-line error for a GPU count never measured
        slope = top_slope(*self.curves[workers])
        if not slope > 0:
            raise ConfigError(f"all-reduce profile {self.source!r}: its largest messages at {workers} GPUs give "
                              f"no bandwidth (the largest is not slower than half its size)")
        return float(1.0 / slope)

    def time_s(self, workers: int, nbytes):
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if workers <= 1:
            return np.zeros_like(nbytes)
        if workers not in self.curves:
            raise ConfigError(f"all-reduce profile {self.source!r} has no measurement for {workers} GPUs in one node "
                              f"(it has {', '.join(map(str, sorted(self.curves)))})")
        return linear(*self.curves[workers], nbytes)


def holds_collective(path, collective: str) -> bool:
    """Whether the table at `path` has rows of `collective` (a Vidur table holds all-reduces alone; the other format
    says each row's collective)."""
    t = _read_table(Path(path), collective.replace("_", "-"))
    if "collective" in t.columns:
        return bool((t.collective == collective).any())
    return collective == "all_reduce"


def _read_table(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{what} profile: no file {str(path)!r}")
    return read_csv(path, f"{what} profile {str(path)!r}: not a CSV")


def _median_ms(t: pd.DataFrame, path: Path, collective: str, what: str) -> pd.DataFrame:
    """Vidur's collective table `t`: its rows with the median time in milliseconds as `ms`."""
    median = f"time_stats.{collective}.median"
    missing = [c for c in ("num_workers", "size", "devices_per_node", median) if c not in t.columns]
    if missing:
        raise ConfigError(f"{what} profile {str(path)!r}: missing column {missing[0]!r}")
    return t.rename(columns={median: "ms"})


def read_collective(path, collective: str, what: str) -> pd.DataFrame:
    """A measured collective's CSV (the shared `gpu_profiles/network/*/<collective>.csv`): its rows with the
    median time in milliseconds as `ms`."""
    p = Path(path)
    return _median_ms(_read_table(p, what), p, collective, what)


def top_octave(x: np.ndarray) -> int:
    """Where the rate of a measured table's largest sizes is read from: the first size at or above half the largest
    (the one before the largest where that octave holds no other). Not the last segment alone, which a finely
    spaced table turns into noise: the A100 DGX tables are 131 KB apart at 64 MB, where their last segment is flat
    at 8 GPUs and falls at 2; the operator profiles 16 tokens apart at 2,048 (`s3sim.latency.operators.Curve`)."""
    return min(int(np.searchsorted(x, x[-1] / 2)), len(x) - 2)


def top_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Seconds per byte of the largest messages measured: the secant over the table's top octave of sizes."""
    j = top_octave(x)
    return (y[-1] - y[j]) / (x[-1] - x[j])


def linear(x: np.ndarray, y: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Seconds by message size: linear between measured sizes, beyond them the largest one's time plus the rest
    at the largest messages' rate (`top_slope`; never less than the largest one's time)."""
    slope = max(top_slope(x, y), 0.0)
    return np.where(nbytes > x[-1], y[-1] + slope * (nbytes - x[-1]), np.interp(nbytes, x, y))


class PointToPoint:
    """A send/recv between two GPUs over their link: a latency plus the bytes at the link's bandwidth."""

    def __init__(self, link_bandwidth: float, latency_s: float = 5e-6, source: str = ""):
        if not link_bandwidth > 0 or not latency_s >= 0:
            raise ConfigError(f"a send/recv needs a positive link bandwidth and a latency >= 0, got "
                              f"{link_bandwidth!r} and {latency_s!r}")
        self.bandwidth, self.latency, self.source = float(link_bandwidth), float(latency_s), source

    def time_s(self, nbytes):
        return self.latency + np.asarray(nbytes, dtype=np.float64) / self.bandwidth


class MeasuredSendRecv:
    """Median send/recv times by message size between two GPUs of one node (the shared
    `gpu_profiles/network/*/send_recv.csv`); linear between sizes, at the largest messages' rate beyond them."""

    def __init__(self, sizes: np.ndarray, seconds: np.ndarray, source: str):
        self.x, self.y, self.source = sizes, seconds, source

    @classmethod
    def from_csv(cls, path) -> "MeasuredSendRecv":
        t = read_collective(path, "send_recv", "send/recv")
        t = t[(t.devices_per_node == 2) & (t.num_workers == 2)]  # two GPUs of one node
        t = t.groupby("size", as_index=False).ms.median().sort_values("size")
        if len(t) < 2:
            raise ConfigError(f"send/recv profile {str(path)!r}: needs two-GPU measurements within one node at "
                              f"two sizes at least")
        return cls(t["size"].to_numpy(np.float64), t.ms.to_numpy(np.float64) * 1e-3, str(path))

    def time_s(self, nbytes):
        return linear(self.x, self.y, np.asarray(nbytes, dtype=np.float64))


class FreeSendRecv:
    """Pipeline stages' send/recv taken as free (`latency.send_recv=none`)."""

    source = "none (free)"

    @staticmethod
    def time_s(nbytes):
        return np.zeros_like(np.asarray(nbytes, dtype=np.float64))


def measured_table(gpu: GpuSpec) -> Path | None:
    """The measured all-reduce table the GPU preset names, if it names one and the shared data holds it."""
    if not gpu.measured_all_reduce:
        return None
    path = SHARED_DATA_DIR / gpu.measured_all_reduce
    return path if path.is_file() else None


def preset_measured(gpu: GpuSpec, collective: str = "all_reduce") -> MeasuredAllReduce | None:
    """`collective` from the table the GPU preset names (None where it names none, the shared data lacks it, or
    the table holds no such collective), its source saying so."""
    table = measured_table(gpu)
    if table is None:
        return None
    try:
        model = MeasuredAllReduce.from_csv(table, collective)
    except ConfigError:
        if collective == "all_reduce":
            raise
        return None
    what = "" if collective == "all_reduce" else collective.replace("_", "-") + " "
    model.source = f"{what}measured between {gpu.name} GPUs ({gpu.measured_all_reduce} in the shared data)"
    return model


class RingAllGather:
    """An all-gather as a ring over the GPUs' link: (g - 1) / g of the gathered bytes cross each link, plus a
    latency per hop."""

    def __init__(self, link_bandwidth: float, hop_latency_s: float = 5e-6, source: str = ""):
        self.bandwidth, self.hop_latency, self.source = float(link_bandwidth), float(hop_latency_s), source

    def time_s(self, workers: int, nbytes):
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if workers <= 1:
            return np.zeros_like(nbytes)
        return (workers - 1) * self.hop_latency + (workers - 1) / workers * nbytes / self.bandwidth


def all_gather_model(gpu: GpuSpec, workers: int):
    """The all-gather of `workers` GPUs: the GPU preset's measured table where it has that collective for that
    many GPUs, else a ring over the preset's link (its source says it is a fallback)."""
    model = preset_measured(gpu, "all_gather")
    if model is not None and workers in model.curves:
        return model
    if not gpu.interconnect_bandwidth:
        raise ConfigError(f"gpu {gpu.name} has no interconnect bandwidth to price an all-gather with")
    return RingAllGather(gpu.interconnect_bandwidth, source=f"all-gather as a ring over {gpu.name}'s interconnect "
                                                            f"({_unmeasured(gpu, 'all-gather', workers)}: "
                                                            f"{RING_FALLBACK})")


def _unmeasured(gpu: GpuSpec, what: str, workers) -> str:
    """Why no measured table prices `what` between `workers` GPUs: none measured, or the preset's table absent."""
    if gpu.measured_all_reduce and measured_table(gpu) is None:
        return f"the preset's table {gpu.measured_all_reduce} is not in the shared data folder {SHARED_DATA_DIR}"
    return f"no measured {what} of {workers} {gpu.name} GPUs"


def link_all_reduce(spec: str) -> LinkAllReduce:
    """`link:<GB/s>:<us>` read (a bandwidth > 0 and a latency >= 0, or one line saying what was expected)."""
    parts = spec.split(":")
    try:
        bandwidth, latency = float(parts[1]) * 1e9, float(parts[2]) * 1e-6
    except (IndexError, ValueError):
        raise ConfigError(f"latency.all_reduce={spec!r}: expected link:<GB/s>:<us>, e.g. link:16:20") from None
    if len(parts) != 3:
        raise ConfigError(f"latency.all_reduce={spec!r}: expected link:<GB/s>:<us>, e.g. link:16:20")
    return LinkAllReduce(bandwidth, latency)


def all_reduce_model(spec: str, gpu: GpuSpec, workers: int | None = None):
    """`latency.all_reduce` (see the module doc): measured, ring, link:<GB/s>:<us>, none (None: free), a CSV
    path; `auto`: measured where the preset's table has `workers` GPUs, else the ring (its source says why)."""
    if spec == "none":
        return None
    if spec == "engine":  # every latency model takes it through s3sim.latency.operators.priced_collectives
        raise ConfigError("latency.all_reduce=engine prices the measured table as the engine ran it, fitted to "
                          "whole steps: price it with s3sim.latency.operators.priced_collectives")
    if spec == "auto":
        model = preset_measured(gpu)
        if model is not None and (workers is None or workers in model.curves):
            return model
        ring = all_reduce_model("ring", gpu)
        ring.source += f" ({_unmeasured(gpu, 'all-reduce', workers)}: {RING_FALLBACK})"
        return ring
    if spec == "measured":
        if not gpu.measured_all_reduce:
            raise ConfigError(f"latency.all_reduce=measured: the {gpu.name} preset names no measured all-reduce "
                              f"table; use ring, link:<GB/s>:<us>, none or a CSV path")
        model = preset_measured(gpu)
        if model is None:
            raise ConfigError(f"latency.all_reduce=measured: {gpu.name}'s table {gpu.measured_all_reduce!r} is not "
                              f"in the shared data folder {SHARED_DATA_DIR}")
        return model
    if spec.startswith("link:"):
        return link_all_reduce(spec)
    if spec == "ring":
        if not gpu.interconnect_bandwidth:
            raise ConfigError(f"gpu {gpu.name} has no interconnect bandwidth to price tensor parallelism with: set "
                              f"latency.all_reduce=none or to a measured all-reduce CSV")
        return RingAllReduce(gpu.interconnect_bandwidth, source=f"ring over {gpu.name}'s interconnect")
    return _named("latency.all_reduce", MeasuredAllReduce.from_csv, spec)


def check_send_recv_spec(spec: str) -> None:
    """`latency.send_recv` read on every run, one stage too (where it prices nothing, and a misspelt value would
    pass unread until a sweep reached several stages): link, none, or a file."""
    if spec not in ("link", "none") and not Path(spec).is_file():
        raise ConfigError(f"latency.send_recv={spec!r}: no such file, nor link or none")


def send_recv_model(spec: str, gpu: GpuSpec):
    """`latency.send_recv`: over the GPU's interconnect (`link`), none, or a measured send/recv CSV."""
    if spec == "none":
        return FreeSendRecv()
    if spec == "link":
        if not gpu.interconnect_bandwidth:
            raise ConfigError(f"gpu {gpu.name} has no interconnect bandwidth to price pipeline stages' send/recv "
                              f"with: set latency.send_recv=none or to a measured send/recv CSV")
        return PointToPoint(gpu.interconnect_bandwidth, source=f"over {gpu.name}'s interconnect")
    return _named("latency.send_recv", MeasuredSendRecv.from_csv, spec)


def _named(key: str, read, spec: str):
    """A measured table named by `key`'s value: its errors say which setting chose the file."""
    try:
        return read(spec)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
