"""The tool that lists which committed result numbers moved: rows matched by their keys, only cells beyond the
threshold, rows on one side named, and the command against a real commit."""
import subprocess

import pandas as pd
import pytest

from s3sim.lab.moved import key_columns, main, moved


def tables():
    old = pd.DataFrame({"policy": ["s3", "orca", "paged"], "rate": [1.0, 1.0, 1.0],
                        "throughput": [100.0, 50.0, 0.0], "p99": [2.0, 3.0, 4.0]})
    new = pd.DataFrame({"policy": ["orca", "s3", "vllm"], "rate": [1.0, 1.0, 1.0],  # reordered, one swapped
                        "throughput": [50.5, 103.0, 9.0], "p99": [3.0, 1.5, 1.0]})
    return old, new


def test_rows_are_matched_by_their_keys_and_only_moves_beyond_the_threshold_are_named():
    old, new = tables()
    assert key_columns(old, new) == ["policy"]  # the rate, the same everywhere, is not needed to tell rows apart
    twice = pd.concat([old, old.assign(rate=2.0)])
    assert key_columns(twice, twice) == ["policy", "rate"]
    cells, unmatched = moved(old, new, 0.02)
    assert cells == ["[s3] throughput: 100 -> 103 (+3.0 %)", "[s3] p99: 2 -> 1.5 (-25.0 %)"]  # orca +1 %
    assert unmatched == ["[paged]: removed", "[vllm]: added"]
    assert moved(old, new, 0.005)[0][0] == "[s3] throughput: 100 -> 103 (+3.0 %)"
    assert any(c.startswith("[orca] throughput") for c in moved(old, new, 0.005)[0])
    assert moved(old, new, 0.02, columns={"p99"})[0] == ["[s3] p99: 2 -> 1.5 (-25.0 %)"]


def test_a_zero_that_became_non_zero_is_a_move():
    old = pd.DataFrame({"policy": ["paged"], "goodput": [0.0]})
    new = pd.DataFrame({"policy": ["paged"], "goodput": [5.47]})
    assert moved(old, new, 0.02)[0] == ["[paged] goodput: 0 -> 5.47 (new non-zero)"]


def test_the_command_compares_the_working_tree_with_a_commit(tmp_path, monkeypatch, capsys):
    old, new = tables()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    old.to_csv("t.csv", index=False)
    subprocess.run([*git, "add", "t.csv"], check=True)
    subprocess.run([*git, "commit", "-qm", "t"], check=True)
    new.to_csv("t.csv", index=False)
    assert main(["HEAD", "t.csv"]) == 0
    out = capsys.readouterr().out
    assert "## t.csv: 2 cells moved by more than 2 %, 2 rows on one side only" in out
    assert "[s3] p99: 2 -> 1.5 (-25.0 %)" in out
    assert main(["HEAD", "missing.csv"]) == 2
    assert "missing.csv: no such table" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["HEAD"], ["HEAD", "t.csv", "--threshold", "x"]])
def test_bad_arguments_are_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
