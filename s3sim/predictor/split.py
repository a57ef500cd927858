"""Seeded train/test splits by prompt: a row's side depends only on its prompt text, the seed and the test
fraction, so duplicated prompts never straddle the split and the simulator can pick held-out rows without
a tokenizer or a model (the length tables carry each prompt's hash)."""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import ConfigError

SPLITS = ("all", "train", "test")
_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def holdout_mask(prompt_hashes, seed: int = 0, test_frac: float = 0.2) -> np.ndarray:
    """True where a row belongs to the test side. `prompt_hashes`: ints or 16-digit hex strings."""
    if not 0 < float(test_frac) < 1:
        raise ConfigError(f"test_frac must be between 0 and 1 (exclusive), got {test_frac!r}")
    salt = _mix(int(seed) & _M64)
    hs = [int(h, 16) if isinstance(h, str) else int(h) for h in prompt_hashes]
    u = np.array([_mix(h ^ salt) for h in hs], dtype=np.float64) / 2.0 ** 64
    return u < float(test_frac)


def select(mask_test: np.ndarray, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise ConfigError(f"workload.split must be one of {', '.join(SPLITS)}; got {split!r}")
    if split == "all":
        return np.ones(len(mask_test), dtype=bool)
    return mask_test if split == "test" else ~mask_test
