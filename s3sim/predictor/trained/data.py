"""Training and test rows from any prompt/response file: prompt text, output tokens, and the seeded split
by prompt that the simulator's text workloads use too (`s3sim.predictor.split`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.predictor.split import holdout_mask
from s3sim.workload.text import pair_notes, prompt_hash, read_pairs


def labelled_rows(path, tokenizer, split_seed: int = 0, test_frac: float = 0.2, limit: int | None = None,
                  notes: list | None = None):
    """DataFrame of key, prompt, output_tokens, test (bool; every row when `test_frac` is 1): one row per
    pair in the file. `tokenizer` is a tokenizer or a name for `load_tokenizer` (loaded only once the file
    has been read); it counts each response, unless the row gives its `output_tokens`. `notes`: given, it gets
    what a reader should know of the rows (`pair_notes`: conversations skipped, empty prompts kept)."""
    from s3sim.workload.tokenizer import count_tokens, load_tokenizer

    skipped = []
    pairs = read_pairs(Path(path), skipped)
    if limit is not None:
        pairs = pairs[:int(limit)]
    if notes is not None:
        notes += pair_notes(path, pairs, skipped)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    df = pd.DataFrame({"key": [p.key for p in pairs], "prompt": [p.prompt for p in pairs]})
    df["output_tokens"] = count_tokens(tokenizer, [p.response for p in pairs])
    given = [p.output_tokens is not None for p in pairs]
    if any(given):  # lengths the generating model counted itself (its end-of-sequence token included) win
        df.loc[given, "output_tokens"] = [p.output_tokens for p in pairs if p.output_tokens is not None]
    if float(test_frac) == 1:  # every row is scored: a file the predictor never trained on
        df["test"] = True
        return df
    df["test"] = holdout_mask([prompt_hash(p) for p in df["prompt"]], split_seed, test_frac)
    if df["test"].all() or not df["test"].any():
        raise ConfigError(f"{path}: the split left one side empty ({len(df)} rows, test_frac {test_frac}); "
                          f"use more rows or another test fraction")
    return df
