"""Hydra's own errors as the project's: one line, exit code 2, naming the valid choices or the nearest key.

Hydra composes a config before the app runs and reports a bad override (an unknown group value, a
misspelt key, a syntax error) over several lines with exit code 1. `precheck` composes the config first
the same way, once for each value a sweep gives, and turns such an error into one line.
"""
from __future__ import annotations

import difflib
import functools
import sys
from pathlib import Path


def _flat_keys(node, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _flat_keys(v, key + ".")
    return out


def _choices(conf_dir: str, group: str) -> list[str]:
    from s3sim.config_groups import group_choices
    return group_choices(group, conf_dir)


def explain(err: Exception, override: str, conf_dir: str, config_name: str, others: list[str] = ()) -> str:
    """One line for Hydra's error about `override` (`others`: the rest of the command line's overrides, whose
    group choices decide which keys exist)."""
    from s3sim.config_groups import config_groups

    text = str(err)
    key, _, value = override.lstrip("+~").partition("=")
    groups = config_groups(conf_dir)
    if "Could not find" in text or key in groups and "Could not" in text:
        valid = _choices(conf_dir, key)
        if valid:
            return f"{key}={value}: unknown; valid: {', '.join(valid)}"
    if "Could not override" in text or "not in struct" in text or "Key '" in text:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        group, _, sub = key.partition(".")
        if sub and group in groups:  # a key another choice of its group has: name the choices, not `+`
            from s3sim.config_groups import group_entry
            having = [c for c in _choices(conf_dir, group) if sub in _flat_keys(group_entry(group, c))]
            if having:
                example = f"{group}={having[0]} {override.lstrip('+~')}"
                return (f"{key}: the chosen {group} has no such key; {', '.join(f'{group}={c}' for c in having)} "
                        f"{'has' if len(having) == 1 else 'have'} it (e.g. {example})")
        with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            try:  # the keys of the config the rest of the command line chooses
                known = _flat_keys(OmegaConf.to_container(compose(config_name, overrides=list(others))))
            except Exception:  # noqa: BLE001 (another override is bad too: the defaults' keys then)
                known = _flat_keys(OmegaConf.to_container(compose(config_name)))
        if key in addable_keys() or key.startswith(USER_MAPPINGS):
            return f"{key}: this config does not set it; add it with +{key}={value}"
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else "see `--cfg job` for the keys"
        return f"{key}: no such key; {hint}"
    first = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
    return f"{override}: {first}"


# the mappings whose keys are the user's (a replica's overrides, a log's column names), checked where read
USER_MAPPINGS = ("cluster.overrides.", "workload.columns.")
# groups whose options a structured config reads (it refuses a key it does not know), Hydra's own settings, and
# the user's mappings
CHECKED_PREFIXES = ("policy.", "latency.", "predictor.", "hydra.") + USER_MAPPINGS


def addable_keys() -> set[str]:
    """The keys a config may lack and some code still reads where set (`+key=value` adds them)."""
    from s3sim.spec import WORKLOAD_OPTIONS
    return {"kv_capacity_tokens", "arrival.rate", "arrival.burstiness",
            *(f"workload.{k}" for k in (*WORKLOAD_OPTIONS, "data_dir", "path", "overlong"))}


@functools.cache
def composed_groups(conf_dir: str, config_name: str) -> tuple[str, ...]:
    """The config groups `config_name`'s defaults list composes (its other groups' options are another program's);
    read once, whatever the number of overrides asking."""
    import yaml

    defaults = yaml.safe_load((Path(conf_dir) / f"{config_name}.yaml").read_text()).get("defaults") or []
    return tuple(next(iter(d)).lstrip("+~").removeprefix("optional ").split("@")[0] for d in defaults
                 if isinstance(d, dict))


def foreign_group(override: str, conf_dir: str, config_name: str, prog: str) -> str | None:
    """One line for an override of a config group `config_name` does not compose (s3exec's `gpu=...`,
    `cluster.replicas=...`: groups of the simulator, which Hydra lists in every program's --help and refused with
    a contradiction, 'gpu=h100-sxm: unknown; valid: ..., h100-sxm'), else None."""
    from s3sim.config_groups import config_groups

    key = override.lstrip("+~").partition("=")[0]
    group = key.partition(".")[0]
    own = composed_groups(conf_dir, config_name)
    if group in own or group not in config_groups(conf_dir):
        return None
    said = key if "." in key else override.lstrip("+~")
    return f"{said}: {prog} has no {group} group (it composes {', '.join(own)}); {group} is the simulator's (s3sim)"


def unread_addition(override: str, conf_dir: str, config_name: str, prog: str = "s3sim",
                    refused_later: tuple = ()) -> str | None:
    """One line for a `+key=value` that adds a key no code reads (it would be carried along and ignored), else
    None; `++` (add or override) is checked the same way. `refused_later`: key prefixes the program refuses
    itself, with its own reason."""
    if not override.startswith("+"):
        return None
    key = override.lstrip("+").partition("=")[0]
    if key.startswith(CHECKED_PREFIXES + tuple(refused_later)) or key in addable_keys():
        return None
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        known = _flat_keys(OmegaConf.to_container(compose(config_name)))
    if key in known or key.partition(".")[0] == "experiment":
        return None  # an existing key (Hydra says what `+` does to it), or a preset of keys
    near = difflib.get_close_matches(key, known + sorted(addable_keys()), n=1, cutoff=0.6)
    return (f"+{key}: no part of {prog} reads this key, so it would be ignored"
            + (f"; did you mean {near[0]}?" if near else "; see `--cfg job` for the keys"))


def precheck(conf_dir: str, config_name: str, args: list[str], prog: str, refused_later: tuple = ()) -> None:
    """Exit with one line (code 2) if Hydra would refuse the overrides in `args`, or if one adds a key nothing
    reads (`unread_addition`)."""
    flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    if flags:  # --help, --cfg, -cn/-cp/-cd and the like: Hydra's own handling (and search path) applies
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_launcher(args, prog)
    check_output_dir(args, prog)
    overrides = [a for a in args if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    for o in overrides:
        bad = foreign_group(o, conf_dir, config_name, prog) or unread_addition(o, conf_dir, config_name, prog,
                                                                               refused_later)
        if bad:
            print(f"{prog}: error: {bad}", file=sys.stderr)
            sys.exit(2)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        print(f"{prog}: error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    # the first value of every override, then each other value of each sweep on its own; a sweep that cannot
    # be listed here (glob, interval) is left to Hydra
    try:
        base = [f"{o.get_key_element()}={_first(o)}" for o in parsed]
        trials = [base]
        for i, o in enumerate(parsed):
            if o.is_sweep_override():
                trials += [base[:i] + [f"{o.get_key_element()}={v}"] + base[i + 1:]
                           for v in list(o.sweep_string_iterator())[1:]]
    except HydraException:
        return
    for ovs in trials:
        try:
            with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
                compose(config_name, overrides=ovs)
        except (HydraException, OmegaConfBaseException, ValueError) as e:  # ValueError: `group=null`
            culprit = _culprit(e, ovs)
            others = [o for o in ovs if o != culprit]
            print(f"{prog}: error: {explain(e, culprit, conf_dir, config_name, others)}", file=sys.stderr)
            sys.exit(2)


def check_output_dir(args: list[str], prog: str) -> None:
    """A run or sweep directory given on the command line must be one this process can create and write:
    Hydra makes it before the app runs and would fail with a traceback."""
    import tempfile

    for a in args:
        key, _, value = a.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            try:
                Path(value).mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=value):
                    pass
            except OSError as e:
                print(f"{prog}: error: {key}={value}: cannot write there ({e.strerror})", file=sys.stderr)
                sys.exit(2)


def check_launcher(args: list[str], prog: str) -> None:
    """A sweep sent to a launcher this machine cannot reach ends in one line (exit 2) before Hydra writes the
    sweep's multirun.yaml (a folder of 'never started' points), not in the launcher's traceback: SLURM without its
    commands here, or Ray told to join a running cluster (`init.address=auto`) where none runs."""
    if not ({"-m", "--multirun"} & set(args)):
        return
    values = dict(a.partition("=")[::2] for a in args if "=" in a)
    launcher = values.get("hydra/launcher")
    problem = None
    if launcher == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            problem = ("hydra/launcher=slurm submits with SLURM's sbatch, which this machine lacks: run the sweep on a "
                       "SLURM login node, or here with hydra/launcher=local")
    elif launcher == "ray" and values.get("hydra.launcher.ray.init.address") == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment
        except ImportError:  # another Ray: the launcher judges
            return
        try:
            get_ray_address_from_environment("auto", None)
        except ConnectionError:
            problem = ("hydra.launcher.ray.init.address=auto joins a running Ray cluster, and none runs here (start "
                       "one with `ray start --head`, or leave the address out to start one for the sweep)")
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        sys.exit(2)


def _first(o) -> str:
    if o.is_sweep_override():
        return next(iter(o.sweep_string_iterator()))
    return o.get_value_element_as_str()


def _culprit(err: Exception, overrides: list[str]) -> str:
    """The override Hydra's error is about (the first one its message names; of several of one key, as in
    `policy=ft policy=nope`, the one whose value it names), else the last one."""
    text = str(err)
    named = []
    for ov in overrides:
        key = ov.lstrip("+~").partition("=")[0]
        if f"'{key}'" in text or f"{key}/" in text or f"'{key.split('.')[-1]}'" in text:
            named.append(ov)
    valued = [ov for ov in named if any(f"{q}{ov.partition('=')[2]}'" in text for q in ("/", "'"))]
    return (valued or named or overrides[-1:] or [""])[0]
