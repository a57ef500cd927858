"""Every command line answers a bad argument in one line and exit code 2, named as the user ran it, and
refuses an empty --out (it wrote into the working directory)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["s3sim.experiments.default", "s3sim.experiments.prefix", "s3sim.lab.operator_calibration",
           "s3exec.lab.fidelity", "s3exec.lab.gpu_check"]


def run(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("module", MODULES)
def test_a_bad_argument_and_an_empty_out_are_one_line(module, tmp_path):
    bad = run(module, "--no-such-option", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith(f"python -m {module}: error: unrecognized arguments: --no-such-option")
    assert bad.stderr.rstrip().endswith(f"(python -m {module} --help)")
    empty = run(module, "--out", "", cwd=tmp_path)
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1 and "empty path" in empty.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_a_subcommands_error_names_the_command_and_its_help():
    from s3sim.commandline import Parser

    ap = Parser(prog="tool")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    sub.add_parser("go").add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["go", "--n", "x"])
    assert e.value.code == 2


def test_a_sigterm_ends_a_command_through_its_clean_ups(tmp_path):
    """A SIGTERM (a `timeout`, a scheduler's cancel) during an atomic write used to leave its hidden temporary file;
    within `sigterm_as_exit` it ends the command with status 143 and the write's clean-up removes the file, and the
    handler before it is back afterwards."""
    import os
    import signal
    import time

    from s3sim.commandline import sigterm_as_exit
    from s3sim.writers import write_atomically

    def write(tmp):
        Path(tmp).write_text("half a figure")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        with sigterm_as_exit():
            write_atomically(tmp_path / "figure.png", write)
    assert stop.value.code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_ignored_on_purpose_stays_ignored():
    """A process started immune to SIGTERM (nohup-like wrappers set it ignored) keeps that within a command."""
    import signal

    from s3sim.commandline import sigterm_as_exit

    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with sigterm_as_exit():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
