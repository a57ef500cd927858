"""The Hydra config groups and their choices: the files of `conf/<group>/`, and every model and GPU preset
stored as a choice of its group (`model=<preset>`, `gpu=<preset>`) from the preset files themselves, so that
adding a model or a GPU is its preset file alone (`s3sim/hardware/presets/`, `s3sim/hardware/gpu_presets/`).

A preset's group entry holds the settings a run may change around it:
- `model`: `name` (the preset, or a path to a Hugging Face config.json) and `dtype` (float16 | bfloat16 |
  float32 overrides the config's torch_dtype, weights and KV; null keeps it);
- `gpu`: `name`, `count` (GPUs in tensor parallel: memory and bandwidth add up, all-reduces cost, see
  latency.all_reduce), `pipeline_stages` (stages of `count` GPUs each; latency=datasheet prices them),
  `activation_reserve_frac` (memory kept for activations and the runtime, not KV), and `data_parallel` with
  `expert_parallel` (a mixture of experts served by that many one-GPU ranks stepping together, its experts split
  over them, as vLLM's data_parallel_size with enable_expert_parallel; latency=operators with a moe.csv).
"""
from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # the Hydra config groups
GPU_ENTRY = {"count": 1, "pipeline_stages": 1, "activation_reserve_frac": 0.1, "data_parallel": 1,
             "expert_parallel": False}
MODEL_ENTRY = {"dtype": None}
_registered = False


def register_presets() -> None:
    """Store every model and GPU preset as a choice of its config group (once per process)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from s3sim.hardware.gpus import GPU_PRESETS
    from s3sim.hardware.models import MODEL_PRESETS

    store = ConfigStore.instance()
    for name in GPU_PRESETS:
        store.store(group="gpu", name=name, node={"name": name, **GPU_ENTRY})
    for name in MODEL_PRESETS:
        store.store(group="model", name=name, node={"name": name, **MODEL_ENTRY})
    _registered = True


def config_groups(conf_dir: str = CONF_DIR) -> set[str]:
    """Every config group: the folders of `conf_dir` (Hydra's own settings aside) and the groups presets are
    stored in."""
    return {p.name for p in Path(conf_dir).iterdir() if p.is_dir() and p.name != "hydra"} | {"gpu", "model"}


def group_choices(group: str, conf_dir: str = CONF_DIR) -> list[str]:
    """The valid values of `group`: its files in `conf_dir`, and its stored presets."""
    folder = Path(conf_dir) / group
    files = {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()
    if group in ("gpu", "model"):
        from s3sim.hardware.gpus import GPU_PRESETS
        from s3sim.hardware.models import MODEL_PRESETS

        files |= set(GPU_PRESETS if group == "gpu" else MODEL_PRESETS)
    return sorted(files)


def group_entry(group: str, name: str) -> dict:
    """The config of the choice `group=name` as Hydra composes it (its file, or its stored preset)."""
    from omegaconf import OmegaConf

    from s3sim.core.errors import ConfigError

    valid = group_choices(group)
    if name not in valid:
        raise ConfigError(f"{group}.name '{name}' is unknown; valid: {', '.join(valid)}")
    path = Path(CONF_DIR) / group / f"{name}.yaml"
    if path.is_file():
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {"name": name, **(GPU_ENTRY if group == "gpu" else MODEL_ENTRY)}
