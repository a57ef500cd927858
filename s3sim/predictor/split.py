"""Seeded train/test splits by prompt: a row's side depends only on its prompt text, the seed and the test
fraction, so duplicated prompts never straddle the split and the simulator can pick held-out rows without
a tokenizer or a model (the length tables carry each prompt's hash)."""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.hashing import splitmix64

SPLITS = ("all", "train", "test")
_M64 = (1 << 64) - 1


def check_split(seed, test_frac, prefix: str = "") -> None:
    """A split's seed and test fraction: a seed of 1.5 or true, or a fraction that is not a number, is refused
    rather than cast; `prefix` names the settings' group in that line (`workload.`)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{prefix}split_seed must be a non-negative integer, got {seed!r}")
    if isinstance(test_frac, bool) or not isinstance(test_frac, (int, float, np.number)) or not 0 < test_frac < 1:
        raise ConfigError(f"{prefix}test_frac must be a number between 0 and 1 (exclusive), got {test_frac!r}")


def holdout_mask(prompt_hashes, seed: int = 0, test_frac: float = 0.2) -> np.ndarray:
    """True where a row belongs to the test side. `prompt_hashes`: ints or 16-digit hex strings."""
    check_split(seed, test_frac)
    salt = splitmix64(int(seed) & _M64)
    hs = np.array([int(h, 16) if isinstance(h, str) else int(h) for h in prompt_hashes], dtype=np.uint64)
    u = splitmix64(hs ^ salt).astype(np.float64) / 2.0 ** 64
    return u < float(test_frac)


def select(mask_test: np.ndarray, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise ConfigError(f"workload.split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split == "all":
        return np.ones(len(mask_test), dtype=bool)
    return mask_test if split == "test" else ~mask_test
