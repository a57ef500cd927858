"""What parallelism costs. Tensor parallelism: two all-reduces of the activations per layer (after attention
and after the MLP), each of `tokens x hidden x dtype bytes`, across the tensor-parallel GPUs. Pipeline
parallelism: one send/recv of the activations at every stage boundary (`PointToPoint`, `MeasuredSendRecv`).

Two ways to price one: measured (`MeasuredAllReduce`, a table of times by message size and GPU count, such
as the A100 NVLink measurements in ../shared/data/gpu_profiles/network), or a ring over the GPUs'
interconnect (`RingAllReduce`): 2 (g - 1) / g of the message crosses each link, plus a latency per hop.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import GpuSpec
from s3sim.inputs import read_csv


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


class MeasuredAllReduce:
    """Median all-reduce times by message size, per GPU count within one node; linear between measured
    sizes and along the last segment beyond them."""

    def __init__(self, table: pd.DataFrame, source: str):
        self.source = source
        self.curves = {}
        for workers, rows in table.groupby("num_workers"):
            rows = rows.sort_values("size")
            self.curves[int(workers)] = (rows["size"].to_numpy(np.float64), rows.ms.to_numpy(np.float64) * 1e-3)

    @classmethod
    def from_csv(cls, path) -> "MeasuredAllReduce":
        t = read_collective(path, "all_reduce", "all-reduce")
        t = t[t.devices_per_node == t.num_workers]  # within one node
        t = t.groupby(["num_workers", "size"], as_index=False).ms.median()
        return cls(t, str(path))

    def time_s(self, workers: int, nbytes):
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if workers <= 1:
            return np.zeros_like(nbytes)
        if workers not in self.curves:
            raise ConfigError(f"all-reduce profile {self.source!r} has no measurement for {workers} GPUs in one node "
                              f"(it has {', '.join(map(str, sorted(self.curves)))})")
        return linear(*self.curves[workers], nbytes)


def read_collective(path, collective: str, what: str) -> pd.DataFrame:
    """A measured collective's CSV (the shared `gpu_profiles/network/*/<collective>.csv`): its rows with the
    median time in milliseconds as `ms`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} profile: no file {str(p)!r}")
    t = read_csv(p, f"{what} profile {str(p)!r}: not a CSV")
    median = f"time_stats.{collective}.median"
    missing = [c for c in ("num_workers", "size", "devices_per_node", median) if c not in t.columns]
    if missing:
        raise ConfigError(f"{what} profile {str(p)!r}: missing column {missing[0]!r}")
    return t.rename(columns={median: "ms"})


def linear(x: np.ndarray, y: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """Seconds by message size: linear between measured sizes, along the last segment beyond them."""
    slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
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
    `gpu_profiles/network/*/send_recv.csv`); linear between sizes and along the last segment beyond them."""

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


def all_reduce_model(spec: str, gpu: GpuSpec):
    """`latency.all_reduce`: ring over the GPU's interconnect, none (None: free), or a measured CSV."""
    if spec == "none":
        return None
    if spec == "ring":
        if not gpu.interconnect_bandwidth:
            raise ConfigError(f"gpu {gpu.name} has no interconnect bandwidth to price tensor parallelism with: set "
                              f"latency.all_reduce=none or to a measured all-reduce CSV")
        return RingAllReduce(gpu.interconnect_bandwidth, source=f"ring over {gpu.name}'s interconnect")
    return MeasuredAllReduce.from_csv(spec)


def send_recv_model(spec: str, gpu: GpuSpec):
    """`latency.send_recv`: over the GPU's interconnect (`link`), none, or a measured send/recv CSV."""
    if spec == "none":
        return FreeSendRecv()
    if spec == "link":
        if not gpu.interconnect_bandwidth:
            raise ConfigError(f"gpu {gpu.name} has no interconnect bandwidth to price pipeline stages' send/recv "
                              f"with: set latency.send_recv=none or to a measured send/recv CSV")
        return PointToPoint(gpu.interconnect_bandwidth, source=f"over {gpu.name}'s interconnect")
    return MeasuredSendRecv.from_csv(spec)
