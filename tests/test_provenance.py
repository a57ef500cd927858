"""A measured profile prices only the model and GPU it measured: another is one line naming both, never a
silently borrowed timing (GPT-J on an A100 priced with Llama 3.1 8B's RTX 4090 operators, or with the tiny
CPU model's profile)."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from s3sim.cli import CONF_DIR
from s3sim.cluster.build import build
from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import get_gpu, preset_of_device
from s3sim.hardware.models import get_model
from s3sim.latency.provenance import check_profile

ROOT = Path(__file__).resolve().parents[1]
RUN4090 = ROOT.parent / "shared" / "data" / "vllm_runs" / "rtx4090-llama-3.1-8b" / "profile"
TINY = ROOT / "results" / "profiles" / "tiny-llama-cpu.csv"


def cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=["num_requests=20", *overrides]), resolve=True)


@pytest.mark.skipif(not RUN4090.is_dir(), reason="needs the shared data folder")
def test_operators_refuse_another_model_and_another_gpu_and_take_their_own():
    with pytest.raises(ConfigError, match=r"measured meta-llama/Llama-3.1-8B .* not the shape of model=gpt-j-6b"):
        build(cfg("latency=operators", f"latency.path={RUN4090}"))
    with pytest.raises(ConfigError, match=r"measured on NVIDIA GeForce RTX 4090 \(gpu=rtx-4090\), not gpu=a100-80gb"):
        build(cfg("latency=operators", f"latency.path={RUN4090}", "model=llama-3.1-8b"))
    assert build(cfg("latency=operators", f"latency.path={RUN4090}", "model=llama-3.1-8b", "gpu=rtx-4090"))


def test_profiled_refuses_a_profile_of_another_model():
    with pytest.raises(ConfigError, match=r"measured tiny-llama, not model=gpt-j-6b \(n_layers 2 vs 28"):
        build(cfg("latency=profiled", f"latency.path={TINY}"))
    assert build(cfg("latency=profiled", f"latency.path={TINY}", "model=tiny-llama", "max_seq_len=256"))


def test_a_tensor_parallel_shard_matches_its_model_by_ratios():
    """A TP profile overrides a shard's shape (Qwen3-32B at tp2: 32 heads, 4 KV heads, 12,800 wide):
    the ratios are the whole model's, so it matches Qwen3-32B and not Llama 3.1 8B."""
    meta = {"model": "Qwen/Qwen3-32B", "gpu": "NVIDIA RTX PRO 6000 Blackwell Server Edition",
            "engine_effective": {"hf_overrides": {"num_attention_heads": 32, "num_key_value_heads": 4,
                                                  "intermediate_size": 12800}}}
    check_profile(meta, get_model("qwen3-32b"), get_gpu("rtx-pro-6000"), "latency=operators", "p")
    with pytest.raises(ConfigError, match="not the shape of model=llama-3.1-8b"):
        check_profile(meta, get_model("llama-3.1-8b"), get_gpu("rtx-pro-6000"), "latency=operators", "p")


def test_what_a_profile_does_not_record_cannot_be_compared():
    assert preset_of_device("cpu") is None and preset_of_device(None) is None
    assert preset_of_device(" NVIDIA H200 ") == "h200"
    assert preset_of_device("NVIDIA A40") == "a40"  # torch.cuda.get_device_name's word for it
    check_profile({}, get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie"), "latency=operators", "p")
    check_profile({"gpu": "cpu"}, get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie"), "latency=operators", "p")
