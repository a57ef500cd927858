"""Counter-based randomness: splitmix64's finaliser, vectorised. A value that depends only on its inputs
(a seed, a request id, a prompt hash) needs no generator state, so draws never depend on the order in which
requests arrive or are predicted."""
from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function of a uint64 array, in place (arithmetic mod 2**64); returns it. Call it
    under `np.errstate(over="ignore")` when the array may be 0-d."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


MASK64 = (1 << 64) - 1


def mix64_int(x: int) -> int:
    """`mix64` of one value in Python integers (each product taken mod 2**64): the same bits, without numpy's
    cost per call."""
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def splitmix64(x) -> np.ndarray:
    """splitmix64 of uint64 values: the finaliser of `x + GOLDEN` (a new array)."""
    with np.errstate(over="ignore"):
        return mix64(np.array(x, dtype=np.uint64) + GOLDEN)
