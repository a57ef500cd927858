"""`latency=datasheet`: every operator at its own bound, efficiencies fitted to measured operators."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import CALIBRATION, GPU_PRESETS, get_gpu
from s3sim.hardware.models import get_model
from s3sim.hardware.network import MeasuredSendRecv, PointToPoint, RingAllReduce
from s3sim.latency import DatasheetLatency, RooflineLatency
from s3sim.lab.operator_calibration import fit, operator_work, predict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[("gpt-j-6b", "a100-80gb-pcie", 1, 1), ("llama-3.1-8b", "rtx-pro-6000", 2, 1),
                        ("qwen3-30b-a3b", "h200", 4, 1), ("llama-2-13b", "a100-80gb-sxm", 2, 4)])
def lat(request):
    name, gpu, tp, pp = request.param
    g = get_gpu(gpu)
    ring = RingAllReduce(g.interconnect_bandwidth) if tp > 1 else None
    return DatasheetLatency(get_model(name), g, num_gpus=tp, all_reduce=ring, pipeline_stages=pp,
                            send_recv=PointToPoint(g.interconnect_bandwidth) if pp > 1 else None)


@pytest.mark.parametrize("batch,ctx0,k", [(1, 0, 1), (8, 800, 50), (512, 256 * 512, 64)])
def test_decode_run_equals_step_by_step(lat, batch, ctx0, k):
    run = lat.decode_run(batch, ctx0, k)
    assert run.tolist() == [lat.iteration_time(0, 0, batch, ctx0 + i * batch) for i in range(k)]


def test_vectorised_matches_scalar(lat):
    rng = np.random.default_rng(0)
    p = rng.integers(0, 4000, 50) * rng.integers(0, 2, 50)
    sq = p * p
    d = rng.integers(0, 300, 50)
    ctx = d * rng.integers(1, 2000, 50)
    vec = lat.iteration_time(p, sq, d, ctx)
    assert vec.tolist() == [lat.iteration_time(int(a), int(b), int(c), int(e)) for a, b, c, e in zip(p, sq, d, ctx)]
    assert lat.iteration_time(0, 0, 0, 0) == 0.0


def test_monotone_in_tokens_and_context(lat):
    # (non-strict: a pipeline's period is flat while the sequences do not fill its stages)
    t = lat.iteration_time(0, 0, np.arange(1, 600), 500 * np.arange(1, 600))
    assert np.all(np.diff(t) >= 0) and t[-1] > t[0]
    t = lat.iteration_time(np.arange(1, 4000), np.arange(1, 4000) ** 2, 0, 0)
    assert np.all(np.diff(t) > 0)


def test_each_operator_at_its_own_bound_costs_more_than_one_bound_over_all():
    """The point of it: attention reading KV no longer hides under compute-bound matmuls. At the same
    efficiencies and no fixed costs, the sum of bounds is at least the roofline's single bound."""
    m, g = get_model("gpt-j-6b"), get_gpu("a100-80gb-pcie")
    ds = DatasheetLatency(m, g, compute_efficiency=0.6, memory_efficiency=0.8, launch_s=0.0,
                          attention_prefill_efficiency=0.6, attention_decode_efficiency=0.8)
    rf = RooflineLatency(m, g, overhead_s=0.0)
    d = np.array([1, 64, 669, 669])
    ctx = d * np.array([300, 1000, 300, 1000])
    assert np.all(ds.iteration_time(0, 0, d, ctx) >= 0.95 * rf.iteration_time(0, 0, d, ctx))  # (it reads no embedding table)
    # a large batch at a moderate context: compute-bound matmuls plus memory-bound attention
    assert ds.iteration_time(0, 0, 669, 669 * 300) > 1.3 * rf.iteration_time(0, 0, 669, 669 * 300)


def test_the_dense_operators_reproduce_the_calibration_they_were_fitted_on():
    """The layer the model prices is the layer `make calibrate` fits: at the same efficiencies, a decode
    layer's non-attention operators cost what the calibration's operator sum predicts for that shape."""
    m, g = get_model("llama-3.1-8b"), get_gpu("a100-80gb-sxm")
    ds = DatasheetLatency(m, g)
    T = np.array([1.0, 16, 256, 2048])
    shape = pd.DataFrame({"num_tokens": T, "num_tensor_parallel_workers": 1, "n_head": m.n_heads,
                          "n_kv_head": m.n_kv_heads, "n_embd": m.hidden_size, "n_expanded_embd": m.intermediate_size,
                          "use_gated_mlp": True})
    work = operator_work(shape)
    ops = [op for op in work if op != "emb"]
    rows = pd.concat([pd.DataFrame({"flops": work[op][0], "bytes": work[op][1]}) for op in ops])
    expected = predict(rows, g, ds.compute_efficiency, ds.memory_efficiency, ds.launch_s).reshape(len(ops), -1).sum(0)
    layer = [sum(max(t * fc, wb + t * tb) for fc, wb, tb in ds._layer) + ds._layer_launches for t in T]
    np.testing.assert_allclose(layer, expected, rtol=1e-9)


def test_the_fit_recovers_the_efficiencies_a_profile_was_made_with():
    m, g = get_model("llama-3.1-8b"), get_gpu("a100-80gb-sxm")
    T = np.geomspace(1, 8192, 30).round()
    shape = pd.DataFrame({"num_tokens": T, "num_tensor_parallel_workers": 1, "n_head": m.n_heads,
                          "n_kv_head": m.n_kv_heads, "n_embd": m.hidden_size, "n_expanded_embd": m.intermediate_size,
                          "use_gated_mlp": True})
    work = operator_work(shape)
    rows = pd.concat([pd.DataFrame({"model": "m", "op": op, "tokens": T, "tp": 1, "flops": f, "bytes": b})
                      for op, (f, b) in work.items()], ignore_index=True)
    rows["measured_s"] = predict(rows, g, 0.55, 0.7, 6e-6)
    ce, me, launch = fit(rows, g)
    assert ce == pytest.approx(0.55, rel=0.03) and me == pytest.approx(0.7, rel=0.03)
    assert launch == pytest.approx(6e-6, rel=0.15)  # (a grid search, refined twice)


def test_all_reduce_cost_grows_with_the_tp_degree():
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb-sxm")
    ring = RingAllReduce(g.interconnect_bandwidth)
    comm = []
    for tp in (2, 4, 8):
        with_ring = DatasheetLatency(m, g, num_gpus=tp, all_reduce=ring).iteration_time(2048, 2048 ** 2, 0, 0)
        free = DatasheetLatency(m, g, num_gpus=tp).iteration_time(2048, 2048 ** 2, 0, 0)
        comm.append(with_ring - free)
    assert 0 < comm[0] < comm[1] < comm[2]
    # and sharding shortens the compute
    assert (DatasheetLatency(m, g, num_gpus=2).iteration_time(2048, 2048 ** 2, 0, 0)
            < 0.6 * DatasheetLatency(m, g).iteration_time(2048, 2048 ** 2, 0, 0))


def test_moe_reads_the_experts_its_tokens_touch_and_computes_the_active_ones():
    m, g = get_model("qwen3-30b-a3b"), get_gpu("h200")
    ds = DatasheetLatency(m, g)
    one, many = ds.iteration_time(0, 0, 1, 100), ds.iteration_time(0, 0, 256, 25600)
    all_weights = m.weight_bytes / (g.mem_bandwidth * ds.memory_efficiency)
    assert one < 0.35 * all_weights  # one token touches 8 of 128 experts per layer
    assert many > 0.8 * all_weights  # 256 tokens touch nearly all of them
    # at a compute-bound prefill, the time follows the active parameters, not all of them
    dense_like = 2 * m.n_params * 8192 / (g.peak_flops * ds.compute_efficiency)
    assert ds.iteration_time(8192, 8192 ** 2, 0, 0) < 0.4 * dense_like


def test_every_gpu_preset_carries_the_fit_of_make_calibrate():
    fits = pd.read_csv(ROOT / "results" / "calibration" / "operators.csv").set_index("gpu")
    for name, g in GPU_PRESETS.items():
        assert g.compute_efficiency > 0 and g.memory_efficiency > 0 and g.calibration, name
        assert g.attention_prefill_efficiency > 0 and g.attention_decode_efficiency > 0, name
    for name in fits.index:
        g = get_gpu(name)
        assert g.compute_efficiency == pytest.approx(fits.compute_efficiency[name], abs=6e-4)
        assert g.memory_efficiency == pytest.approx(fits.memory_efficiency[name], abs=6e-4)
        assert g.launch_s * 1e6 == pytest.approx(fits.launch_us[name], abs=0.01)
        if not np.isnan(fits.attention_decode_efficiency[name]):
            assert g.attention_prefill_efficiency == pytest.approx(fits.attention_prefill_efficiency[name], abs=6e-4)
            assert g.attention_decode_efficiency == pytest.approx(fits.attention_decode_efficiency[name], abs=6e-4)
    assert "NOT MEASURED" in CALIBRATION["h100-sxm"][-1]
    for name, g in GPU_PRESETS.items():  # what a streaming copy reaches: measured where a profile times one
        assert 0 < g.copy_efficiency <= 1 and g.copy_calibration, name
        measured = name in fits.index and not np.isnan(fits.copy_efficiency[name])
        assert measured == g.copy_calibration.startswith("measured by make calibrate"), name
        if measured:
            assert g.copy_efficiency == pytest.approx(fits.copy_efficiency[name], abs=6e-4)


def test_the_copy_efficiency_is_the_residual_adds_streaming_rate():
    """Adds timed at a fixed cost plus bytes over 1.5 TB/s for one model and 1.7 TB/s for two others read as
    1.7 TB/s (the median over models); rows under 256 tokens and other operators are not read."""
    from s3sim.lab.operator_calibration import copy_efficiency
    rows = []
    for model, rate in (("a", 1.5e12), ("b", 1.7e12), ("c", 1.7e12)):
        for tokens in (16, 256, 1024, 4096):
            nbytes = tokens * 4096 * 2 * 3.0
            rows.append({"model": model, "op": "add", "tokens": tokens, "bytes": nbytes,
                         "measured_s": 3e-6 + nbytes / rate + (1.0 if tokens < 256 else 0.0)})
            rows.append({"model": model, "op": "mlp_act", "tokens": tokens, "bytes": nbytes, "measured_s": 1.0})
    assert copy_efficiency(pd.DataFrame(rows)) == pytest.approx(1.7e12, rel=1e-9)
    assert np.isnan(copy_efficiency(pd.DataFrame(rows).query("op != 'add'")))


def test_bad_input_is_one_clear_error():
    m, g = get_model("llama-3.1-8b"), get_gpu("a100-80gb-sxm")
    with pytest.raises(ConfigError, match="compute_efficiency must be in"):
        DatasheetLatency(m, g, compute_efficiency=1.5)
    with pytest.raises(ConfigError, match="cannot split"):
        DatasheetLatency(m, g, num_gpus=3)
    from dataclasses import replace
    with pytest.raises(ConfigError, match="no fitted memory_efficiency"):
        DatasheetLatency(m, replace(g, memory_efficiency=0.0))
    with pytest.raises(ConfigError, match="intermediate_size"):
        DatasheetLatency(replace(m, intermediate_size=0), g)
    with pytest.raises(ConfigError, match="decode_tokens must be >= 0"):
        DatasheetLatency(m, g).iteration_time(0, 0, -1, 0)


DATA = ROOT.parent / "shared" / "data"


def test_pipeline_stages_add_memory_not_decode_speed_and_pay_their_send_recv():
    """Two stages of LLaMA 13B: in a memory-bound decode period each stage reads its half of the weights
    once per microbatch, twice, so the weights cost what one GPU holding every layer would pay, while each
    stage reads only its own layers' KV; plus the boundary's send/recv. One prefill chunk cannot be split,
    so it crosses both stages in turn."""
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb-sxm")
    one = DatasheetLatency(m, g)
    link = PointToPoint(g.interconnect_bandwidth)
    two = DatasheetLatency(m, g, pipeline_stages=2, send_recv=link)
    free = DatasheetLatency(m, g, pipeline_stages=2)
    short = (0, 0, 64, 64 * 8)  # the weights dominate: no faster than one GPU
    assert two.iteration_time(*short) == pytest.approx(one.iteration_time(*short), rel=0.05)
    long = (0, 0, 64, 64 * 2000)  # the KV reads dominate: split over the stages
    assert two.iteration_time(*long) < 0.8 * one.iteration_time(*long)
    assert two.iteration_time(*short) > free.iteration_time(*short)  # the send/recv is priced
    chunk = (2048, 2048 ** 2, 0, 0)
    assert two.iteration_time(*chunk) == pytest.approx(
        free.iteration_time(*chunk) + float(link.time_s(2048 * m.hidden_size * m.dtype_bytes)), rel=1e-12)
    assert two.iteration_time(*chunk) > one.iteration_time(*chunk)


def test_fewer_sequences_than_stages_leave_stages_idle():
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb-sxm")
    four = DatasheetLatency(m, g, pipeline_stages=4)
    one = DatasheetLatency(m, g)
    # one sequence is one microbatch: it crosses four stages in turn, as one GPU would run all layers
    assert four.iteration_time(0, 0, 1, 500) == pytest.approx(one.iteration_time(0, 0, 1, 500), rel=0.05)
    # four sequences fill the pipeline: the period is four stage-times of one sequence each
    assert four.iteration_time(0, 0, 4, 2000) == pytest.approx(four.iteration_time(0, 0, 1, 500), rel=0.05)


def test_pipeline_stages_in_a_run_config():
    from s3sim.config import build_latency, engine_capacity
    from s3sim.spec import GpuEntry

    model = get_model("llama-65b")
    gpu = {"name": "a100-80gb-pcie", "count": 1, "pipeline_stages": 2, "activation_reserve_frac": 0.1}
    _, _, cap = engine_capacity(GpuEntry.read(gpu), model)
    _, _, cap_tp = engine_capacity(GpuEntry.read(dict(gpu, count=2, pipeline_stages=1)), model)
    assert cap == cap_tp > 0  # two stages hold what two tensor-parallel GPUs hold
    with pytest.raises(ConfigError, match="latency=datasheet only"):
        build_latency({"name": "roofline"}, model, get_gpu("a100-80gb-pcie"), 1, pipeline_stages=2)
    with pytest.raises(ConfigError, match="only 80 layers"):
        engine_capacity(GpuEntry.read(dict(gpu, pipeline_stages=81)), model)


@pytest.mark.skipif(not (DATA / "gpu_profiles").is_dir(), reason="needs ../shared/data")
def test_a_measured_send_recv_grows_with_the_message():
    sr = MeasuredSendRecv.from_csv(DATA / "gpu_profiles" / "network" / "a100_dgx" / "send_recv.csv")
    t = sr.time_s(np.array([2048.0, 1e6, 1e8, 1e10]))
    assert np.all(np.diff(t) > 0) and t[0] > 0


def test_a_pipeline_period_adds_up_from_its_parts():
    """P stage-times of the heaviest microbatch, P - 1 send/recvs, the once-per-iteration operators once
    (the LM head once per microbatch) and the fixed cost once, not once per stage."""
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb-sxm")
    link = PointToPoint(g.interconnect_bandwidth)
    kw = dict(launch_s=0.0, overhead_s=0.005)
    two = DatasheetLatency(m, g, pipeline_stages=2, send_recv=link, **kw)
    one = DatasheetLatency(m, g, **kw)
    # one sequence: one microbatch crosses both stages, each with half the layers
    t2, t1 = two.iteration_time(0, 0, 1, 500), one.iteration_time(0, 0, 1, 500)
    send = float(link.time_s(m.hidden_size * m.dtype_bytes))
    assert t2 == pytest.approx(t1 + send, rel=1e-9)  # the fixed cost is paid once, not per stage


def test_a_prefill_chunk_is_not_split_across_microbatches():
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb-sxm")
    four = DatasheetLatency(m, g, pipeline_stages=4)
    chunk = four.iteration_time(2048, 2048 ** 2, 0, 0)
    for d in (1, 3, 8, 64):  # decodes beside it never make the iteration cheaper
        assert four.iteration_time(2048, 2048 ** 2, d, d * 300) >= chunk


def test_uneven_stages_are_priced_by_the_slowest():
    m, g = get_model("llama-2-13b"), get_gpu("a100-80gb-sxm")  # 40 layers
    three, four = DatasheetLatency(m, g, pipeline_stages=3), DatasheetLatency(m, g, pipeline_stages=4)
    assert three._layers == 14.0 and four._layers == 10.0


def test_moe_arrays_price_every_token_count_as_one_at_a_time():
    ds = DatasheetLatency(get_model("qwen3-30b-a3b"), get_gpu("h200"))
    d = np.arange(1, 200)
    vec = ds.iteration_time(0, 0, d, d * 100)
    assert vec.tolist() == [ds.iteration_time(0, 0, int(x), int(x) * 100) for x in d]
    assert ds.decode_run(35, 3500, 3).tolist() == [ds.iteration_time(0, 0, 35, 3500 + 35 * i) for i in range(3)]


def test_non_finite_or_inconsistent_input_is_refused():
    m, g = get_model("llama-3.1-8b"), get_gpu("a100-80gb-sxm")
    ds = DatasheetLatency(m, g)
    with pytest.raises(ConfigError, match="decode_ctx must be a finite number"):
        ds.iteration_time(0, 0, 4, float("nan"))
    with pytest.raises(ConfigError, match="finite"):
        ds.iteration_time(np.array([1.0, np.inf]), 0, 0, 0)
    from dataclasses import replace
    with pytest.raises(ConfigError, match="moe_intermediate_size"):
        DatasheetLatency(replace(get_model("qwen3-30b-a3b"), moe_intermediate_size=0), g)
    with pytest.raises(ConfigError, match="compute_efficiency must be in"):
        DatasheetLatency(m, g, compute_efficiency=0.0)  # given explicitly: not "no fitted" value
