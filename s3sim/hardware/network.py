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
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"all-reduce profile: no file {str(p)!r}")
        t = read_csv(p, f"all-reduce profile {str(p)!r}: not a CSV")
        median = "time_stats.all_reduce.median"
        missing = [c for c in ("num_workers", "size", "devices_per_node", median) if c not in t.columns]
        if missing:
            raise ConfigError(f"all-reduce profile {str(p)!r}: missing column {missing[0]!r}")
        t = t[t.devices_per_node == t.num_workers].rename(columns={median: "ms"})  # within one node
        t = t.groupby(["num_workers", "size"], as_index=False).ms.median()
        return cls(t, str(p))

    def time_s(self, workers: int, nbytes):
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if workers <= 1:
            return np.zeros_like(nbytes)
        if workers not in self.curves:
            raise ConfigError(f"all-reduce profile {self.source!r} has no measurement for {workers} GPUs in one node "
                              f"(it has {', '.join(map(str, sorted(self.curves)))})")
        x, y = self.curves[workers]
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
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"send/recv profile: no file {str(p)!r}")
        t = read_csv(p, f"send/recv profile {str(p)!r}: not a CSV")
        median = "time_stats.send_recv.median"
        missing = [c for c in ("num_workers", "size", "devices_per_node", median) if c not in t.columns]
        if missing:
            raise ConfigError(f"send/recv profile {str(p)!r}: missing column {missing[0]!r}")
        t = t[(t.devices_per_node == 2) & (t.num_workers == 2)]  # two GPUs of one node
        if len(t) < 2:
            raise ConfigError(f"send/recv profile {str(p)!r}: no two-GPU measurements within one node")
        t = t.groupby("size", as_index=False)[median].median().sort_values("size")
        return cls(t["size"].to_numpy(np.float64), t[median].to_numpy(np.float64) * 1e-3, str(p))

    def time_s(self, nbytes):
        nbytes = np.asarray(nbytes, dtype=np.float64)
        x, y = self.x, self.y
        slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
        return np.where(nbytes > x[-1], y[-1] + slope * (nbytes - x[-1]), np.interp(nbytes, x, y))
