"""Per-operator latency from a vLLM operator profile: measured points come back exactly, a grid with gaps
is filled along its lines, a batch is priced operator by operator, and a bad profile is one clear line."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s3sim.core.errors import ConfigError
from s3sim.core.output import SchedulerOutput
from s3sim.core.request import Request
from s3sim.hardware.models import get_model
from s3sim.latency.operators import ONCE, PER_LAYER, PER_SEQUENCE, OperatorLatency, profile_folder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "vllm_runs"
MODEL = get_model("tiny-llama")  # 2 layers


def att_us(c, kp, n, kd):
    """A made-up attention time, linear in each coordinate on every cell of the grid (so multilinear
    interpolation reproduces it exactly) with a mixing term (a mixed batch is slower than its parts)."""
    return 5.0 + 0.5 * c + 0.01 * c * kp / 16 + 0.2 * n * kd / 16 + 0.05 * c * n


def write_profile(folder: Path, drop=()):
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [1, 4, 16, 64]
    pd.DataFrame([(op, t, 1.0 + t) for op in (*PER_LAYER, *ONCE) for t in tokens],
                 columns=["layer", "tokens", "time_us"]).to_csv(folder / "dense.csv", index=False)
    pd.DataFrame([(op, s, 100.0 + 2 * s) for op in PER_SEQUENCE for s in (1, 2, 4, 8)],
                 columns=["layer", "sequences", "time_us"]).to_csv(folder / "per_sequence.csv", index=False)
    rows = []
    for c in (0, 16, 32):
        for kp in ((0,) if c == 0 else (0, 16, 64)):
            for n in (0, 1, 2, 4):
                for kd in ((0,) if n == 0 else (16, 32, 64)):
                    if (c, n) != (0, 0) and (c, kp, n, kd) not in drop:
                        rows.append((c, kp, n, kd, att_us(c, kp, n, kd) if n else att_us(c, kp, 0, 0)))
    pd.DataFrame(rows, columns=["prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us"]).to_csv(
        folder / "attention.csv", index=False)
    return folder


def test_a_batch_is_the_sum_of_its_operators(tmp_path):
    lat = OperatorLatency.from_profile(write_profile(tmp_path / "tp1"), MODEL, overhead_s=0.001)
    r = Request(0, 40, 5, 0.0)
    out = SchedulerOutput(decode_n=2, decode_ctx=64)  # two decodes of context 32, and a 16-token chunk
    out.prefill, out.prefill_lens, out.prefill_prefix, out.prefill_tokens = [r], [16], [16], 16
    out.partial = [r]
    layer_dense = sum(PER_LAYER[op] * (1.0 + 18) for op in PER_LAYER)
    expect_us = (1000 + 2 * layer_dense + sum(ONCE[op] * (1.0 + 18) for op in ONCE)
                 + 2 * att_us(16, 16, 2, 32) + 2 * (100.0 + 2 * 2))  # only the decodes sample
    assert lat.batch_time(out) == pytest.approx(expect_us * 1e-6, rel=1e-12)


def test_decode_run_is_iteration_by_iteration(tmp_path):
    lat = OperatorLatency.from_profile(write_profile(tmp_path / "tp1"), MODEL)
    run = lat.decode_run(3, 3 * 20, 5)
    steps = [lat.decode_run(3, 3 * 20 + i * 3, 1)[0] for i in range(5)]
    assert run.tolist() == steps and np.all(np.diff(run) > 0)
    assert lat.iteration_time(0, 0, 3, 3 * 20) == pytest.approx(run[0], rel=1e-12)


def test_a_decode_run_across_a_grid_line_is_iteration_by_iteration_to_the_last_bit(tmp_path):
    """Contexts within one segment of the grid are priced from its four cells as numbers, a run that crosses a
    line (contexts 30 to 35 across 32) cell by cell: the same arithmetic either way."""
    lat = OperatorLatency.from_profile(write_profile(tmp_path / "tp1"), MODEL)
    for n, start, k in ((3, 30, 6), (2, 15, 40), (4, 64, 3), (1, 100, 4)):
        run = lat.decode_run(n, n * start, k)
        assert run.tolist() == [lat.decode_run(n, n * start + i * n, 1)[0] for i in range(k)]


def test_a_short_decode_run_in_plain_numbers_is_the_array_price_to_the_last_bit(monkeypatch):
    """Runs of up to `SHORT_RUN` steps are priced in plain numbers; forced onto the array path they give the
    same floats, uneven contexts (the PRO 6000 profile's alpha) and runs across grid lines included."""
    import s3sim.latency.operators as operators

    lat = OperatorLatency.from_profile(SHARED / "rtxpro6000-llama-3.1-8b" / "profile", get_model("llama-3.1-8b"))
    assert lat.skew_alpha > 0
    rng, short_run = np.random.default_rng(0), operators.SHORT_RUN
    for _ in range(400):
        n, k = int(rng.integers(1, 300)), int(rng.integers(1, short_run + 1))
        mean = float(rng.choice([rng.uniform(0, 20_000), rng.uniform(0, 100), 16.0 * rng.integers(1, 200)]))
        longest = int(mean * (1 + rng.random())) if rng.random() < 0.8 else 0
        monkeypatch.setattr(operators, "SHORT_RUN", short_run)
        short = lat.decode_run(n, int(mean * n), k, max_ctx=longest)
        monkeypatch.setattr(operators, "SHORT_RUN", 0)
        assert short.tolist() == lat.decode_run(n, int(mean * n), k, max_ctx=longest).tolist()


def test_one_batch_in_plain_numbers_is_the_array_price(tmp_path):
    """`at` (one batch, plain numbers, the corners of weight 0 left out) against `__call__` (arrays, all 16
    corners), on grid lines and between them."""
    att = OperatorLatency.from_profile(write_profile(tmp_path / "tp1"), MODEL).attention
    rng = np.random.default_rng(0)
    for _ in range(300):
        point = [float(rng.choice(axis)) if rng.random() < 0.5 else float(rng.uniform(0, 1.3 * axis[-1]))
                 for axis in (att.c, att.kp, att.n, att.kd)]
        assert att.at(*point) == pytest.approx(float(att(*point)), rel=1e-12, abs=1e-18)


def test_cells_the_profile_did_not_measure_are_filled_along_their_lines(tmp_path):
    drop = {(16, 16, 2, 32), (32, 64, 4, 16), (16, 0, 1, 64)}
    lat = OperatorLatency.from_profile(write_profile(tmp_path / "tp1", drop=drop), MODEL)
    assert lat.attention.filled == len(drop)
    for c, kp, n, kd in drop:
        assert float(lat.attention(c, kp, n, kd)) * 1e6 == pytest.approx(att_us(c, kp, n, kd), rel=1e-9)


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data folder is not beside the repository")
@pytest.mark.parametrize("run", ["rtx4090-llama-3.1-8b", "rtxpro6000-llama-3.1-8b"])
def test_every_measured_attention_point_comes_back(run):
    lat = OperatorLatency.from_profile(SHARED / run / "profile", get_model("llama-3.1-8b"))
    t = pd.read_csv(SHARED / run / "profile" / "tp1" / "attention.csv")
    t = t[(t.kv_decode > 0) | (t.n_decode == 0)]
    got = lat.attention(t.prefill_chunk, t.kv_prefill, t.n_decode, np.maximum(t.kv_decode, lat.attention.kd[0]))
    assert np.allclose(got * 1e6, t.time_us, rtol=1e-12)


def test_a_bad_profile_is_one_line(tmp_path):
    folder = write_profile(tmp_path / "p" / "tp1")
    assert profile_folder(tmp_path / "p", 1) == folder == profile_folder(folder, 1)
    with pytest.raises(ConfigError, match="no tp2/ folder"):
        profile_folder(tmp_path / "p", 2)
    dense = pd.read_csv(folder / "dense.csv")
    dense[dense.layer != "o_proj"].to_csv(folder / "dense.csv", index=False)
    with pytest.raises(ConfigError, match="no rows for operator 'o_proj'"):
        OperatorLatency.from_profile(folder, MODEL)
    dense.to_csv(folder / "dense.csv", index=False)
    (folder / "per_sequence.csv").write_text("layer,sequences,time_us\nlm_head,1,abc\n")
    with pytest.raises(ConfigError, match="per_sequence.csv' line 2: not a number"):
        OperatorLatency.from_profile(folder, MODEL)
    (folder / "per_sequence.csv").write_text("layer,count,time_us\n")
    with pytest.raises(ConfigError, match="missing column 'sequences'"):
        OperatorLatency.from_profile(folder, MODEL)
    with pytest.raises(ConfigError, match="all-reduce"):
        OperatorLatency.from_profile(folder, MODEL, tp=2)


def test_tensor_parallel_profile_adds_two_all_reduces_per_layer_and_the_embeddings():
    """A tp2 profile times one GPU's shard; the model adds, at every token count, the two all-reduces of each
    layer and the vocabulary-parallel embedding's one, priced by the network model (here the ring over the RTX
    PRO 6000's 50 GB/s link), and with a gather model the logits' gathering to each sampled sequence."""
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import NoAllReduce
    from s3sim.hardware.network import all_reduce_model

    run = SHARED / "rtxpro6000-llama-3.1-8b" / "profile"
    if not (run / "tp2").is_dir():
        pytest.skip("shared data not present")
    model, gpu = get_model("llama-3.1-8b"), get_gpu("rtx-pro-6000")
    ring = all_reduce_model("ring", gpu)
    priced = OperatorLatency.from_profile(run, model, gpu, tp=2, all_reduce=ring)
    free = OperatorLatency.from_profile(run, model, gpu, tp=2, all_reduce=NoAllReduce())
    tokens = np.array([1.0, 16.0, 256.0, 2048.0])
    extra = priced.dense(tokens) - free.dense(tokens)
    assert np.allclose(extra, (2 * model.n_layers + 1)
                       * ring.time_s(2, tokens * model.hidden_size * model.dtype_bytes), rtol=1e-9)
    from s3sim.hardware.network import all_gather_model
    gather = all_gather_model(gpu, 2)
    gathered = OperatorLatency.from_profile(run, model, gpu, tp=2, all_reduce=ring, gather=gather)
    seqs = np.array([1.0, 64.0, 256.0])
    assert np.allclose(gathered.per_sequence(seqs) - priced.per_sequence(seqs),
                       gather.time_s(2, seqs * model.vocab_size * model.dtype_bytes), rtol=1e-9)
    # a decode of 64 sequences: the shard's operators are cheaper than one GPU's, the all-reduces cost extra
    one = OperatorLatency.from_profile(run, model, gpu, tp=1)
    assert free.iteration_time(0, 0, 64, 64 * 512) < one.iteration_time(0, 0, 64, 64 * 512)
    assert priced.iteration_time(0, 0, 64, 64 * 512) > free.iteration_time(0, 0, 64, 64 * 512)
    with pytest.raises(ConfigError, match="timed on one GPU's shard: its all-reduces need a price"):
        OperatorLatency.from_profile(run, model, gpu, tp=2)


def test_tensor_parallel_operators_from_the_config(cfg):
    from s3sim.cluster.build import build

    run = SHARED / "rtxpro6000-llama-3.1-8b" / "profile"
    if not (run / "tp2").is_dir():
        pytest.skip("shared data not present")
    base = ["model=llama-3.1-8b", "gpu=rtx-pro-6000", "latency=operators", f"latency.path={run}", "num_requests=50",
            "max_seq_len=512"]
    two = build(cfg(*base, "gpu.count=2", "latency.tp=2"))
    none = build(cfg(*base, "gpu.count=2", "latency.tp=2", "latency.all_reduce=none"))
    assert two.latency.iteration_time(0, 0, 8, 8 * 256) > none.latency.iteration_time(0, 0, 8, 8 * 256)
    with pytest.raises(ConfigError, match="gpu.count=2 needs latency.tp=2"):
        build(cfg(*base, "gpu.count=2"))


def test_the_parallel_table_command(capsys):
    from s3sim.lab.parallel_table import main

    run = SHARED / "rtxpro6000-llama-3.1-8b" / "profile"
    if not (run / "tp2").is_dir():
        pytest.skip("shared data not present")
    assert main([str(run), "--model", "llama-3.1-8b", "--gpu", "rtx-pro-6000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("auto: measured between rtx-pro-6000 GPUs") and "as the engine ran it" in out[0]
    rows = [line.split() for line in out[2:]]
    assert len(rows) == 4
    for *_, one, free, ring, auto in rows:  # the engine's collectives cost more than a ring at the link's rate
        assert float(free) < float(one) and float(auto) > float(ring) > float(free)
    assert main([str(SHARED / "rtx4090-llama-3.1-8b" / "profile"), "--model", "llama-3.1-8b", "--gpu", "rtx-4090"]) == 2
    assert "no tp2/ folder" in capsys.readouterr().err


def test_a_kv_copy_moves_each_tensor_parallel_gpus_share_at_the_measured_streaming_rate():
    """policy=hf on a profile: the copy of n cached tokens moves 2 x n x KV bytes at the GPU's streaming
    bandwidth (copy_efficiency of its datasheet's), each of the tp GPUs its share of the KV heads at once."""
    from s3sim.hardware.gpus import get_gpu
    from s3sim.hardware.network import NoAllReduce

    run = SHARED / "rtxpro6000-llama-3.1-8b" / "profile"
    if not (run / "tp2").is_dir():
        pytest.skip("shared data not present")
    model, gpu = get_model("llama-3.1-8b"), get_gpu("rtx-pro-6000")
    one = OperatorLatency.from_profile(run, model, gpu)
    two = OperatorLatency.from_profile(run, model, gpu, tp=2, all_reduce=NoAllReduce())
    expected = 2 * 1000 * model.kv_bytes_per_token / (gpu.mem_bandwidth * gpu.copy_efficiency)
    assert one.copy_time(1000) == pytest.approx(expected) and two.copy_time(1000) == pytest.approx(expected / 2)
