"""The run spec: a run's own settings read once into a frozen `RunSpec`, each knob with one default (the
config files state the same) and one check, a bad value one line naming its field."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from s3sim.config_groups import GPU_ENTRY
from s3sim.core.errors import ConfigError
from s3sim.spec import GpuEntry, RunSpec, run_spec

DEFAULTED = ("seed", "num_requests", "repeats", "max_jump", "kv_capacity_tokens", "shared_prefix_tokens",
             "shared_prefix_groups", "arrival_process", "replicas", "router")


def test_the_config_files_state_the_specs_defaults(cfg):
    spec = run_spec(cfg())
    for name in DEFAULTED:
        assert getattr(spec, name) == RunSpec.__dataclass_fields__[name].default, name
    assert spec.gpu == GpuEntry(spec.gpu.name, **GPU_ENTRY)
    assert (spec.max_seq_len, spec.model) == (2048, "gpt-j-6b")


def test_a_config_that_leaves_a_knob_out_gets_that_default():
    spec = run_spec({"max_seq_len": 64})
    for name in DEFAULTED:
        assert getattr(spec, name) == RunSpec.__dataclass_fields__[name].default, name
    assert spec.gpu is None and spec.model is None  # the executor's runs name no GPU preset


def test_the_spec_is_frozen(cfg):
    with pytest.raises(dataclasses.FrozenInstanceError):
        run_spec(cfg()).seed = 1


@pytest.mark.parametrize("overrides, field", [
    ({"max_seq_len": 0}, "max_seq_len"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"),
    ({"num_requests": 0}, "num_requests"), ({"repeats": 0}, "repeats"), ({"max_jump": 0}, "max_jump"),
    ({"max_jump": 2.5}, "max_jump"), ({"kv_capacity_tokens": -5}, "kv_capacity_tokens"),
    ({"shared_prefix": {"tokens": -1, "groups": 1}}, "shared_prefix.tokens"),
    ({"shared_prefix": {"tokens": 0, "groups": 0}}, "shared_prefix.groups"),
    ({"cluster": {"replicas": 0}}, "cluster.replicas"),
    ({"gpu": {"name": "a100-80gb-pcie", "count": 0}}, "gpu.count"),
    ({"gpu": {"name": "a100-80gb-pcie", "pipeline_stages": True}}, "gpu.pipeline_stages"),
    ({"gpu": {"name": "a100-80gb-pcie", "activation_reserve_frac": 1.0}}, "gpu.activation_reserve_frac"),
])
def test_a_bad_value_is_one_line_naming_its_field(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field} must be"):
        run_spec({"max_seq_len": 64, **overrides})


def test_the_command_refuses_a_knob_it_used_to_take_unchecked(tmp_path):
    """max_jump=0 was read as no limit, and a reserve fraction out of range was refused without its field's
    name (a word instead of a number, with a traceback): now each is one line naming the field, exit 2."""
    for bad, field in (("max_jump=0", "max_jump"), ("gpu.activation_reserve_frac=1.5", "gpu.activation_reserve_frac")):
        p = subprocess.run([sys.executable, "-c", "from s3sim.cli import main; main()", "num_requests=10", bad,
                            f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 2 and field in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_the_workload_entry_is_read_once_with_its_set_options(cfg):
    from s3sim.spec import WORKLOAD_OPTIONS, WorkloadSpec

    spec = run_spec(cfg("workload=alpaca_eval"))
    w = spec.workload
    assert isinstance(w, WorkloadSpec) and w.name == "alpaca_eval" and w.overlong == "drop"
    assert [k for k, _ in w.options] == [k for k in WORKLOAD_OPTIONS if k in dict(w.options)]  # in loader order
    assert w.label == "alpaca_eval" + (f"-{w.option('generator')}" if w.option("generator") else "")
    assert run_spec({"max_seq_len": 64}).workload is None  # the executor's given prompts
    trace = WorkloadSpec.read({"name": "trace", "time_scale": 2.0, "columns": None, "overlong": "clip"})
    assert trace.options == (("time_scale", 2.0),) and trace.overlong == "clip" and trace.label == "trace"


@pytest.mark.parametrize("node, field", [({"name": ""}, "workload.name"), ({"name": 3}, "workload.name"),
                                         ({"name": "alpaca", "overlong": "cut"}, "workload.overlong"),
                                         ({"name": "trace", "path": 5}, "workload.path"),
                                         ({"name": "alpaca", "data_dir": ["a"]}, "workload.data_dir")])
def test_a_bad_workload_entry_is_one_line_naming_its_field(node, field):
    with pytest.raises(ConfigError, match=f"^{field}"):
        run_spec({"max_seq_len": 64, "workload": node})


@pytest.mark.parametrize("value, read", [(True, True), (False, False), ("off", False), ("no", False), ("on", True),
                                         ("yes", True), ("false", False), ("True", True), (0, False), (1, True),
                                         (None, "default")])
def test_a_true_false_setting_reads_as_a_typed_config_reads_it(value, read):
    """`write_iterations=no` used to read as true (Python's bool of any non-empty text)."""
    from s3sim.spec import flag
    assert flag(value, "write_iterations", "default") == read


@pytest.mark.parametrize("value", ["maybe", 2, "2", "-1", 1.0, "", [True]])
def test_anything_else_is_refused_naming_the_field(value):
    from s3sim.core.errors import ConfigError
    from s3sim.spec import flag
    with pytest.raises(ConfigError, match=r"^executor.warmup must be true or false, got "):
        flag(value, "executor.warmup", True)


def test_an_arrival_process_that_is_not_a_name_is_one_line_from_the_library_too(cfg):
    """The command line's structured config refuses a list; a config handed to the library is checked as well."""
    from s3sim.cluster.build import build
    c = cfg("arrival=poisson", "arrival.rate=3", "num_requests=10")
    c["arrival"]["process"] = [1]
    with pytest.raises(ConfigError, match=r"^arrival\.process must be one of"):
        build(c)
