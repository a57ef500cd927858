"""SmolLM2-135M-Instruct with its real weights (slow: loading takes about 15 s): real prompts through its
chat template, natural end-of-sequence, tight memory; the tokens are `model.generate`'s."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3exec.config import build_exec
from s3sim.cli import CONF_DIR

pytestmark = pytest.mark.slow


# s3 with the paper's supervisor (an overflow preempts; the default grows in place while memory is free, and
# these six requests leave it free), so that preempted requests' swapped caches are checked against generate
@pytest.mark.parametrize("policy, preemption, extra", [("s3", "swap", ["policy.in_place=false"]),
                                                       ("paged", "recompute", [])])
def test_natural_answers_match_generate(policy, preemption, extra):
    torch.set_num_threads(1)
    overrides = ["executor.model=smollm2", "workload=alpaca_rows", "executor.mode=natural", "num_requests=6",
                 "max_seq_len=48", "executor.kv_memory=12MiB", f"policy={policy}",
                 f"policy.preemption_mode={preemption}", "predictor.accuracy=0.3", "executor.progress=false", *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = OmegaConf.to_container(compose("exec", overrides=overrides), resolve=True)
    setup = build_exec(cfg)
    res = setup.executor.run(setup.requests, setup.prompts, setup.caps)
    model = setup.loaded.model
    model.set_attn_implementation("sdpa")
    with torch.inference_mode():
        for r, p in zip(res.requests, setup.prompts):
            want = model.generate(torch.tensor([p]), max_new_tokens=48, do_sample=False,
                                  attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
            assert res.outputs[r.id] == want, f"request {r.id}"
    assert res.scheduler.preemptions > 0
    assert any(len(o) < 48 for o in res.outputs.values())  # some answers end by themselves
