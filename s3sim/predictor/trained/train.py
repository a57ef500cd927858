"""Fine-tuning: cross-entropy summed over the schemes' heads, AdamW with linear warm-up and decay.

Batches group prompts of similar length (shuffled within an epoch, seeded), which cuts padding several
times on CPU. A run checkpoints to its folder every `save_every` steps and at each epoch's end, and
resumes from there: the batch order is a function of (seed, epoch), so skipped batches are the same ones.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from s3sim.core.errors import ConfigError
from s3sim.predictor.trained.model import LengthClassifier


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5          # encoder
    head_lr: float = 1e-3     # the fresh heads learn faster
    weight_decay: float = 0.01
    warmup: float = 0.06      # share of steps with a rising learning rate
    seed: int = 0
    save_every: int = 100     # steps between checkpoints


def set_threads(threads: int | None) -> int:
    """Torch's default thread count is a poor fit for small CPU batches: set it on purpose."""
    n = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def epoch_batches(lengths, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * 16
    batches = []
    for i in range(0, len(order), chunk):
        part = order[i:i + chunk]
        part = part[np.argsort(np.asarray(lengths)[part], kind="stable")]
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def loss_on(model: LengthClassifier, ids, labels: dict[str, np.ndarray], sel) -> torch.Tensor:
    logits = model(*model.collate([ids[j] for j in sel]))
    return sum(torch.nn.functional.cross_entropy(lg, torch.as_tensor(labels[n][sel], dtype=torch.long))
               for n, lg in logits.items())


def make_optimizer(model: LengthClassifier, cfg: TrainConfig):
    return torch.optim.AdamW([
        {"params": model.trainable_encoder_parameters(), "lr": cfg.lr},
        {"params": model.heads.parameters(), "lr": cfg.head_lr},
    ], weight_decay=cfg.weight_decay)


class Trainer:
    def __init__(self, model: LengthClassifier, ids, labels: dict[str, np.ndarray], cfg: TrainConfig,
                 folder=None, meta: dict | None = None):
        self.model, self.ids, self.labels, self.cfg = model, ids, labels, cfg
        self.folder = None if folder is None else Path(folder)
        self.meta = dict(meta or {})
        self.lengths = [len(x) for x in ids]
        self.steps_per_epoch = math.ceil(len(ids) / cfg.batch_size)
        self.total = self.steps_per_epoch * cfg.epochs
        self.opt = make_optimizer(model, cfg)
        warm = max(1, int(cfg.warmup * self.total))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min((s + 1) / warm, max(0.0, (self.total - s) / max(1, self.total - warm))))
        self.step = 0
        self.losses: list[float] = []

    # -- checkpoints
    def save(self) -> None:
        if self.folder is None:
            return
        self.check_finite()
        meta = dict(self.meta, train=asdict(self.cfg), step=self.step, total_steps=self.total,
                    done=self.step >= self.total, losses=self.losses)
        state = {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "step": self.step}
        self.model.save(self.folder, meta, train_state=state)

    def check_finite(self) -> None:
        """A run whose weights or losses went to inf/NaN is never saved (least of all as done): every command
        would then load a predictor whose probabilities are NaN. One line saying what diverged and why."""
        bad = next((f"loss {v} at step {i + 1}" for i, v in enumerate(self.losses) if not math.isfinite(v)), None)
        if bad is None:
            bad = next((f"weight {n} at step {self.step}" for n, p in self.model.named_parameters()
                        if p.requires_grad and not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise ConfigError(f"training diverged ({bad} is not finite): --lr {self.cfg.lr} / --head-lr "
                              f"{self.cfg.head_lr} are too high for this data; lower them (the run is not saved "
                              f"as trained)")

    def restore(self) -> None:
        state = torch.load(self.folder / "train_state.pt", weights_only=False)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.step = int(state["step"])
        self.losses = list(json.loads((self.folder / "meta.json").read_text()).get("losses", []))

    # -- the loop
    def run(self, progress: bool = True) -> list[float]:
        from tqdm.auto import tqdm

        self.model.train()
        bar = tqdm(total=self.total, initial=self.step, disable=not progress, desc="train", unit="step")
        while self.step < self.total:
            epoch, k = divmod(self.step, self.steps_per_epoch)
            batches = epoch_batches(self.lengths, self.cfg.batch_size, self.cfg.seed, epoch)
            for sel in batches[k:]:
                torch.manual_seed(self.cfg.seed * 1_000_003 + self.step)  # dropout: a resume repeats it exactly
                loss = loss_on(self.model, self.ids, self.labels, sel)
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
                self.opt.step()
                self.sched.step()
                self.step += 1
                self.losses.append(round(float(loss.detach()), 5))
                if not math.isfinite(self.losses[-1]):
                    self.check_finite()  # stop at once: every later step, and any checkpoint, would be NaN
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(self.losses[-20:]):.3f}")
                if self.step % self.cfg.save_every == 0 or self.step % self.steps_per_epoch == 0:
                    self.save()
        bar.close()
        self.model.eval()
        return self.losses
