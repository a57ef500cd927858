"""`latency.all_reduce` as every latency model reads it: checked on every run, priced beyond the measured sizes
without going below them, and the logits' all-gather priced (and named) as the value says."""
from pathlib import Path

import numpy as np
import pytest

from s3sim.core.errors import ConfigError
from s3sim.hardware.gpus import get_gpu
from s3sim.hardware.network import preset_measured, top_slope
from s3sim.inputs import SHARED_DATA_DIR

SHARED = Path(SHARED_DATA_DIR) / "vllm_runs"
DGX = SHARED_DATA_DIR / "gpu_profiles" / "network" / "a100_dgx" / "all_reduce.csv"
PRO = SHARED / "rtxpro6000-llama-3.1-8b" / "profile"


@pytest.mark.skipif(not DGX.is_file(), reason="the shared A100 DGX all-reduce table is not present")
@pytest.mark.parametrize("gpus", [2, 4, 8])
def test_a_finely_measured_table_prices_larger_messages_at_its_largest_messages_rate(gpus):
    """The DGX table's sizes are 131 KB apart at 64 MB, where its last segment is flat (8 GPUs) or falls (2): an
    all-reduce beyond it used to cost less than the largest measured (negative at 2 GPUs, 200 MB). Beyond the table
    the time grows from the largest one's, at the secant over its top octave of sizes."""
    model = preset_measured(get_gpu("a100-80gb-sxm"))
    sizes, seconds = model.curves[gpus]
    beyond = sizes[-1] * np.array([1.0, 1.5, 3.0, 12.0])
    t = model.time_s(gpus, beyond)
    assert t[0] == seconds[-1] and np.all(np.diff(t) > 0)
    assert model.bandwidth(gpus) == pytest.approx(1 / top_slope(sizes, seconds))
    half = np.searchsorted(sizes, sizes[-1] / 2)  # the secant's other end, a whole octave below
    assert sizes[-1] / sizes[half] <= 2 and seconds[half] < seconds[-1]


def test_the_top_octave_of_a_coarse_table_is_its_last_segment():
    """Where the table holds no size between half the largest and the largest (the PRO 6000 pair's), the rate beyond
    it is the last segment's, to the bit: the Qwen3-32B replay and its fitted factor are unchanged."""
    x, y = np.array([1e6, 8e6, 16e6, 20e6]), np.array([1e-5, 2e-4, 4e-4, 5e-4])
    assert top_slope(x, y) == (y[-1] - y[-2]) / (x[-1] - x[-2])
    x = np.array([1e6, 12e6, 16e6, 20e6])
    assert top_slope(x, y) == (y[-1] - y[1]) / (x[-1] - x[1])


@pytest.mark.parametrize("spec, words", [
    ("engine:inf", "a number > 0 and at most 100"), ("engine:abc", "a number > 0 and at most 100"),
    ("engine:1e30", "a number > 0 and at most 100"), ("link:10:inf", "expected link:<GB/s, finite and at least 0.001>"),
    ("link:inf:1", "expected link:<GB/s"), ("link:1e-9:0", "expected link:<GB/s"), ("link:1:1e300", "<us, 0 to"),
    ("link:10", "expected link:"), ("foo", "no such file, nor one of auto"),
    ("RING", "no such file, nor one of auto"), ("", "no such file")])
@pytest.mark.parametrize("latency", ["datasheet", "roofline"])
def test_a_malformed_value_is_refused_on_one_gpu_too(cfg, spec, words, latency):
    """One GPU prices no collective, yet a misspelt value is refused there too (a sweep would meet it only where it
    reached several GPUs); infinity is no factor, bandwidth or latency (it gave NaN latencies and exit 0), and nor
    is a value past any physical one (1e30 as a factor, 1e-9 GB/s: steps of years that overflowed later)."""
    from s3sim.cluster.build import build

    with pytest.raises(ConfigError, match=f"latency.all_reduce='{spec}'.*{words}"):
        build(cfg("num_requests=10", "max_seq_len=256", f"latency={latency}", f"latency.all_reduce={spec}"))


@pytest.mark.parametrize("spec", ["nope", "", "LINK"])
def test_a_malformed_send_recv_is_refused_on_one_stage_too(cfg, spec):
    """One pipeline stage sends nothing, yet a misspelt latency.send_recv is refused there too (it passed unread
    until a sweep reached several stages); link and none stay valid on one stage."""
    from s3sim.cluster.build import build

    with pytest.raises(ConfigError, match=f"latency.send_recv='{spec}': no such file, nor link or none"):
        build(cfg("num_requests=10", "max_seq_len=256", f"latency.send_recv={spec}"))
    for valid in ("link", "none", str(SEND_RECV)):
        build(cfg("num_requests=10", "max_seq_len=256", f"latency.send_recv={valid}"))


def test_the_engine_factor_on_a_preset_without_measurements_names_the_value_given(cfg):
    from s3sim.cluster.build import build

    with pytest.raises(ConfigError, match=r"latency.all_reduce=engine:2: the a100-80gb-pcie preset names no measured"):
        build(cfg("num_requests=10", "max_seq_len=256", "gpu=a100-80gb-pcie", "gpu.count=2", "latency.all_reduce=engine:2"))
    with pytest.raises(ConfigError, match="as the engine ran them: use ring, link") as e:
        build(cfg("num_requests=10", "max_seq_len=256", "gpu=a100-80gb-pcie", "gpu.count=2", "latency.all_reduce=engine"))
    assert "measured" not in str(e.value).split("use ")[-1]


@pytest.mark.skipif(not (PRO / "tp2").is_dir(), reason="the shared PRO 6000 profile is not present")
def test_the_logits_all_gather_is_priced_as_the_value_says_and_named(cfg):
    """latency=operators at TP2 gathers the logits' shards every step: a ring, a link or free as the value says (it
    used to be the measured table whatever was asked), and the summary's collectives names it."""
    from s3sim.cluster.build import build
    from s3sim.runner import collectives

    base = ["model=llama-3.1-8b", "gpu=rtx-pro-6000", "latency=operators", f"latency.path={PRO}", "latency.tp=2",
            "gpu.count=2", "num_requests=10", "max_seq_len=512"]
    built = {spec: build(cfg(*base, f"latency.all_reduce={spec}")) for spec in ("none", "link:1000000:0", "ring", "auto")}
    step = {spec: b.latency.iteration_time(0, 0, 64, 64 * 512) for spec, b in built.items()}
    assert step["link:1000000:0"] == pytest.approx(step["none"], rel=1e-4) and step["none"] < step["ring"] < step["auto"]
    named = {spec: collectives(b.replicas) for spec, b in built.items()}
    assert named["none"] == "none (free)" and "all-gather as a ring" in named["ring"]
    assert "all-gather measured between rtx-pro-6000 GPUs" in named["auto"]


def test_a_ring_fallback_note_names_only_the_fallback_and_advice_that_applies():
    """Expert parallelism's exchanges on four PRO 6000 (measured at two only) fall back to a ring: the note quotes
    that collective alone, not the whole joined column, and does not call it tensor parallelism's all-reduces."""
    from s3sim.config import run_notes
    from s3sim.hardware.network import RING_FALLBACK

    fallback = f"all-gather as a ring over rtx-pro-6000's interconnect (no measured all-gather of 4: {RING_FALLBACK})"
    notes = [n for n in run_notes({"collectives": f"measured between a100 GPUs | {fallback}"}) if RING_FALLBACK in n]
    assert len(notes) == 1 and fallback in notes[0] and "measured between a100" not in notes[0]
    assert "none takes every collective as free" in notes[0]


SEND_RECV = SHARED_DATA_DIR / "gpu_profiles" / "network" / "a100_dgx" / "send_recv.csv"


@pytest.mark.skipif(not SEND_RECV.is_file(), reason="the shared A100 DGX send/recv table is not present")
def test_a_measured_send_recv_beyond_its_table_grows_from_its_largest_message_too():
    """A pipeline's send/recv from a measured CSV reads its table as the collectives do: beyond the largest size,
    that size's time plus the rest at the top octave's rate, never less."""
    from s3sim.hardware.network import MeasuredSendRecv

    model = MeasuredSendRecv.from_csv(SEND_RECV)
    beyond = model.x[-1] * np.array([1.0, 2.0, 8.0])
    t = model.time_s(beyond)
    assert t[0] == model.y[-1] and np.all(np.diff(t) > 0)
    assert (t[2] - t[1]) / (beyond[2] - beyond[1]) == pytest.approx(top_slope(model.x, model.y))


def test_a_csv_named_like_engine_is_a_csv(tmp_path, cfg):
    """engine_ar.csv is a file, not engine:<factor>: read as one at every GPU count (it used to pass the check and
    be refused as a malformed factor only where a sweep reached two GPUs)."""
    from s3sim.cluster.build import build
    from s3sim.runner import collectives

    table = tmp_path / "engine_ar.csv"
    table.write_text("collective,num_gpus,bytes,time_us\nall_reduce,2,1024,10\nall_reduce,2,1048576,40\n")
    built = build(cfg("num_requests=10", "max_seq_len=256", "gpu.count=2", f"latency.all_reduce={table}"))
    assert collectives(built.replicas) == str(table)


def test_a_csv_with_bad_all_gather_rows_is_refused_not_passed_over(tmp_path, cfg):
    """At TP2 on the operator model the logits' all-gather reads the CSV's all-gather rows: malformed ones are an
    error, not a quiet fall back to another table."""
    from s3sim.cluster.build import build

    if not (PRO / "tp2").is_dir():
        pytest.skip("the shared PRO 6000 profile is not present")
    table = tmp_path / "pair.csv"
    table.write_text("collective,num_gpus,bytes,time_us\nall_reduce,2,1024,10\nall_reduce,2,1048576,40\n"
                     "all_gather,2,1024,\n")
    with pytest.raises(ConfigError, match="needs all_gather rows"):
        build(cfg("model=llama-3.1-8b", "gpu=rtx-pro-6000", "latency=operators", f"latency.path={PRO}", "latency.tp=2",
                  "gpu.count=2", "num_requests=10", "max_seq_len=512", f"latency.all_reduce={table}"))
