import json
from dataclasses import replace
from pathlib import Path

import pytest

from s3sim.core.errors import ConfigError
from s3sim.hardware.capacity import kv_capacity_tokens
from s3sim.hardware.gpus import GPU_PRESETS, GpuSpec, get_gpu
from s3sim.hardware.models import MODEL_PRESETS, ModelSpec, get_model, preset_spec
from s3sim.hardware.presets import preset_names, preset_path, read_preset
from s3sim.latency import RooflineLatency

LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


def write_config(tmp_path, cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path / "config.json"


def test_preset_names():
    assert set(MODEL_PRESETS) == {"gpt-3-175b", "gpt-j-6b", "gpt-neox-20b", "llama-2-7b", "llama-2-13b", "llama-3-8b",
                                  "llama-3.1-8b", "llama-65b", "opt-13b", "opt-30b", "qwen3-30b-a3b", "qwen3-30b-a3b-instruct-2507", "qwen3-32b",
                                  "smollm2-135m", "tiny-llama"}
    assert {"a100-40gb-pcie", "a100-40gb-sxm", "a100-80gb-pcie", "a100-80gb-sxm", "a40", "h100-sxm", "h200",
            "rtx-4090", "rtx-pro-6000"} <= set(GPU_PRESETS)
    assert all(m.source for m in MODEL_PRESETS.values())
    assert all(g.source and g.calibration for g in GPU_PRESETS.values())


def test_every_preset_is_a_choice_of_its_config_group_from_its_file_alone():
    """gpu=<preset> and model=<preset> compose from the preset files (no conf/gpu or conf/model file)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from s3sim.config import CONF_DIR
    from s3sim.config_groups import group_choices

    assert not list(Path(CONF_DIR, "gpu").glob("*.yaml")) and not list(Path(CONF_DIR, "model").glob("*.yaml"))
    assert group_choices("gpu") == sorted(GPU_PRESETS) and group_choices("model") == sorted(MODEL_PRESETS)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for g in GPU_PRESETS:
            cfg = OmegaConf.to_container(compose("config", overrides=[f"gpu={g}", "model=llama-3.1-8b"]))
            assert cfg["gpu"] == {"name": g, "count": 1, "pipeline_stages": 1, "activation_reserve_frac": 0.1,
                                  "data_parallel": 1, "expert_parallel": False}
            assert cfg["model"] == {"name": "llama-3.1-8b", "dtype": None}


def test_a_gpu_preset_is_one_file_and_a_bad_one_is_one_line(tmp_path):
    import yaml

    from s3sim.hardware.gpus import PRESETS_DIR, read_gpu_preset

    d = yaml.safe_load((PRESETS_DIR / "h100-sxm.yaml").read_text())
    d["device_names"] = ["nvidia h100 nvl"]
    (tmp_path / "h100-nvl.yaml").write_text(yaml.safe_dump(d))
    spec, names = read_gpu_preset(tmp_path / "h100-nvl.yaml")
    assert spec.name == "h100-nvl" and names == ["nvidia h100 nvl"]
    assert spec.peak_flops == GPU_PRESETS["h100-sxm"].peak_flops and spec.launch_s == GPU_PRESETS["h100-sxm"].launch_s
    del d["calibration"]["launch_s"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=r"bad.yaml: launch_s is missing"):
        read_gpu_preset(tmp_path / "bad.yaml")
    for copy, words in ((None, "copy_efficiency is missing"),
                        (1.5, r"calibration.copy_efficiency must be in \(0, 1\], got 1.5")):
        d = yaml.safe_load((PRESETS_DIR / "h100-sxm.yaml").read_text())
        d["calibration"].pop("copy_efficiency")
        if copy is not None:
            d["calibration"]["copy_efficiency"] = copy
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
        with pytest.raises(ConfigError, match=r"bad.yaml: " + words):
            read_gpu_preset(tmp_path / "bad.yaml")
    d = dict(yaml.safe_load((PRESETS_DIR / "h100-sxm.yaml").read_text()), device_names=["NVIDIA H100"])
    (tmp_path / "upper.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="lower-case device names"):
        read_gpu_preset(tmp_path / "upper.yaml")


def test_kv_bytes_per_token():
    assert get_model("gpt-j-6b").kv_bytes_per_token == 458752
    assert get_model("llama-3-8b").kv_bytes_per_token == 131072  # GQA: 8 KV heads of 32
    assert get_model("llama-2-7b").kv_bytes_per_token == 524288


def test_derived_properties():
    m = get_model("gpt-j-6b")
    assert m.weight_bytes == m.n_params * 2
    assert m.q_dim == 4096


def test_capacity_gpt_j_on_a100_80gb():
    m = get_model("gpt-j-6b")
    tokens = kv_capacity_tokens(m, get_gpu("a100-80gb-pcie"))
    # KV per token: 28 layers x (K and V) x 4,096 x 2 bytes = 458,752 bytes; weights 6,053,381,344 x 2 bytes.
    assert m.kv_bytes_per_token == 28 * 2 * 4096 * 2 and m.weight_bytes == 6_053_381_344 * 2
    # (80 GiB x 0.9 - 12,106,762,688 B) // 458,752 B = (77,309,411,328 - 12,106,762,688) // 458,752 = 142,130
    assert tokens == (80 * 2**30 * 9 // 10 - 12_106_762_688) // 458_752 == 142_130
    assert tokens == kv_capacity_tokens(get_model("gpt-j-6b"), get_gpu("a100-80gb-sxm"))


def test_capacity_grows_with_gpus_and_shrinks_with_reserve():
    m, g = get_model("llama-2-13b"), get_gpu("a100-40gb-pcie")
    one = kv_capacity_tokens(m, g)
    assert kv_capacity_tokens(m, g, num_gpus=2) > 2 * one
    assert kv_capacity_tokens(m, g, activation_reserve_bytes=2 * 10**9) < one
    assert kv_capacity_tokens(m, g, activation_reserve_frac=0.0) > one


def test_tensor_parallel_beyond_the_kv_heads_replicates_them():
    """Llama 3.1 8B has 8 KV heads: over 16 tensor-parallel GPUs each holds one (vLLM replicates them), so a
    token takes twice its KV bytes in all, and the 16 GPUs hold little more KV than 8 do."""
    m, g = get_model("llama-3.1-8b"), get_gpu("a100-80gb-sxm")
    assert m.n_kv_heads == 8
    free = lambda n: n * g.memory_bytes * 9 // 10 - m.weight_bytes  # noqa: E731
    assert kv_capacity_tokens(m, g, num_gpus=8, tensor_parallel=8) == free(8) // m.kv_bytes_per_token
    assert kv_capacity_tokens(m, g, num_gpus=16, tensor_parallel=16) == free(16) // (2 * m.kv_bytes_per_token)
    # two pipeline stages of 8: each stage's GPUs split the heads without replicating them
    assert kv_capacity_tokens(m, g, num_gpus=16, tensor_parallel=8) == free(16) // m.kv_bytes_per_token


def test_model_that_does_not_fit():
    with pytest.raises(ConfigError, match="does not fit") as e:
        kv_capacity_tokens(get_model("opt-30b"), get_gpu("a100-40gb-pcie"))
    assert "opt-30b" in str(e.value) and "a100-40gb-pcie" in str(e.value) and "\n" not in str(e.value)
    assert kv_capacity_tokens(get_model("opt-30b"), get_gpu("a100-40gb-pcie"), num_gpus=2) > 0


@pytest.mark.parametrize("kwargs", [{"activation_reserve_frac": 1.0}, {"activation_reserve_frac": -0.1},
                                    {"activation_reserve_bytes": -1}, {"num_gpus": 0},
                                    {"num_gpus": 2, "tensor_parallel": 3}, {"tensor_parallel": 0}])
def test_capacity_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        kv_capacity_tokens(get_model("tiny-llama"), get_gpu("h100-sxm"), **kwargs)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ConfigError, match="llama-3-8b") as e:
        get_model("llama-9000")
    assert "gpt-j-6b" in str(e.value)
    with pytest.raises(ConfigError, match="h100-sxm") as e:
        get_gpu("v100")
    assert "a100-40gb-pcie" in str(e.value)


def test_spec_validation():
    with pytest.raises(ConfigError, match="n_layers"):
        ModelSpec("bad", 10, 0, 64, 4, 4, 16, 256, 512)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        ModelSpec("bad", 10, 2, 64, 4, 3, 16, 256, 512)
    with pytest.raises(ConfigError, match="mem_bandwidth"):
        GpuSpec("bad", 1, 0.0, 1.0, 1.0)


def test_from_hf_config_llama2_7b(tmp_path):
    path = write_config(tmp_path, LLAMA2_7B_CONFIG)
    for arg in (path, tmp_path, str(path)):
        m = ModelSpec.from_hf_config(arg)
        assert m.kv_bytes_per_token == 524288
        assert m.n_params == pytest.approx(6.74e9, rel=0.02)
        assert (m.n_layers, m.hidden_size, m.n_heads, m.head_dim, m.max_context) == (32, 4096, 32, 128, 4096)
    assert get_model(str(tmp_path)).n_params == m.n_params


def test_from_hf_config_gqa_and_gpt_style_keys(tmp_path):
    llama3 = dict(LLAMA2_7B_CONFIG, num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                  max_position_embeddings=8192, torch_dtype="bfloat16")
    m = ModelSpec.from_hf_config(write_config(tmp_path, llama3))
    assert m.kv_bytes_per_token == 131072
    assert m.n_params == pytest.approx(8.03e9, rel=0.02)

    gptj = {"model_type": "gptj", "n_layer": 28, "n_embd": 4096, "n_head": 16, "n_inner": None,
            "vocab_size": 50400, "n_positions": 2048, "tie_word_embeddings": False, "torch_dtype": "float32"}
    m = ModelSpec.from_hf_config(write_config(tmp_path, gptj))
    assert m.dtype_bytes == 4
    assert m.kv_bytes_per_token == 2 * 458752
    assert m.n_params == pytest.approx(6.05e9, rel=0.02)

    opt = {"model_type": "opt", "num_hidden_layers": 40, "hidden_size": 5120, "num_attention_heads": 40,
           "ffn_dim": 20480, "vocab_size": 50272, "max_position_embeddings": 2048}
    assert ModelSpec.from_hf_config(write_config(tmp_path, opt)).n_params == pytest.approx(12.85e9, rel=0.02)


def test_from_hf_config_errors(tmp_path):
    cfg = dict(LLAMA2_7B_CONFIG)
    del cfg["num_attention_heads"]
    with pytest.raises(ConfigError, match="num_attention_heads"):
        ModelSpec.from_hf_config(write_config(tmp_path, cfg))
    with pytest.raises(ConfigError, match="no such file"):
        ModelSpec.from_hf_config(tmp_path / "missing.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        ModelSpec.from_hf_config(tmp_path)
    with pytest.raises(ConfigError, match="torch_dtype"):
        ModelSpec.from_hf_config(write_config(tmp_path, dict(LLAMA2_7B_CONFIG, torch_dtype="int3")))


@pytest.mark.parametrize("name", preset_names())
def test_a_preset_is_its_config_json(tmp_path, name):
    """A preset file and its config written out as a config.json give the same model: one way in. The
    published count, where there is one, replaces the estimate, which it must agree with (norms and
    biases, left out of the estimate, are under 0.1%)."""
    preset = read_preset(preset_path(name))
    folder = tmp_path / name
    folder.mkdir()
    from_json = ModelSpec.from_hf_config(write_config(folder, preset.config))
    assert MODEL_PRESETS[name] == replace(from_json, n_params=preset.n_params or from_json.n_params,
                                          source=preset.source, assumed=())
    # a preset's config gives its sizes; where it states no dtype, the file read alone says float16 was assumed
    assert from_json.assumed == (() if "torch_dtype" in preset.config else ("torch_dtype = float16",))
    assert from_json.n_params == pytest.approx(MODEL_PRESETS[name].n_params, rel=1e-3)
    assert get_model(name) is MODEL_PRESETS[name]


@pytest.mark.parametrize("text, message", [
    ("config: [unclosed", "invalid YAML"),
    ("- a list", "expected a mapping"),
    ("source: x\nconfig: {model_type: llama}\nparams: 7", "unknown key 'params'"),
    ("source: x", "'config' must be a mapping"),
    ("config: {model_type: llama}\nn_params: -1", "n_params must be a positive integer"),
    ("config: {model_type: llama}\nhf_names: [Meta-Llama/X]", "hf_names must be a list of lower-case"),
    ("config: {model_type: llama}\nhf_names: meta-llama/x", "hf_names must be a list of lower-case"),
    ("config: {model_type: llama, hidden_size: 64, num_hidden_layers: 2, vocab_size: 256,"
     " max_position_embeddings: 512}", "missing key num_attention_heads"),
])
def test_a_malformed_preset_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        preset_spec(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_recorded_run_finds_its_model_preset_by_hugging_face_id():
    """A run's meta.json names its model by Hugging Face id; the preset file lists the ids it answers to."""
    from s3sim.hardware.models import HF_NAMES, preset_of_hf_name
    assert preset_of_hf_name("Qwen/Qwen3-32B") == "qwen3-32b"
    assert preset_of_hf_name(" meta-llama/Llama-3.1-8B ") == "llama-3.1-8b"
    assert preset_of_hf_name("someone/unknown") is None and preset_of_hf_name(None) is None
    assert set(HF_NAMES.values()) <= set(MODEL_PRESETS)


def test_a_mixture_of_experts_holds_every_expert_and_computes_the_routed_ones(tmp_path):
    """Qwen3-30B-A3B: 30.5B parameters in memory, 3.3B per token (the model card's figures); a decode step of
    one token reads its 8 experts per layer, a batch of hundreds reads nearly all 128."""
    m = get_model("qwen3-30b-a3b")
    assert (m.n_experts, m.experts_per_token) == (128, 8)
    assert round(m.n_params / 1e9, 1) == 30.5 and round(m.active_params / 1e9, 1) == 3.4
    one, many = m.weight_bytes_read(1), m.weight_bytes_read(512)
    assert one < 0.15 * m.weight_bytes and m.weight_bytes * 0.99 < many <= m.weight_bytes
    dense = (m.n_params - m.expert_params) * m.dtype_bytes
    assert one == pytest.approx(dense + m.expert_params * m.dtype_bytes * 8 / 128)
    gpu = get_gpu("h100-sxm")
    lat = RooflineLatency(m, gpu)
    flops_bound = RooflineLatency(m, gpu)._compute_s(4096, 0, 0, 0)
    assert flops_bound == pytest.approx(2 * m.active_params * 4096 / (gpu.peak_flops * 0.6))
    assert lat.iteration_time(0, 0, 1, 1000) < 0.2 * RooflineLatency(get_model("qwen3-32b"), gpu).iteration_time(0, 0, 1, 1000)
    cfg = json.loads(json.dumps({"model_type": "qwen2_moe", "hidden_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 128,
                                 "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                 "shared_expert_intermediate_size": 64}))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="shared experts"):
        ModelSpec.from_hf_config(tmp_path / "config.json")
    cfg.pop("shared_expert_intermediate_size")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    small = ModelSpec.from_hf_config(tmp_path / "config.json")
    assert small.expert_params == 2 * 4 * 3 * 64 * 32 and small.active_params < small.n_params
    refused = "decoder_sparse_step must be a positive"
    for step, message in ((1, None), (2, "dense layers among MoE layers"), (0, refused), (1.5, refused)):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, "decoder_sparse_step": step}))
        if message is None:
            assert ModelSpec.from_hf_config(tmp_path / "config.json").expert_params == small.expert_params
        else:
            with pytest.raises(ConfigError, match=message):
                ModelSpec.from_hf_config(tmp_path / "config.json")


def test_mixtral_experts_are_gated_mlps():
    """Mixtral's config names its experts `num_local_experts`; counted as gated MLPs, the shape gives the
    published 46.7B parameters, 12.9B active."""
    cfg = {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
           "vocab_size": 32000, "max_position_embeddings": 32768}
    m = ModelSpec.from_hf_dict(cfg, "mixtral-8x7b")
    assert round(m.n_params / 1e9, 1) == 46.7 and round(m.active_params / 1e9, 1) == 12.9


def test_the_leave_one_out_fit_never_uses_the_gpu_it_prices():
    """--fit-from others: the mean of every other measured GPU's fit, the priced GPU's own fit left out."""
    from s3sim.hardware.gpus import GPU_PRESETS, leave_one_out_fit, measured_fits
    dense, attention = measured_fits()
    assert {g.name for g in dense} >= {"a100-80gb-sxm", "a40", "rtx-4090", "rtx-pro-6000"}
    assert {g.name for g in attention} == {"rtx-4090", "rtx-pro-6000"}  # the A100/A40 profiles have no attention
    for name in ("rtx-4090", "rtx-pro-6000"):
        own = GPU_PRESETS[name]
        loo = leave_one_out_fit(own)
        others = [g for g in dense if g.name != name]
        assert loo.compute_efficiency == pytest.approx(sum(g.compute_efficiency for g in others) / len(others))
        other = next(g for g in attention if g.name != name)
        assert loo.attention_decode_efficiency == other.attention_decode_efficiency
        assert name not in loo.calibration.split("none of them")[0]
        assert loo.mem_bandwidth == own.mem_bandwidth  # the datasheet stays the priced GPU's
