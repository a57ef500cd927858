"""Scheduling policies: each is one class over the shared `Scheduler` bookkeeping (see `base`), with its
structured config (`Config`) and a YAML file in `conf/policy/`. `POLICIES` is the one list of them, by the
name `policy.name` selects."""
from s3sim.core.policies.base import PolicyConfig, Scheduler
from s3sim.core.policies.hf import HfScheduler
from s3sim.core.policies.orca import FasterTransformerScheduler, OrcaScheduler
from s3sim.core.policies.paged import PagedScheduler
from s3sim.core.policies.paged_spf import PagedSpfScheduler
from s3sim.core.policies.s3 import OracleScheduler, S3Scheduler
from s3sim.core.policies.vllm import VllmScheduler

POLICIES: dict[str, type[Scheduler]] = {cls.name: cls for cls in (
    FasterTransformerScheduler, HfScheduler, OrcaScheduler, S3Scheduler, OracleScheduler, PagedScheduler,
    PagedSpfScheduler, VllmScheduler)}

# what the default, paper, bench and fidelity experiments compare: the paper's three kinds of baseline (static
# batches reserving the maximum, ft; static batches growing their cache by copying, hf, transformers' generate;
# iteration-level batches reserving the maximum, orca), S3, its oracle, paging as vLLM did it in 2023 (paged) and
# vLLM's V1 scheduler with chunked prefill (vllm, also validated against real vLLM runs by `s3sim-validate`);
# paged_spf, prediction on top of paging, is studied in `make beyond`
COMPARED = ("ft", "hf", "orca", "s3", "oracle", "paged", "vllm")

__all__ = ["COMPARED", "POLICIES", "PolicyConfig", "Scheduler"]
