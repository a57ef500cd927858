"""Train, evaluate and tabulate the output-length predictor on every text data set (`make predictor`).

For ShareGPT, each AlpacaEval model and the Alpaca rows: fine-tune one encoder with three bucket heads
(10 equal buckets over 2048 and over 1024 tokens, 10 quantile buckets over 2048), cached and resumable
(`s3predict train`; ShareGPT's as LoRA adapters, shipped in s3sim/predictor/shipped); evaluate on the held-out prompts beside the majority and median baselines; and write
every row's predictions to `s3sim/predictor/tables/`, which `predictor=trained` reads.
Writes results/predictor/metrics.csv, a markdown summary and ShareGPT's confusion matrices.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from s3sim.core.errors import ConfigError
from s3sim.predictor.trained import cli
from s3sim.predictor.trained.predictor import table_path
from s3sim.runner import write_csv, write_text
from s3sim.workload.lengths import DEFAULT_DATA_DIR

SCHEMES = ("equal:10:2048", "equal:10:1024", "quantile:10:2048")
# ShareGPT's predictor is the shipped one: LoRA adapters (rank 16) over the frozen encoder, a few MB, copied
# into s3sim/predictor/shipped; the other data sets fine-tune the whole encoder (kept in the cache only)
SHIPPED_LABEL = "sharegpt_pairs"
SHIPPED_TRAIN = ["--lora", "16", "--lr", "6e-4", "--epochs", "4"]
MED = "trained, median of p"
GENERATORS = ("alpaca-7b", "gpt4", "llama-2-7b-chat-hf", "Meta-Llama-3-8B-Instruct",
              "Mistral-7B-Instruct-v0.2", "text_davinci_003", "vicuna-13b-v1.3")


def datasets(data_dir: Path) -> dict[str, Path]:
    """Workload label (as the simulator names it) -> the text file the predictor learns from."""
    out = {"sharegpt_pairs": data_dir / "sharegpt/sharegpt_v3_firstturn_pairs.jsonl"}
    for g in GENERATORS:
        out[f"alpaca_eval-{g}"] = data_dir / f"alpaca_eval/{g}.model_outputs.json"
    out["alpaca_rows"] = None  # two files; keyed "<file stem>:<row>" like the workload
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/predictor")
    ap.add_argument("--only", nargs="*", default=None, help="labels to (re)build, e.g. sharegpt_pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    d = Path(a.data_dir or DEFAULT_DATA_DIR).resolve()
    all_rows = []
    try:
        for label, data in datasets(d).items():
            if a.only and label not in a.only:
                continue
            if data is None:
                data = _alpaca_rows_file(d, out)
            t0 = time.perf_counter()
            print(f"== {label}", flush=True)
            train = ["train", str(data), "--threads", str(a.threads), "--epochs", str(a.epochs)]
            train += [x for s in SCHEMES for x in ("--scheme", s)] + (["--no-progress"] if a.no_progress else [])
            if label == SHIPPED_LABEL:
                train += SHIPPED_TRAIN
            folder = cli.train(cli.parser().parse_args(train))
            if label == SHIPPED_LABEL:
                folder = ship(folder)
            ev = cli.parser().parse_args(["table", str(data), "--model", str(folder), "--threads", str(a.threads)])
            model, rows = cli._model(ev), cli._rows(ev)
            metrics, conf = cli.evaluate(ev, model, rows)
            probs = model.probabilities(model.encode(rows["prompt"]), ev.batch_size)
            tab = cli.predictions_frame(rows, probs)
            cli.write_table(tab, model, table_path(label))
            metrics.insert(0, "dataset", label)
            metrics.insert(1, "train_rows", model.meta.get("train_rows"))
            all_rows.append(metrics)
            if label == "sharegpt_pairs":
                for n, c in conf.items():
                    write_csv(c.reset_index(), out / f"confusion_sharegpt_{n.replace(':', '_')}.csv")
            print(metrics.drop(columns=["dataset"]).to_string(index=False), flush=True)
            print(f"   {time.perf_counter() - t0:.0f} s", flush=True)
    except ConfigError as e:
        print(f"s3sim: error: {e}", file=sys.stderr)
        sys.exit(2)
    new = pd.concat(all_rows, ignore_index=True)
    path = out / "metrics.csv"
    if path.is_file() and a.only:  # keep the other data sets' rows
        old = pd.read_csv(path)
        new = pd.concat([old[~old["dataset"].isin(new["dataset"].unique())], new], ignore_index=True)
    write_csv(new, path)
    write_text(summary_markdown(new), out / "summary.md")
    print(f"wrote {path}, {out / 'summary.md'} and the prediction tables in {table_path('x').parent}")


def ship(folder: Path) -> Path:
    """Copy a finished LoRA run into s3sim/predictor/shipped (adapters, heads, metadata; not the optimizer
    state), written beside it and swapped in, so a failed copy never leaves half a predictor there."""
    import json
    import shutil

    from s3sim.predictor.trained.model import SHIPPED, swap_in

    meta = json.loads((folder / "meta.json").read_text())
    if not meta.get("done") or not meta.get("lora"):
        raise ConfigError(f"{folder} is not a finished LoRA run; only those are shipped")
    tmp = SHIPPED.with_name(SHIPPED.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("train_state.pt"))
    data = Path(meta["settings"]["data"])  # recorded relative to the data folder, not as this machine's path
    meta["settings"]["data"] = (data.relative_to(DEFAULT_DATA_DIR.resolve()).as_posix()
                                if data.is_relative_to(DEFAULT_DATA_DIR.resolve()) else data.name)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    swap_in(tmp, SHIPPED)
    return SHIPPED


def _alpaca_rows_file(d: Path, out: Path) -> Path:
    """The two Alpaca text files as one JSONL with keys `<file stem>:<row>` (a derived file, outside the
    repository's tracked results: it lives beside the predictor cache)."""
    import json

    from s3sim.workload.lengths import ALPACA_TEXT_FILES
    from s3sim.workload.text import read_pairs

    lines = [json.dumps({"id": f"{Path(rel).stem}:{p.key}", "prompt": p.prompt, "response": p.response})
             for rel in ALPACA_TEXT_FILES for p in read_pairs(d / rel)]
    path = cli.cache_dir() / "alpaca_rows.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(lines) + "\n", path)
    return path


def summary_markdown(m: pd.DataFrame) -> str:
    """One line per (data set, scheme): the trained predictor and both baselines side by side."""
    lines = ["| data set | buckets | n test | accuracy (trained / majority / median) | within 1 | "
             "MAE tokens (trained / majority / median) | under-prediction (trained / majority / median) | "
             "median-of-p rule: accuracy, MAE |",
             "|---|---|---|---|---|---|---|---|"]
    for (ds, sc), g in m.groupby(["dataset", "scheme"], sort=False):
        g = g.set_index("predictor")
        f = lambda col, fmt: " / ".join(fmt.format(g.loc[p, col]) for p in ("trained", "majority", "median"))
        lines.append(f"| {ds} | {sc} | {int(g.loc['trained', 'n'])} | {f('accuracy', '{:.1%}')} | "
                     f"{g.loc['trained', 'within_one']:.1%} | {f('mae_tokens', '{:.0f}')} | {f('under_rate', '{:.1%}')} | "
                     + (f"{g.loc[MED, 'accuracy']:.1%}, {g.loc[MED, 'mae_tokens']:.0f} |" if MED in g.index else "— |"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
