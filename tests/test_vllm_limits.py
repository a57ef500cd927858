"""policy=vllm's `auto` limits: the max_num_seqs and max_num_batched_tokens vLLM V1 picks when none is set
(`EngineArgs.get_batch_defaults`: by device memory, an A100 excepted, and the entry point), recorded in the
summary; a number given beside an auto one is kept, and auto on another policy is refused."""
import subprocess
import sys

import pytest

from s3sim.config import build_scheduler, policy_node
from s3sim.core.policies.vllm import vllm_default_limits


@pytest.mark.parametrize("memory_gib, name, offline, seqs, tokens", [
    (80, "h100-sxm", False, 1024, 8192), (80, "h100-sxm", True, 1024, 16384),
    (96, "rtx-pro-6000", False, 1024, 8192), (141, "h200", True, 1024, 16384),
    (80, "a100-80gb-sxm", True, 256, 8192), (80, "a100-80gb-pcie", False, 256, 2048),
    (24, "rtx-4090", False, 256, 2048), (48, "a40", True, 256, 8192), (70, "l40-70", False, 1024, 8192),
])
def test_vllms_defaults_by_memory_name_and_entry_point(memory_gib, name, offline, seqs, tokens):
    got = vllm_default_limits(memory_gib, name, offline)
    assert got[:2] == (seqs, tokens) and name in got[2]
    assert ("offline LLM class" if offline else "server") in got[2]


def cfg(gpu="h100-sxm", arrival="poisson", **policy):
    return {"max_seq_len": 512, "gpu": {"name": gpu}, "arrival": {"process": arrival},
            "policy": {"name": "vllm", "max_batch_size": 256, "max_num_batched_tokens": 2048, **policy}}


def test_auto_limits_build_the_scheduler_and_are_recorded():
    sched = build_scheduler(cfg(max_batch_size="auto", max_num_batched_tokens="auto"), 100_000, [10])
    assert (sched.max_batch, sched.token_budget) == (1024, 8192)
    text = sched.summary_fields()["vllm_limits"]
    assert text.startswith("max_num_seqs 1024, max_num_batched_tokens 8192 (policy.max_batch_size, "
                           "policy.max_num_batched_tokens=auto: vLLM V1's default for the server on h100-sxm")
    plain = build_scheduler(cfg(), 100_000, [10])
    assert (plain.max_batch, plain.token_budget) == (256, 2048) and "vllm_limits" not in plain.summary_fields()


def test_a_given_budget_bounds_an_auto_sequence_limit_as_vllm_does():
    node, why = policy_node(cfg(arrival="offline", max_batch_size="auto", max_num_batched_tokens=100))
    assert (node["max_batch_size"], node["max_num_batched_tokens"]) == (100, 100)
    assert why.startswith("policy.max_batch_size=auto: vLLM V1's default for the offline LLM class")
    assert why.endswith("1024 sequences capped at the given budget of 100 tokens as vLLM caps them")
    node, _ = policy_node(cfg(gpu="rtx-4090", max_num_batched_tokens="auto"))
    assert (node["max_batch_size"], node["max_num_batched_tokens"]) == (256, 2048)


def test_auto_on_another_policy_is_one_line_and_exit_code_2(tmp_path):
    p = subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", "policy=orca",
                        "policy.max_batch_size=auto", f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "policy.max_batch_size=auto takes vLLM V1's default limits and applies to policy=vllm only" in p.stderr
