"""Per-iteration latency models behind one small interface."""

from s3sim.latency.base import LatencyModel
from s3sim.latency.datasheet import DatasheetLatency
from s3sim.latency.operators import OperatorLatency
from s3sim.latency.profiled import ProfiledLatency
from s3sim.latency.roofline import RooflineLatency

LATENCY_MODELS: dict[str, type[LatencyModel]] = {cls.name: cls for cls in (RooflineLatency, ProfiledLatency,
                                                                            OperatorLatency, DatasheetLatency)}

__all__ = ["LATENCY_MODELS", "DatasheetLatency", "LatencyModel", "OperatorLatency", "ProfiledLatency", "RooflineLatency"]
