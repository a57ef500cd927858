"""Seeded train/test splits by prompt: a row's side depends only on its prompt text, the seed and the test
fraction, so duplicated prompts never straddle the split and the simulator can pick held-out rows without
a tokenizer or a model (the length tables carry each prompt's hash)."""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.core.hashing import splitmix64

SPLITS = ("all", "train", "test")
_M64 = (1 << 64) - 1


def holdout_mask(prompt_hashes, seed: int = 0, test_frac: float = 0.2) -> np.ndarray:
    """True where a row belongs to the test side. `prompt_hashes`: ints or 16-digit hex strings."""
    if not 0 < float(test_frac) < 1:
        raise ConfigError(f"test_frac must be between 0 and 1 (exclusive), got {test_frac!r}")
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
