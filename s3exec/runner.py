"""Execute one configuration and write its results as the simulator does (same summary and per-request
schema), plus `tokens.csv`: every generated token with the time it appeared."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from s3sim.metrics.summary import request_records, summarize
from s3sim.config import rows_used
from s3sim.runner import run_fields, write_results


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return device


def token_table(result, tokenizer=None) -> pd.DataFrame:
    """Every generated token with the time it appeared, and its text when the model has a tokenizer."""
    rows = [(i, k, tok, ts) for i, toks in result.outputs.items()
            for k, (tok, ts) in enumerate(zip(toks, result.token_times[i]))]
    table = pd.DataFrame(rows, columns=["id", "index", "token", "time"])
    if tokenizer is not None:
        vocab = {int(t): tokenizer.decode([int(t)]) for t in set(table.token.tolist())}
        table["text"] = table.token.map(vocab)
    return table


def output_texts(result, tokenizer) -> pd.DataFrame:
    """Each request's whole generated text (a person reads this; tokens.csv has it token by token)."""
    return pd.DataFrame({"id": list(result.outputs),
                         "text": [tokenizer.decode(list(map(int, t))) for t in result.outputs.values()]})


def exec_notes(row: dict, cfg) -> list[str]:
    """Every line `s3exec` prints about what it changed in the workload: the simulator's notes, and how many
    prompts it cut to their last `executor.max_prompt_len` tokens (`clipped_prompts` in the summary)."""
    from s3sim.config import run_notes

    notes = run_notes({**row, "clipped_prompts": 0})  # the simulator's note on it speaks of its own cut
    if row.get("clipped_prompts"):
        limit = (cfg.get("executor") or {}).get("max_prompt_len")
        notes.append(f"note: {row['clipped_prompts']:,} prompts were cut to their last executor.max_prompt_len={limit} "
                     f"tokens (clipped_prompts); executor.max_prompt_len=null keeps them whole")
    from s3exec.models import WEIGHT_FILES, has_weights

    folder = Path(str((cfg.get("executor") or {}).get("model") or ""))
    if str(folder) not in ("", ".") and folder.is_dir() and not has_weights(folder):
        notes.append(f"note: executor.model {str(folder)!r} holds a config.json and no weight file "
                     f"({', '.join(WEIGHT_FILES)}): its model ran with random weights (seed {cfg.get('seed', 0)})")
    return notes


def run_exec(cfg, out_dir: str | Path | None = None, progress: bool = False, write_iterations: bool = False,
             write_tokens: bool = True, loaded=None):
    """Execute `cfg`; return (summary row, result). Files go to `out_dir` if given, summary.csv last;
    `loaded` reuses a model already loaded from the same source."""
    from s3exec.config import build_exec

    setup = build_exec(cfg, progress=progress, loaded=loaded)
    t0 = time.perf_counter()
    result = setup.executor.run(setup.requests, setup.prompts, setup.caps)
    wall = time.perf_counter() - t0
    records = request_records(result.requests)
    row = summarize(result, setup.slo, records)
    ex = cfg["executor"]
    row.update({
        "model": setup.loaded.name, "gpu": device_name(str(ex.get("device", "cpu"))), **run_fields(cfg, row["policy"]),
        # natural mode serves the model's own lengths: the outputs cut are the generations that reached the cap
        # (the workload's reference lengths, which fixed mode serves, are not what ran)
        "clipped_outputs": (int((records.generated >= np.asarray(setup.caps)[records.id.to_numpy()]).sum())
                            if ex.get("mode", "fixed") == "natural" else setup.clipped_outputs),
        "workload_rows": setup.workload_rows,
        "context_clipped": 0,  # the executor refuses a prompt + max_seq_len beyond the context instead
        "dropped_requests": 0,  # it serves every request: a prompt too long is cut (clipped_prompts) or refused
        "prefix_blocks": 0,  # the executor replays text or synthetic prompts, not traces of block hashes
        "shared_prefix_tokens": 0, "shared_prefix_groups": 1, "prefix_caching": False,  # it shares no KV
        "model_dtype_bytes": setup.loaded.dtype.itemsize, "model_assumed": "",  # transformers reads the config
        "rows_used": rows_used(len(setup.requests), setup.workload_rows),
        "engine": "exec", "mode": ex.get("mode", "fixed"), "dtype": str(setup.loaded.dtype).removeprefix("torch."),
        "kv_bytes": setup.kv_bytes, "clipped_prompts": setup.clipped_prompts,
        # whole blocks of the cache over the budget: above 1 by at most the partial blocks a token pool's
        # requests leave (see s3exec.kv_cache)
        "peak_kv_used_frac": result.peak_kv_tokens / result.kv_capacity_tokens, "wall_s": wall,
        **({"zero_length_rows": setup.zero_length_rows} if setup.zero_length_rows else {}),
    })
    if out_dir is not None:
        tok = setup.loaded.tokenizer
        extra = {"tokens.csv": token_table(result, tok)} if write_tokens else {}
        if write_tokens and tok is not None:
            extra["outputs.csv"] = output_texts(result, tok)
        write_results(out_dir, records, row, result.log.frame() if write_iterations else None, extra)
    return row, result
