"""Which prompt tokens requests share: the `Request.prefix` of each row, read by a prefix cache.

Two sources, both explicit:
- a trace's block hashes (Mooncake's `hash_ids`: one per `workload.hash_block_tokens` prompt tokens). Each is
  chained to those before it, so a block is shared only where the whole prompt up to it is (prefix caching
  reuses prefixes, not loose blocks);
- `shared_prefix`: every prompt begins with one of `groups` prefixes of `tokens` tokens (a system prompt),
  drawn uniformly with the run's seed and prepended to the workload's prompts.
"""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import ConfigError


class HashChains:
    """Chain ids of hash sequences: equal ids mean equal hashes from the start (interned, so a chain of n
    blocks costs n dictionary entries, not n^2)."""

    def __init__(self):
        self.ids: dict = {}

    def chain(self, hashes) -> tuple:
        out, parent = [], -1
        for h in hashes:
            parent = self.ids.setdefault((parent, h), len(self.ids))
            out.append(parent)
        return tuple(out)


def check_hash_ids(value, prompt_tokens: int, unit: int, where: str) -> list:
    """A row's `hash_ids`: a list of integers or strings no longer than its prompt's blocks of `unit` tokens."""
    if not isinstance(value, list) or not all(isinstance(h, (int, str)) and not isinstance(h, bool) for h in value):
        raise ConfigError(f"{where}: hash_ids must be a list of integers or strings, got {str(value)[:40]!r}")
    blocks = -(-prompt_tokens // unit)
    if len(value) > blocks:
        raise ConfigError(f"{where}: {len(value)} hash_ids cover more than the prompt's {prompt_tokens} tokens at "
                          f"{unit} tokens each ({blocks} blocks); set workload.hash_block_tokens to the trace's "
                          f"block size")
    return value


def shared_prefix(prompt: np.ndarray, tokens: int, groups: int, seed: int) -> tuple[np.ndarray, list]:
    """Prompts `tokens` longer, each beginning with one of `groups` shared prefixes (seeded), and the
    `Request.prefix` of each."""
    group = np.random.default_rng([int(seed), 0x5F]).integers(groups, size=len(prompt))
    prefixes: dict = {}  # one per group drawn (not per group configured: there may be far more groups than requests)
    return np.asarray(prompt) + tokens, [prefixes.setdefault(g, (tokens, (("system", g),))) for g in group.tolist()]
