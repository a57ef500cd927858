"""Workloads: request length tables from the shared data, and their arrival times."""

from s3sim.workload.arrivals import arrival_times
from s3sim.workload.lengths import Workload, load_workload

__all__ = ["Workload", "load_workload", "arrival_times"]
