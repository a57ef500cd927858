"""A whole-encoder fine-tune made into LoRA adapters: each linear layer's change from the base encoder, cut to
its top singular directions.

Fine-tuning the whole encoder predicts better than training adapters from the start (on ShareGPT, see the
README), but a run weighs 90 MB. Its change to each linear layer is close to low rank, so it is kept as
LoRA's B A = U_r S_r V_r^T (the top `rank` singular directions of fine-tuned minus base weight, scaling 1),
with every bias and LayerNorm kept whole and the embeddings left at the base's. The result loads as any
LoRA run (the base encoder plus a few MB) and is what `make predictor` ships.
"""
from __future__ import annotations

from pathlib import Path

import torch

from s3sim.commandline import Parser
from s3sim.core.errors import ConfigError

PREFIX = "base_model.model."


def compress(run, rank: int, out) -> Path:
    """Write to `out` the LoRA form, of rank `rank`, of the finished whole-encoder run in folder `run`."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModel

    from s3sim.predictor.trained.model import LORA_TARGETS, LengthClassifier, base_path, read_meta

    run, out = Path(run), Path(out)
    meta = read_meta(run)
    if not meta.get("done"):
        raise ConfigError(f"{run} is not a finished run; finish its training first")
    if meta.get("lora"):
        raise ConfigError(f"{run} is a LoRA run already; compress a whole-encoder run")
    if not meta.get("base"):
        raise ConfigError(f"{run}/meta.json does not name the base encoder its weights changed")
    ft = LengthClassifier.load(run)
    tuned = ft.encoder.state_dict()
    base = AutoModel.from_pretrained(base_path(meta["base"]), local_files_only=True)
    if set(base.state_dict()) != set(tuned):
        raise ConfigError(f"{run}: its encoder's weights are not those of base {meta['base']!r}")
    enc = get_peft_model(base, LoraConfig(r=int(rank), lora_alpha=int(rank), lora_dropout=0.0,
                                          target_modules=LORA_TARGETS, bias="all", modules_to_save=["LayerNorm"]))
    with torch.no_grad():
        for name, module in enc.named_modules():
            if isinstance(module, LoraLayer):
                key = name.removeprefix(PREFIX)
                delta = (tuned[key + ".weight"] - module.base_layer.weight).float()
                if rank > min(delta.shape):
                    raise ConfigError(f"rank {rank} exceeds {key}'s {tuple(delta.shape)} weight; use at most "
                                      f"{min(delta.shape)}")
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                root = s[:rank].sqrt()
                module.lora_B["default"].weight.copy_(u[:, :rank] * root)
                module.lora_A["default"].weight.copy_(root[:, None] * vh[:rank])
        for name, p in enc.named_parameters():  # biases and LayerNorms: the tuned values, whole
            if "lora_" in name or "original_module" in name:
                continue
            key = name.removeprefix(PREFIX).replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
            if p.requires_grad:
                p.copy_(tuned[key])
    model = LengthClassifier(enc, ft.tokenizer, ft.buckets, ft.max_length, lora=int(rank), base=meta["base"])
    model.heads.load_state_dict(ft.heads.state_dict())
    keep = {k: v for k, v in meta.items() if k not in ("max_length", "lora", "base", "buckets")}
    model.save(out, dict(keep, compressed={"from": run.name, "rank": int(rank),
                                           "how": "top singular directions of each linear layer's change; "
                                                  "biases and LayerNorms whole; base embeddings"}))
    return out


def main(argv=None) -> None:
    """`python -m s3sim.predictor.trained.compress RUN DATA --ranks ...`: the held-out accuracy and size of
    a whole-encoder run compressed at each rank, beside the run itself (how the shipped rank was chosen)."""
    import sys
    import tempfile

    from s3sim.predictor.trained import cli
    from s3sim.predictor.trained.model import LengthClassifier

    ap = Parser(description=" ".join(main.__doc__.split()).split(": ", 1)[1])
    ap.add_argument("run", help="a finished whole-encoder run folder")
    ap.add_argument("data", help="its prompt/response file (the held-out split is taken from it)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 48, 64])
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        ev = cli.parser().parse_args(["evaluate", a.data, "--model", a.run] +
                                     (["--threads", str(a.threads)] if a.threads else []))

        def report(label, model, size):
            table, _ = cli.evaluate(ev, model, rows)
            first = table[(table.scheme == next(iter(model.buckets))) & (table.predictor == "trained")].iloc[0]
            print(f"{label:>12}: {first.scheme} accuracy {first.accuracy:.1%}, Kendall's tau-b "
                  f"{first.kendall_tau:.3f} on {int(first.n)} held-out prompts, {size / 1e6:.1f} MB", flush=True)

        whole = cli._model(ev)
        rows, note = cli.evaluation_rows(ev, whole)  # the held-out side of its training file
        print(note, flush=True)
        report("whole run", whole, sum(p.numel() * 4 for p in whole.encoder.parameters()))
        with tempfile.TemporaryDirectory() as tmp:
            for r in a.ranks:
                folder = compress(a.run, r, Path(tmp) / f"r{r}")
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                report(f"rank {r}", LengthClassifier.load(folder), size)
    except ConfigError as e:
        print(f"s3predict: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
