"""Scheduling policies: each is one class over the shared `Scheduler` bookkeeping (see `base`), with its
structured config (`Config`) and a YAML file in `conf/policy/`. `POLICIES` is the one list of them, by the
name `policy.name` selects."""
from s3sim.core.policies.base import PolicyConfig, Scheduler
from s3sim.core.policies.orca import FasterTransformerScheduler, OrcaScheduler
from s3sim.core.policies.paged import PagedScheduler
from s3sim.core.policies.paged_spf import PagedSpfScheduler
from s3sim.core.policies.s3 import OracleScheduler, S3Scheduler

POLICIES: dict[str, type[Scheduler]] = {cls.name: cls for cls in (
    FasterTransformerScheduler, OrcaScheduler, S3Scheduler, OracleScheduler, PagedScheduler, PagedSpfScheduler)}

# what the default, paper, bench and fidelity experiments compare: the paper's two baselines, S3, its oracle and
# paging (paged_spf, prediction on top of paging, is studied in `make beyond`)
COMPARED = tuple(name for name in POLICIES if name != "paged_spf")

__all__ = ["COMPARED", "POLICIES", "PolicyConfig", "Scheduler"]
