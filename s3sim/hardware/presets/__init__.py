"""Model presets as data: one YAML file per model, read by the simulator (`ModelSpec`) and the
executor (a `transformers` config) alike, so a model is described once.

Each file holds these keys:
- `config`: a Hugging Face `config.json`, with the keys the config class of its `model_type` takes,
  so a preset and a `config.json` are one way in (`ModelSpec.from_hf_dict` reads both);
- `n_params` (optional): the published parameter count; without it the count is estimated from the shape;
- `source`: where the numbers come from;
- `hf_names` (optional): the Hugging Face repository ids (lower case) a recorded run may name this model by
  (a vLLM run's meta.json `model`), so `s3sim-validate` finds the preset: one file per model, no list elsewhere.

YAML rather than JSON because the files need comments: why a number is what it is (GPT-J runs on
GPT-NeoX's code, say) belongs next to the number. Only plain scalars and mappings are used, so each
`config` is written out as JSON unchanged (write floats with a dot, 500000.0: PyYAML reads 5e5 as a
string). Reading needs PyYAML alone, not `transformers`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from s3sim.core.errors import ConfigError

PRESETS_DIR = Path(__file__).parent
_KEYS = {"config", "n_params", "source", "hf_names"}


@dataclass(frozen=True)
class Preset:
    """One preset file as written: the name is the file's."""

    name: str
    config: dict
    n_params: int | None
    source: str
    path: Path
    hf_names: tuple[str, ...] = ()


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"model preset {str(path)!r}: invalid YAML ({where}{what})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"model preset {str(path)!r}: cannot be read ({e})") from None


def read_preset(path: str | Path) -> Preset:
    """The preset in `path`, named after the file; a malformed file is a one-line ConfigError naming it."""
    path = Path(path)
    data = _load_yaml(path)
    bad = f"model preset {str(path)!r}:"
    if not isinstance(data, dict):
        raise ConfigError(f"{bad} expected a mapping with keys {', '.join(sorted(_KEYS))}")
    if unknown := sorted(set(data) - _KEYS):
        raise ConfigError(f"{bad} unknown key {unknown[0]!r} (valid: {', '.join(sorted(_KEYS))})")
    config, n_params, source = data.get("config"), data.get("n_params"), data.get("source", "")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ConfigError(f"{bad} 'config' must be a mapping (a Hugging Face config.json) with a model_type")
    if n_params is not None and (isinstance(n_params, bool) or not isinstance(n_params, int) or n_params <= 0):
        raise ConfigError(f"{bad} n_params must be a positive integer, got {n_params!r}")
    if not isinstance(source, str):
        raise ConfigError(f"{bad} source must be a string, got {source!r}")
    names = data.get("hf_names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n == n.strip().lower() and n for n in names):
        raise ConfigError(f"{bad} hf_names must be a list of lower-case Hugging Face ids, got {names!r}")
    return Preset(path.stem, config, n_params, source, path, tuple(names))
