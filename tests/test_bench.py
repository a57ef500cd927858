"""`python -m s3sim.bench --against REV`: the per-operator command timed on this tree and on another revision in
one run, each pair's ratio printed; a revision git cannot check out is one line and exit code 2."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(*args):
    return subprocess.run([sys.executable, "-m", "s3sim.bench", *args], cwd=ROOT, capture_output=True, text=True)


def test_an_unknown_revision_is_one_line():
    ran = bench("--against", "no-such-revision")
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.count("\n") == 1 and "--against 'no-such-revision'" in ran.stderr


@pytest.mark.slow
def test_this_tree_against_itself_prints_each_ratio():
    ran = bench("--against", "HEAD", "--vllm", "300")
    assert ran.returncode == 0, ran.stderr
    rounds = [line for line in ran.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2 and all("vllm" in r and "s3" in r and "x)" in r for r in rounds)
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert "tree" not in worktrees.replace(str(ROOT), "")  # the temporary worktree is gone
