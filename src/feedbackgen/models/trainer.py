"""A small, resumable training loop for the neural generators (mini-batch SGD/AdamW, validation,
early stopping), and `TrainingArguments`, the settings it trains with.

`TrainingArguments` is to this trainer what `transformers.TrainingArguments` is to Hugging Face's:
how to train, apart from what to train. Each trainable model's config nests one under `training`
(`PeterConfig`, `SFTConfig`, `PromptLMConfig`), with the model's own defaults, and takes the flat
names as well (`--set lr=1e-3` is `--set training.lr=1e-3`; `nest_training`).

The model supplies two functions: `make_batch(indices, train)` (rows of the training split, or of
the validation split when `train` is False -> a batch) and `loss_fn(batch)` (a dict of scalar
losses, with the optimised total under "loss"; `valid_loss_fn` when validation computes them
otherwise, e.g. without label smoothing). The trainer validates after every epoch itself
(`validate`): the means of the validation losses over `n_valid` rows, a batch at a time, and
`valid_extra(losses)` adds what the model derives from them (the early-stopping `criterion`, "loss"
unless the model stops on another sum; a perplexity). `terms` names what each logged loss adds up
(e.g. {"loss": "1·nll_text + 1·nll_context + 0.1·mse_rating"}); it is printed once and written into
every log entry, so a train "loss" and a valid "loss" are one definition. `probe()`, when given,
runs after each epoch's validation (the text generators' collapse signal,
`feedbackgen.models.collapse`) and its dict goes into the entry under "collapse". The trainer owns
the rest:

- epochs of shuffled mini-batches (a seeded `torch.Generator`, so the order is reproducible);
  given `lengths` (tokens per row), length-grouped batches as Hugging Face's `LengthGroupedSampler`
  makes them (`length_grouped_batches`): less padding, the same rows per epoch;
- the optimiser (`sgd` or `adamw`), gradient clipping, and the learning-rate schedule:
  `plateau` (multiply by `lr_decay` after every epoch whose validation loss did not improve, as
  PETER does) or `cosine` (linear warm-up over `warmup_steps`, then cosine decay to
  `MIN_LR_RATIO × lr` at the last step of `max_epochs`);
- early stopping: the weights of the best validation epoch are kept, and training stops once
  `patience` epochs in all have failed to improve on the best (PETER's `endure_times`);
- a checkpoint after every epoch, when `checkpoint_dir` is set: one safetensors file
  (`checkpoint.safetensors`, written to a temporary name and renamed) holding the current and best
  weights, the optimiser's tensors and both random-number states, with everything else (epoch,
  step, schedule, early-stopping counters, optimiser settings, the training log, the caller's
  `extra` data) as JSON in the file's metadata. No pickles. Running `fit` again with the same
  settings continues after the last finished epoch and ends exactly where an uninterrupted run ends;
  a finished run is not repeated;
- a tqdm progress bar with running losses, and one log entry per epoch (epoch, step, train and
  validation losses, learning rate, seconds, samples/s).

Two ways of training change the steps themselves, and are off unless asked for:

- data-parallel, when the process group of `torchrun` is up (`feedbackgen.models.distributed`):
  each rank takes its share of every global batch, DDP averages the gradients, and only rank 0
  prints and writes the checkpoint (which then also holds every rank's random-number state);
  each rank validates its share of the rows and the sums are added across ranks, so every rank
  makes the same early-stopping decision;
- differentially private (`privacy`, `feedbackgen.models.privacy`): Poisson-sampled
  batches, per-sample clipping and noise instead of `clip`, and the spent (ε, δ) in each log entry
  and in `TrainResult.privacy`; `loss_fn` must then average per-row losses (no term may mix rows).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from feedbackgen.config import StrictModel
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.io import atomic_write
from feedbackgen.models import distributed
from feedbackgen.models.privacy import Privacy, PrivacySettings

CHECKPOINT_FILE = "checkpoint.safetensors"
MIN_LR_RATIO = 0.1
FORMAT_VERSION = 1
MEGA_BATCH = 50  # batches per length-sorted mega-batch (Hugging Face's `mega_batch_mult`)
BETAS = (0.9, 0.98)  # AdamW's


class TrainingArguments(StrictModel):
    """How a model trains: the optimiser, its schedule, batches, epochs, early stopping, the seed,
    checkpoints and progress. Nested under `training` in each trainable model's config."""

    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=100.0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    schedule: Literal["plateau", "cosine"] = "cosine"
    lr_decay: float = Field(0.25, gt=0.0, le=1.0, description="plateau: lr factor after a miss")
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="linear warm-up steps")
    clip: float = Field(1.0, ge=0.0, le=1000.0, description="gradient-norm clip (0 = off)")
    batch_size: int = Field(128, ge=1, le=65536)
    max_epochs: int = Field(10, ge=1, le=10000)
    patience: int = Field(5, ge=1, le=1000, description="epochs without improvement before stopping")
    seed: int = Field(1, ge=0, description="seed of the weights' initialisation, the batches and the samples")
    checkpoint_dir: str | None = Field(None, description="resumable training state, written every epoch")
    progress: bool = True


TRAINING_FIELDS = tuple(TrainingArguments.model_fields)


def nest_training(values: Any, defaults: dict[str, Any] | None = None,
                  flat: Sequence[str] = TRAINING_FIELDS) -> Any:
    """For a model config's `model_validator(mode="before")`: the training settings given flat
    (`lr`, the names in `flat`), dotted (`training.lr`) or nested (`training: {...}`) gathered
    under `training`, over the model's `defaults`. A flat or dotted name wins over the nested
    dict (it was given last, on the command line). Other inputs pass through."""
    if not isinstance(values, dict):
        return values
    values = dict(values)
    nested = values.pop("training", None)
    if isinstance(nested, BaseModel):
        nested = nested.model_dump()
    training = {**(defaults or {}), **(nested or {})}
    for key in list(values):
        name = key.removeprefix("training.")
        if key.startswith("training.") or name in flat:
            training[name] = values.pop(key)
    values["training"] = training
    return values


def flat_settings(config: BaseModel) -> dict[str, Any]:
    """A model config's values with its training settings in place of `training`, by their flat
    names (what `--set` takes), less those the model sets itself (its `phased_training`)."""
    out: dict[str, Any] = {}
    own = getattr(config, "phased_training", ())
    for key, value in config.model_dump().items():
        if key == "training":
            out.update({k: v for k, v in value.items() if k not in own})
        else:
            out[key] = value
    return out


@dataclass
class TrainResult:
    log: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: float = math.inf
    resumed_from_epoch: int = 0
    privacy: dict[str, Any] | None = None  # the spent (ε, δ) and how, when trained with DP-SGD


class LossModule(torch.nn.Module):
    """`loss_fn` as a module's forward: DDP synchronises gradients only of what runs inside its
    forward call, and the models' losses are methods other than `forward`."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable[[Any], dict[str, torch.Tensor]]):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.loss_fn(batch)


class Trainer:
    def __init__(self, module: torch.nn.Module, settings: TrainingArguments, *, n_train: int, n_valid: int,
                 make_batch: Callable[[torch.Tensor, bool], Any],
                 loss_fn: Callable[[Any], dict[str, torch.Tensor]],
                 valid_loss_fn: Callable[[Any], dict[str, torch.Tensor]] | None = None,
                 valid_extra: Callable[[dict[str, float]], dict[str, float]] | None = None,
                 fingerprint: str = "", extra: dict[str, Any] | None = None,
                 criterion: str = "loss", terms: dict[str, str] | None = None,
                 probe: Callable[[], dict[str, Any]] | None = None, lengths: Sequence[int] | None = None,
                 privacy: PrivacySettings | None = None, desc: str = "train"):
        """`n_valid`: validation rows (`make_batch(indices, False)` builds their batches);
        `lengths`: each training row's length (tokens), for length-grouped batches; None: plain
        shuffled batches; `privacy`: DP-SGD (None = ordinary training); `desc`: the progress
        bar's and the log lines' name. Raises ConfigError for an empty training or validation
        split, or `lengths` under `privacy` (DP-SGD's guarantee needs its Poisson-sampled batches)."""
        if n_train < 1:
            raise ConfigError("nothing to train on: the training split is empty")
        if n_valid < 1:
            raise ConfigError("nothing to validate on: the validation split is empty (early stopping needs it)")
        if lengths is not None and len(lengths) != n_train:
            raise DataError(f"lengths holds {len(lengths)} rows, the training split {n_train}")
        if lengths is not None and privacy is not None:
            raise ConfigError("length-grouped batches (group_by_length) and differentially private training "
                              "(privacy) do not go together: DP-SGD's privacy accounting needs its own "
                              "Poisson-sampled batches; turn group_by_length off")
        self.module, self.s, self.desc = module, settings, desc
        self.n_train, self.n_valid, self.make_batch, self.loss_fn = n_train, n_valid, make_batch, loss_fn
        self.valid_loss_fn, self.valid_extra = valid_loss_fn or loss_fn, valid_extra
        self.fingerprint, self.extra = fingerprint, dict(extra or {})
        self.criterion, self.terms, self.probe = criterion, dict(terms or {}), probe
        self.lengths = list(lengths) if lengths is not None else None
        self.steps_per_epoch = math.ceil(n_train / settings.batch_size)
        self.total_steps = self.steps_per_epoch * settings.max_epochs
        self.params = [p for p in module.parameters() if p.requires_grad]
        if settings.optimizer == "sgd":
            self.opt = torch.optim.SGD(self.params, lr=settings.lr, weight_decay=settings.weight_decay)
        elif settings.optimizer == "adamw":
            decay = [p for p in self.params if p.dim() >= 2]
            no_decay = [p for p in self.params if p.dim() < 2]
            self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                          {"params": no_decay, "weight_decay": 0.0}],
                                         lr=settings.lr, betas=BETAS)
        else:
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {settings.optimizer!r}")
        self.world = distributed.current()
        if n_valid < self.world.size:  # a rank without validation rows could not join the sums
            raise ConfigError(f"{n_valid} validation row(s) for {self.world.size} processes: each needs one")
        self.privacy: Privacy | None = None
        if privacy is not None:
            if self.world.parallel:
                raise ConfigError("differentially private training runs in one process, not under "
                                  f"torchrun ({self.world.size} processes): the privacy accounting here "
                                  "assumes one sampler; start it without torchrun")
            self.privacy = Privacy(module, self.opt, privacy, n_train=n_train,
                                   batch_size=settings.batch_size, steps=self.total_steps)
            self.opt = self.privacy.optimizer  # clips, adds noise, then steps the optimiser above
        self.loss_step: Callable[[Any], dict[str, torch.Tensor]] = loss_fn
        if self.world.parallel:
            from torch.nn.parallel import DistributedDataParallel

            # buffers are synced once, at the start: the models' buffers are constants (positional
            # encodings), not worth sending at every step
            self.loss_step = DistributedDataParallel(LossModule(module, loss_fn), forward_sync_buffers=False)
        self.shows_progress = settings.progress and self.world.is_main
        self.shuffle_gen = torch.Generator().manual_seed(settings.seed)
        # progress of the run (all of it goes into the checkpoint)
        self.epoch = 0
        self.step = 0
        self.n_decays = 0
        self.misses = 0
        self.done = False
        self.result = TrainResult()
        self.best_state: dict[str, torch.Tensor] | None = None

    # -- schedule ----------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        s = self.s
        if s.schedule == "plateau":
            lr = s.lr * s.lr_decay ** self.n_decays
        else:
            progress = min(1.0, step / max(1, self.total_steps - 1))
            lr = s.lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))
        if s.warmup_steps and step < s.warmup_steps:
            lr *= (step + 1) / s.warmup_steps
        return lr

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        s = self.s
        ckpt = Path(s.checkpoint_dir) / CHECKPOINT_FILE if s.checkpoint_dir else None
        if ckpt is not None and ckpt.exists():
            self._load_checkpoint(ckpt)
            self.result.resumed_from_epoch = self.epoch
        if self.terms and self.shows_progress and not self.done:
            tqdm.write(f"{self.desc}: " + "; ".join(f"{k} = {v}" for k, v in self.terms.items()))
        while not self.done:
            self.epoch += 1
            t0 = time.perf_counter()
            train_losses = self._train_epoch()
            seconds = time.perf_counter() - t0
            valid = self.validate()
            improved = valid[self.criterion] < self.result.best_valid
            if improved:
                self.result.best_valid, self.result.best_epoch = valid[self.criterion], self.epoch
                self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            else:
                self.misses += 1
                if s.schedule == "plateau":
                    self.n_decays += 1
            entry = {"epoch": self.epoch, "step": self.step, "train": train_losses, "valid": valid,
                     "lr": self.opt.param_groups[0]["lr"], "seconds": round(seconds, 3),
                     "samples_per_s": round(self.n_train / seconds, 2), "best": improved}
            if self.terms:
                entry["terms"] = self.terms
            if self.probe is not None:
                entry["collapse"] = self.probe()
            if self.world.parallel:
                entry["world_size"] = self.world.size
            if self.privacy is not None:
                spent = self.privacy.spent()
                entry["privacy"] = {k: spent[k] for k in ("epsilon", "delta", "steps")}
            self.result.log.append(entry)
            if self.misses >= s.patience or self.epoch >= s.max_epochs:
                self.done = True
            if self.shows_progress:
                tqdm.write(f"{self.desc} epoch {self.epoch}: "
                           + " ".join(f"{k} {v:.4f}" for k, v in train_losses.items())
                           + " | valid " + " ".join(f"{k} {v:.4f}" for k, v in valid.items())
                           + (f" | ε {entry['privacy']['epsilon']:.3f}" if "privacy" in entry else "")
                           + (" | USR {usr:.3f} repetition {repetition:.2f}".format(**entry["collapse"])
                              if "collapse" in entry else "")
                           + (" *" if improved else f" (miss {self.misses}/{s.patience})"))
            if ckpt is not None:
                self._save_checkpoint(ckpt)
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
        if self.privacy is not None:
            self.result.privacy = self.privacy.spent()
            self.privacy.close()
        self.module.eval()
        return self.result

    def _train_epoch(self) -> dict[str, float]:
        s = self.s
        self.module.train()
        # every rank draws the same batches, then takes its own rows of each global batch
        batches = self.epoch_batches() if self.privacy is None else None
        sums: dict[str, float] = {}
        seen = 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"{self.desc} epoch {self.epoch}/{s.max_epochs}",
                   disable=not self.shows_progress, leave=False, dynamic_ncols=True)
        for b in range(self.steps_per_epoch):
            if self.privacy is not None:
                idx = self.privacy.sample(self.n_train)
            else:
                idx = batches[b]
            if self.world.parallel:
                idx = distributed.shard(idx, self.world)
            lr = self.lr_at(self.step)
            for g in self.opt.param_groups:
                g["lr"] = lr
            if len(idx) == 0:  # a Poisson sample can be empty (probability e^-batch_size): no step
                self.step += 1
                bar.update(1)
                continue
            batch = self.make_batch(idx, True)
            losses = self.loss_step(batch)
            self.opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if s.clip > 0 and self.privacy is None:  # DP-SGD clips each row's gradient instead
                torch.nn.utils.clip_grad_norm_(self.params, s.clip)
            self.opt.step()
            self.step += 1
            n = len(idx)
            seen += n
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            bar.update(1)
            if b % 10 == 0 or b == self.steps_per_epoch - 1:
                bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()}, refresh=False)
        bar.close()
        if self.world.parallel:  # the epoch's means over every rank's rows
            keys = sorted(sums)
            totals = distributed.sum_across([sums[k] for k in keys] + [seen])
            sums, seen = dict(zip(keys, totals[:-1])), totals[-1]
        return {k: v / seen for k, v in sums.items()}

    def validate(self) -> dict[str, float]:
        """The validation losses' means over the `n_valid` rows (each batch's mean weighted by its
        rows, as the train losses), with `valid_extra`'s additions. Under torchrun each rank takes
        every world-size-th row and the sums are added across ranks: every rank gets the same numbers."""
        self.module.eval()
        sums: dict[str, float] = {}
        mine = torch.arange(self.world.rank, self.n_valid, self.world.size)  # all rows in one process
        with torch.no_grad():
            for start in range(0, len(mine), self.s.batch_size):
                idx = mine[start:start + self.s.batch_size]
                for k, v in self.valid_loss_fn(self.make_batch(idx, False)).items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        if self.world.parallel:
            keys = list(sums)
            sums = dict(zip(keys, distributed.sum_across([sums[k] for k in keys])))
        out = {k: v / self.n_valid for k, v in sums.items()}
        return self.valid_extra(out) if self.valid_extra is not None else out

    def epoch_batches(self) -> list[torch.Tensor]:
        """This epoch's batches of row indices, drawn from the seeded shuffle generator (so a resumed
        run, which restores that generator, draws the same ones)."""
        order = torch.randperm(self.n_train, generator=self.shuffle_gen)
        if self.lengths is None:
            return list(order.split(self.s.batch_size))
        return length_grouped_batches(order, self.lengths, self.s.batch_size, self.shuffle_gen)

    # -- checkpoints -------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path) -> None:
        # every rank's own random-number state (dropout masks differ by rank), gathered by rank 0
        rng_states = distributed.gather(torch.get_rng_state())
        if not self.world.is_main:
            return
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.module.state_dict().items():
            tensors[f"model.{k}"] = v
        for k, v in (self.best_state or {}).items():
            tensors[f"best.{k}"] = v
        opt_tensors, opt_json = flatten_optimizer_state(self.opt.state_dict())
        tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.shuffle"] = self.shuffle_gen.get_state()
        meta = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint, "epoch": self.epoch,
                "step": self.step, "n_decays": self.n_decays, "misses": self.misses, "done": self.done,
                "best_epoch": self.result.best_epoch, "best_valid": self.result.best_valid,
                "has_best": self.best_state is not None, "log": self.result.log,
                "optimizer": opt_json, "extra": self.extra}
        if self.world.parallel:
            meta["world_size"] = self.world.size
            tensors.update({f"rng.torch.rank{r}": state for r, state in enumerate(rng_states)})
        if self.privacy is not None:
            privacy_tensors, meta["privacy"] = self.privacy.state()
            tensors.update(privacy_tensors)
        # cloned: tied weights share storage, which safetensors refuses
        tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"state": json.dumps(meta)}))

    def _load_checkpoint(self, path: Path) -> None:
        meta, tensors = read_checkpoint(path)
        if meta.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{path} belongs to a run with other settings or data; delete it or "
                              "choose another checkpoint_dir")
        if meta.get("world_size", 1) != self.world.size:  # each rank's share of a batch would change
            raise ConfigError(f"{path} was written by a run on {meta.get('world_size', 1)} process(es); "
                              f"resume it on as many (this run has {self.world.size}), or delete it")
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.module.load_state_dict(model)
        if meta["has_best"]:
            self.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        opt = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}
        self.opt.load_state_dict(unflatten_optimizer_state(opt, meta["optimizer"]))
        torch.set_rng_state(tensors.get(f"rng.torch.rank{self.world.rank}", tensors["rng.torch"]))
        self.shuffle_gen.set_state(tensors["rng.shuffle"])
        if self.privacy is not None:
            self.privacy.load_state(tensors, meta["privacy"])
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.n_decays, self.misses, self.done = meta["n_decays"], meta["misses"], meta["done"]
        self.result.best_epoch, self.result.best_valid = meta["best_epoch"], meta["best_valid"]
        self.result.log = meta["log"]


def length_grouped_batches(order: torch.Tensor, lengths: Sequence[int], batch_size: int,
                           generator: torch.Generator) -> list[torch.Tensor]:
    """Batches of similar lengths, in a random order: Hugging Face's `get_length_grouped_indices`
    (`group_by_length=True`), with the batches shuffled as well.

    `order` (a permutation of the rows) is cut into mega-batches of `MEGA_BATCH × batch_size` rows;
    each is sorted by `lengths` (longest first; ties keep their shuffled order) and cut into batches
    of `batch_size` (only the very last batch can be short), and the batches' order is shuffled with
    `generator`. A batch then pads to a length close to each of its rows' instead of to the longest
    of a random handful, while which rows meet in a mega-batch stays random.
    Returns the batches (1-D index tensors), every row in exactly one."""
    size = MEGA_BATCH * batch_size
    batches = []
    for mega in order.split(size):
        ranked = sorted(mega.tolist(), key=lambda i: -lengths[i])  # stable: ties stay shuffled
        batches += torch.tensor(ranked, dtype=torch.long).split(batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON state, tensors) of a checkpoint file written by `Trainer`."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def read_checkpoint_extra(checkpoint_dir: str | Path | None) -> dict[str, Any] | None:
    """The caller's `extra` data from a checkpoint in `checkpoint_dir`, or None when there is none."""
    if not checkpoint_dir:
        return None
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["state"]).get("extra", {})


def flatten_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer `state_dict` as (named tensors, JSON): tensors by "state.<param>.<key>"."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                plain.setdefault(str(pid), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"plain": plain, "param_groups": groups}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in data["plain"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in data["param_groups"]]
    return {"state": state, "param_groups": groups}
