"""Prompt tokens for the executor's requests.

Text workloads (`sharegpt_pairs`, `alpaca_eval`, `alpaca_rows`, `smollm2_greedy`) carry real prompts: each sampled row's text
is found by its key in the shared data and tokenized by the served model's tokenizer (through its chat
template when it has one), so an instruct model answers as it would in service. Length-only workloads
(`alpaca`, `sharegpt`, `trace`) get seeded random token ids of each request's prompt length.
"""
from __future__ import annotations

import numpy as np

from s3sim.core.errors import ConfigError
from s3sim.workload.lengths import TEXT_SOURCES, load_prompts

TEXT_WORKLOADS = tuple(TEXT_SOURCES)


def synthetic_prompts(lengths, vocab_size: int, seed: int, avoid=()) -> list[list[int]]:
    """Random token ids (seeded) of the given lengths, leaving out the lowest ids (special tokens in most
    vocabularies) and `avoid` (end-of-sequence)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    low = min(100, vocab_size // 4)
    ids = np.random.default_rng([int(seed), 0x5E3]).integers(low, vocab_size, size=int(lengths.sum()))
    for a in avoid:
        ids[ids == a] = low if a != low else low + 1
    return [chunk.tolist() for chunk in np.split(ids, np.cumsum(lengths)[:-1])]


def encode(tokenizer, text: str, chat_template: bool) -> list[int]:
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def text_prompts(workload, wl, idx, tokenizer, chat_template: bool = True) -> list[list[int]]:
    """Token ids of the sampled rows' prompts (`workload`: the run's `s3sim.spec.WorkloadSpec`)."""
    name = workload.name
    if tokenizer is None:
        raise ConfigError(f"workload={name} has real prompts, which need a model with a tokenizer "
                          f"(executor.model=smollm2 or a checkpoint folder); random-weight models take the "
                          f"length-only workloads (alpaca, sharegpt, trace)")
    if getattr(wl, "keys", None) is None:
        raise ConfigError(f"workload {name!r} has no row keys to find its prompts by")
    generator = wl.name.split(":", 1)[1] if ":" in wl.name else None
    texts = load_prompts(name, list(wl.keys[np.asarray(idx)]), generator, workload.data_dir)
    return [encode(tokenizer, t, chat_template) for t in texts]
