"""Per-iteration latency models behind one small interface."""

from s3sim.latency.base import LatencyModel
from s3sim.latency.profiled import ProfiledLatency
from s3sim.latency.roofline import RooflineLatency

__all__ = ["LatencyModel", "ProfiledLatency", "RooflineLatency"]
