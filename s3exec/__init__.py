"""s3exec: the simulator's scheduler, predictor and supervisor driving a real model with a real KV cache.

`models` loads the model, `kv_cache` holds the block pool, `attention` and `model_runner` run one batched
iteration over it, `engine` is the serving loop, `config`/`runner`/`cli` make it a Hydra app. `lab/` holds
the tools that measure it (`bench`, `profile`, `fidelity`, `gpu_check`, ...); the runtime never imports them.
"""
