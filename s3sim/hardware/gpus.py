"""GPU presets: datasheet numbers (memory size, HBM bandwidth, dense tensor throughput, the host link used to
swap KV cache, the link between GPUs), the efficiencies fitted to operators measured on the GPU, and the
device names that stand for it; one YAML file per GPU in `gpu_presets/` (see `read_gpu_preset`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from s3sim.core.errors import ConfigError

GiB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator. Bandwidths are bytes/s, ``peak_flops`` is dense fp16/bf16 tensor FLOP/s."""

    name: str
    memory_bytes: int
    mem_bandwidth: float
    peak_flops: float
    host_link_bandwidth: float
    source: str = ""
    interconnect_bandwidth: float = 0.0  # bytes/s per direction between two GPUs of a server (tensor parallelism)
    # what a kernel reaches of the peaks, fitted to measured operators (`make calibrate`) for `latency=datasheet`:
    # fractions of peak_flops and mem_bandwidth, a fixed cost per operator launch, and where the fit comes from
    compute_efficiency: float = 0.0
    memory_efficiency: float = 0.0
    launch_s: float = 0.0
    attention_prefill_efficiency: float = 0.0  # prefill attention's fraction of peak_flops
    attention_decode_efficiency: float = 0.0  # decode attention's fraction of mem_bandwidth
    calibration: str = ""
    # the fraction of mem_bandwidth a streaming kernel reaches (the residual add, measured by `make calibrate`, or
    # borrowed as `copy_calibration` says): what a KV copy by concatenation (policy=hf) moves its bytes at
    copy_efficiency: float = 0.0
    copy_calibration: str = ""
    # a measured all-reduce table of this GPU's servers, relative to the shared data folder (`measured_all_reduce`
    # in its preset): what `latency.all_reduce=measured` and `s3sim-validate` price tensor parallelism with
    measured_all_reduce: str = ""
    # whole engine steps timed on `tp` of these GPUs, with the operator profile of the same model: (profile folder
    # relative to the shared data folder, model preset, tp), which prices the measured collectives as the engine
    # ran them (`in_engine_steps` in its preset; `s3sim.latency.operators.in_engine_factor`)
    in_engine_steps: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"gpu name must be a non-empty string, got {self.name!r}")
        for field in ("memory_bytes", "mem_bandwidth", "peak_flops", "host_link_bandwidth"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"gpu '{self.name}': {field} must be a positive number, got {value!r}")


PRESETS_DIR = Path(__file__).parent / "gpu_presets"
_SECTIONS = {"datasheet", "source", "calibration", "device_names"}
_OPTIONAL = {"measured_all_reduce", "in_engine_steps"}
_DATASHEET = ("memory_bytes", "mem_bandwidth", "peak_flops", "host_link_bandwidth", "interconnect_bandwidth")
_FITTED = ("compute_efficiency", "memory_efficiency", "launch_s", "attention_prefill_efficiency",
           "attention_decode_efficiency")
_COPY = ("copy_efficiency", "copy_how")  # a streaming kernel's fraction of mem_bandwidth, and where it comes from


def read_gpu_preset(path: Path) -> tuple[GpuSpec, list[str]]:
    """One preset file (`gpu_presets/<name>.yaml`): its GPU, and the device names that stand for it.

    A GPU is data, as a model is: its datasheet figures with their source, the efficiencies `make calibrate`
    fitted to operators measured on it (or borrowed from another GPU, which `calibration.how` says), and the
    names the device gives itself (`torch.cuda.get_device_name`), by which `s3sim-validate` and a measured
    profile are matched to it. Adding a GPU is one such file (`gpu=<name>` is a config choice from it:
    `s3sim.config_groups`)."""
    where = f"GPU preset {path}"
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict) or not _SECTIONS <= set(d) <= _SECTIONS | _OPTIONAL:
        raise ConfigError(f"{where}: needs the keys {', '.join(sorted(_SECTIONS))} (and may have "
                          f"{', '.join(sorted(_OPTIONAL))}), nothing else")
    table = d.get("measured_all_reduce") or ""
    if not isinstance(table, str) or table.startswith("/"):
        raise ConfigError(f"{where}: measured_all_reduce must be a path relative to the shared data folder")
    steps = d.get("in_engine_steps") or {}
    if steps and not (isinstance(steps, dict) and set(steps) == {"profile", "model", "tp"}
                      and isinstance(steps["profile"], str) and not steps["profile"].startswith("/")
                      and isinstance(steps["tp"], int) and not isinstance(steps["tp"], bool) and steps["tp"] >= 2):
        raise ConfigError(f"{where}: in_engine_steps must be profile (relative to the shared data folder), model (a "
                          f"model preset) and tp (2 or more)")
    steps = (steps["profile"], str(steps["model"]), steps["tp"]) if steps else ()
    sheet, fit = d["datasheet"] or {}, d["calibration"] or {}
    missing = [k for k in _DATASHEET if k not in sheet] + [k for k in (*_FITTED, "how", *_COPY) if k not in fit]
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is missing")
    copy = fit["copy_efficiency"]
    if isinstance(copy, bool) or not isinstance(copy, (int, float)) or not 0 < copy <= 1:
        raise ConfigError(f"{where}: calibration.copy_efficiency must be in (0, 1], got {copy!r}")
    names = d["device_names"] or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n == n.strip().lower() for n in names):
        raise ConfigError(f"{where}: device_names must be a list of lower-case device names")
    spec = GpuSpec(path.stem, *(sheet[k] for k in _DATASHEET[:4]), source=str(d["source"]),
                   interconnect_bandwidth=sheet["interconnect_bandwidth"], calibration=str(fit["how"]),
                   measured_all_reduce=table, in_engine_steps=steps, copy_efficiency=float(copy),
                   copy_calibration=str(fit["copy_how"]), **{k: fit[k] for k in _FITTED})
    return spec, names


def _read_presets() -> tuple[dict[str, GpuSpec], dict[str, str]]:
    presets, devices = {}, {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        spec, names = read_gpu_preset(path)
        presets[spec.name] = spec
        for n in names:
            if n in devices:
                raise ConfigError(f"GPU preset {path}: device name {n!r} is {devices[n]}'s already")
            devices[n] = spec.name
    return presets, devices


GPU_PRESETS, DEVICE_NAMES = _read_presets()
# each preset's fitted efficiencies and how they were obtained (`make calibrate`), as the datasheet model reads them
CALIBRATION: dict[str, tuple[float, float, float, float, float, str]] = {
    name: (*(getattr(g, k) for k in _FITTED), g.calibration) for name, g in GPU_PRESETS.items()}


def measured_fits(exclude: str = "") -> tuple[list[GpuSpec], list[GpuSpec]]:
    """The presets whose efficiencies `make calibrate` fitted to operators measured on that GPU (not borrowed),
    other than `exclude`: (dense fits, attention fits); a preset fitted to a vLLM run's profile has its own
    attention fit (the A100 and A40 profiles have no attention)."""
    dense = [g for g in GPU_PRESETS.values() if g.calibration.startswith("fitted by make calibrate")
             and g.name != exclude]
    return dense, [g for g in dense if "vllm_runs/" in g.calibration]


def leave_one_out_fit(gpu: GpuSpec) -> GpuSpec:
    """`gpu` with the efficiencies of the other measured GPUs (their mean): what the datasheet model would price
    it with had it never been profiled (`s3sim-validate --fit-from others`)."""
    from dataclasses import replace

    dense, attention = measured_fits(exclude=gpu.name)
    if not dense or not attention:
        raise ConfigError(f"no GPU other than {gpu.name} has measured efficiencies to borrow")
    mean = lambda gs, k: sum(getattr(g, k) for g in gs) / len(gs)  # noqa: E731
    how = (f"the mean of the other measured GPUs' fits (dense: {', '.join(g.name for g in dense)}; attention: "
           f"{', '.join(g.name for g in attention)}), none of them {gpu.name}")
    return replace(gpu, name=f"others than {gpu.name}", calibration=how,
                   **{k: mean(dense, k) for k in ("compute_efficiency", "memory_efficiency", "launch_s")},
                   **{k: mean(attention, k) for k in ("attention_prefill_efficiency", "attention_decode_efficiency")})


def preset_of_device(device) -> str | None:
    """The preset a recorded device name stands for, or None (a CPU, a GPU without a preset)."""
    return DEVICE_NAMES.get(str(device).strip().lower()) if device else None


def get_gpu(name: str) -> GpuSpec:
    if name in GPU_PRESETS:
        return GPU_PRESETS[name]
    raise ConfigError(f"unknown gpu {name!r}: valid names are {', '.join(sorted(GPU_PRESETS))}")
