"""`prompt_lm`: PEPLER — PErsonalized Prompt Learning for Explainable Recommendation
(Li, Zhang & Chen, TOIS 2023) on a pretrained causal LM.

A user vector and an item vector, of the LM's hidden size, are prepended to the LM's input as a
continuous prompt; the LM then writes the target text:

    [user] [item] (aspect words as text) "\nReview:" w1 w2 ... wn <eos>
      └─ learnt ─┘ └── discrete prompt ─┘        └ the loss ┘

- **Sequential tuning**: phase 1 trains the prompts (and the rating head) with the LM frozen;
  phase 2 trains everything, the LM at a smaller learning rate (`models.trainer.Trainer`);
  `full_epochs=0` skips phase 2.
- **Rating regularisation** (`rating_head`): an MF head (`mean + u·i`) or an MLP head over
  `[u; i]`, trained jointly with `loss = nll_text + rating_reg·mse_rating`; with `none`, ratings
  come from the `rating_model` baseline and `loss = nll_text`.
- **Discrete prompts** (`discrete_prompt=True`, PEPLER-D's idea): the user's and the item's most
  frequent aspect words from training, as text after the two vectors.
- **Retrieved reviews** (`rag_k` > 0, retrieval-augmented generation): the `rag_k` training texts
  that best fit the request (`feedbackgen.models.neighbours`), quoted as text after the discrete
  prompt; a training row never reads its own text, another of its pair, or a copy of it
  (leave-one-out). The index is saved in the folder (`rag.*` tensors, `rag.texts` in state.json).
- Unknown users and items use vector 0 of their `IdIndex`, learnt by ID dropout (`id_dropout`).

The training log names each loss by its terms (`loss_terms`, the `terms` of every entry): the train
and valid `loss` are the same sum. Each phase early-stops on the valid `criterion`, `nll_text +
mse_rating` as PEPLER's code does (unweighted, whatever `rating_reg`), or on `loss` without a rating
head. After training, a greedy decoding of `collapse_requests` seeded validation requests gives the
collapse signal (USR, repetition; `feedbackgen.models.collapse`), logged in the entry of the kept
epoch and in `training.json`, and announced on stderr when the model answers every request alike.

Generation is batched with Hugging Face `generate` on `inputs_embeds` (left padding, KV cache),
with every `Decoding` option through `feedbackgen.decoding` (each request samples from
its own random stream). Texts are returned as the model writes them.

Saved folder (`feedbackgen.models.folder`): `model.safetensors` (prompt vectors, rating head, rating
baseline), `ids.json` (the user and item ids), `state.json` (aspect words), and `lm/` (a Hugging Face
folder, written by `save_extra`) when phase 2 changed the LM; otherwise the base `model` is loaded again.

Training cost (`bench/llm_training.py`): `group_by_length` batches texts of similar lengths;
`autocast` runs the training and validation passes under bfloat16 autocast; the output layer sees
only the positions that predict a text token (`training.target_nll`). Caching the frozen LM's
activations cannot help phase 1: the prompt vectors are the LM's very first input, so every
layer's activations depend on them and change at every step; nothing below them is frozen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import torch
import torch.nn as nn
from pydantic import Field, model_validator

from feedbackgen.config import Decoding, StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.text import truncate_tokens
from feedbackgen.decoding.loops import guard_loops
from feedbackgen.decoding.search import hf_generate_kwargs
from feedbackgen.decoding.seeds import stream_seed, with_seeds
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.models.base import Generator, IdIndex, register
from feedbackgen.models.llm.prompts import similar_reviews_line
from feedbackgen.models.neighbours import NeighbourIndex
from feedbackgen.pretrained import DEFAULT_MODEL, load_causal_lm
from feedbackgen.models.llm.training import (AUTOCAST, COLLAPSE_MAX_NEW_TOKENS, COLLAPSE_REQUESTS,
                                             COLLAPSE_SETTINGS, GROUP_BY_LENGTH, IGNORE, TrainableView,
                                             check_collapse, pad_right, set_threads, target_nll)
from feedbackgen.models.rating import fit_rating_model, rating_model_from_state, rating_model_state
from feedbackgen.models.text_units import Target, target_column, target_rows
from feedbackgen.models.trainer import TRAINING_FIELDS, Trainer, TrainingArguments, flat_settings, nest_training
from feedbackgen.types import GENERATED, FeedbackRequest, provenance

# where the text starts. PEPLER uses GPT-2's <bos>; plain text that any LM reads as "a review
# follows" starts an instruction-tuned model at a far lower loss than a chat-template token
SEPARATOR = "\nReview:"
MAX_WORDS = {"explanation": 20, "review": 60}


# the Trainer's settings where prompt_lm's differ from `TrainingArguments`' defaults; lr and
# max_epochs are each phase's (prompt_lr/full_lr, prompt_epochs/full_epochs), not settings of their own
PROMPT_LM_TRAINING = {"batch_size": 16, "patience": 2}
PHASED = ("lr", "max_epochs")


class PromptLMConfig(StrictModel):
    phased_training: ClassVar[tuple[str, ...]] = PHASED  # set per phase, not as settings
    model: str = Field(DEFAULT_MODEL, description="base model: smollm2-135m-instruct, a .gguf, a folder or a hub name")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    num_threads: int | None = Field(None, ge=1, le=1024, description="training threads (generation uses the "
                                    "process's: generate/serve --threads)")
    target: Target = "explanation"
    max_words: int | None = Field(None, ge=1, le=1000, description="target words kept (None: 20 / 60)")
    # the prompt
    discrete_prompt: bool = Field(False, description="add the user's and item's top aspect words as text")
    prompt_aspects: int = Field(3, ge=1, le=20, description="aspect words per user and per item")
    rag_k: int = Field(0, ge=0, le=20, description="retrieved training texts quoted in the prompt (0 = off)")
    rag_sources: Literal["both", "item", "user"] = Field(
        "both", description="retrieve the item's texts by similar users, the user's about similar items, or both")
    rag_embedding_model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers folder or name "
                                     "for the retrieval's user/item similarity")
    id_dropout: float = Field(0.03, ge=0.0, le=0.5, description="share of training IDs replaced by 'unknown'")
    # rating regularisation
    rating_head: Literal["none", "mf", "mlp"] = "mlp"
    rating_reg: float = Field(0.1, ge=0.0, le=100.0, description="weight of the rating MSE in the loss")
    rating_model: Literal["global_mean", "bias", "mf"] = Field("mf", description="ratings when rating_head=none")
    # sequential tuning
    prompt_lr: float = Field(1e-3, gt=0.0, le=1.0, description="phase 1: prompts only, LM frozen")
    prompt_epochs: int = Field(3, ge=0, le=1000)
    full_lr: float = Field(5e-5, gt=0.0, le=1.0, description="phase 2: everything")
    full_epochs: int = Field(1, ge=0, le=1000)
    # batches, early stopping, seed, checkpoints (one sub-folder per phase): the Trainer's; each
    # phase's lr and epochs are the four above (`--set batch_size=...` is `--set training.batch_size=...`)
    training: TrainingArguments = Field(default_factory=lambda: TrainingArguments(**PROMPT_LM_TRAINING))
    group_by_length: bool = GROUP_BY_LENGTH
    autocast: bool = AUTOCAST
    max_train_samples: int | None = Field(None, ge=1, description="a seeded sample of the training reviews")
    max_valid_samples: int = Field(256, ge=1)
    # the collapse check after training (`training.check_collapse`)
    collapse_requests: int = COLLAPSE_REQUESTS
    collapse_max_new_tokens: int = COLLAPSE_MAX_NEW_TOKENS

    @model_validator(mode="before")
    @classmethod
    def _nest_training(cls, values: Any) -> Any:
        return nest_training(values, PROMPT_LM_TRAINING, [f for f in TRAINING_FIELDS if f not in PHASED])

    @model_validator(mode="after")
    def _phases_own_lr_and_epochs(self) -> PromptLMConfig:
        defaults = TrainingArguments(**PROMPT_LM_TRAINING)
        for name in PHASED:
            if getattr(self.training, name) != getattr(defaults, name):
                raise ConfigError(f"training.{name}: prompt_lm trains in two phases; set prompt_{name.split('_')[-1]} "
                                  f"and full_{name.split('_')[-1]} instead")
        return self

    @property
    def words(self) -> int:
        return self.max_words or MAX_WORDS[self.target]


class ContinuousPrompts(nn.Module):
    """User and item vectors in the LM's embedding space, and the optional rating head."""

    def __init__(self, n_users: int, n_items: int, hidden: int, head: str, mean_rating: float, scale: float):
        super().__init__()
        self.user, self.item = nn.Embedding(n_users, hidden), nn.Embedding(n_items, hidden)
        for emb in (self.user, self.item):  # start at the scale of the LM's own token vectors
            nn.init.normal_(emb.weight, std=scale)
        self.head = head
        self.mean = mean_rating
        if head == "mlp":
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Sigmoid(), nn.Linear(hidden, 1))
            nn.init.constant_(self.mlp[2].bias, mean_rating)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.user(user), self.item(item)], 1)  # (B, 2, H)

    def rating(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        u, i = self.user(user), self.item(item)
        if self.head == "mf":
            return self.mean + (u * i).sum(-1)
        return self.mlp(torch.cat([u, i], -1)).squeeze(-1)


@register
class PromptLM(Generator):
    name = "prompt_lm"
    Config = PromptLMConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.lm = self.tokenizer = self.prompts = None
        self.lm_tuned = False
        self.training_log: list[dict[str, Any]] = []
        self.training_summary: dict[str, Any] | None = None  # loss terms, collapse signal (training.json)
        self.neighbours: NeighbourIndex | None = None  # the retrieval index when rag_k > 0

    # -- inputs ------------------------------------------------------------------------------
    def _aspect_words(self, train: pl.DataFrame, key: str) -> dict[str, list[str]]:
        if "aspect" not in train.columns:
            return {}
        top = (train.filter(pl.col("aspect").is_not_null()).group_by(key, "aspect").len()
               .sort([key, "len", "aspect"], descending=[False, True, False])
               .group_by(key, maintain_order=True).agg(pl.col("aspect").head(self.config.prompt_aspects)))
        return {k: list(v) for k, v in top.iter_rows()}

    def prompt_text(self, user_id: str, item_id: str, training: bool = False) -> str:
        """The text between the vectors and the separator: aspect words, retrieved texts, or "".
        training: (user_id, item_id) is a training row, left out of its own retrieval."""
        text = ""
        if self.config.discrete_prompt:
            text = (f" user: {', '.join(self.user_aspects.get(user_id, []))};"
                    f" item: {', '.join(self.item_aspects.get(item_id, []))}.")
        if self.neighbours is not None:
            leave_out = self.neighbours.row_of(user_id, item_id) if training else None
            retrieved = self.neighbours.neighbour_texts([user_id], [item_id], self.config.rag_k,
                                                        self.config.rag_sources, [leave_out])[0]
            line = similar_reviews_line(retrieved, self.config.words)
            text += f" {line}" if line else ""
        return text

    def _discrete(self, user_id: str, item_id: str, training: bool = False) -> list[int]:
        text = self.prompt_text(user_id, item_id, training)
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def index_neighbours(self, train: pl.DataFrame) -> None:
        """The retrieval index over the training rows `train` (when rag_k > 0)."""
        c = self.config
        self.neighbours = None if not c.rag_k else NeighbourIndex.build(
            train[target_column(c.target)].to_list(), train["user_id"].to_list(), train["item_id"].to_list(),
            self.users, self.items, c.rag_embedding_model)

    @property
    def _sep(self) -> list[int]:
        return self.tokenizer(SEPARATOR, add_special_tokens=False).input_ids

    def _encode(self, df: pl.DataFrame, training: bool = False) -> list[dict[str, Any]]:
        col, words = target_column(self.config.target), self.config.words
        out = []
        for row in df.iter_rows(named=True):
            text = truncate_tokens(" ".join((row[col] or "").split()), words)
            tokens = self.tokenizer(text, add_special_tokens=False).input_ids[: 3 * words]
            tokens.append(self.tokenizer.eos_token_id)
            out.append({"user": self.users.get(row["user_id"]), "item": self.items.get(row["item_id"]),
                        "prefix": self._discrete(row["user_id"], row["item_id"], training) + self._sep,
                        "tokens": tokens, "rating": row["rating"]})
        return out

    def _embed_prefix(self, user: torch.Tensor, item: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.prompts(user, item), self.lm.get_input_embeddings()(prefix)], 1)

    def _batch(self, encoded: list[dict[str, Any]], idx: torch.Tensor,
               id_dropout: float = 0.0) -> dict[str, torch.Tensor]:
        rows = [encoded[i] for i in idx.tolist()]
        pad = self.tokenizer.pad_token_id
        seqs = [r["prefix"] + r["tokens"] for r in rows]
        labels = [[IGNORE] * (2 + len(r["prefix"])) + r["tokens"] for r in rows]
        user = torch.tensor([r["user"] for r in rows])
        item = torch.tensor([r["item"] for r in rows])
        if id_dropout > 0:
            user = user.masked_fill(torch.rand(len(rows)) < id_dropout, IdIndex.UNKNOWN)
            item = item.masked_fill(torch.rand(len(rows)) < id_dropout, IdIndex.UNKNOWN)
        ratings = [r["rating"] for r in rows]
        return {"user": user, "item": item, "tokens": pad_right(seqs, pad), "labels": pad_right(labels, IGNORE),
                "mask": pad_right([[1] * (2 + len(s)) for s in seqs], 0),
                "rating": torch.tensor([x if x is not None else 0.0 for x in ratings], dtype=torch.float32),
                "rating_mask": torch.tensor([x is not None for x in ratings], dtype=torch.float32)}

    def losses(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's scalar losses, named as `loss_terms` defines them: `nll_text` (mean over the
        text tokens and <eos>), `mse_rating` (over the rows with a rating; with a rating head) and
        their weighted sum `loss`, the optimised one."""
        device = self._device
        x = torch.cat([self.prompts(b["user"].to(device), b["item"].to(device)),
                       self.lm.get_input_embeddings()(b["tokens"].to(device))], 1)
        text = target_nll(self.lm, b["labels"].to(device), self.config.autocast,
                          inputs_embeds=x, attention_mask=b["mask"].to(device))
        out = {"loss": text, "nll_text": text}
        if self.prompts.head != "none":
            err = (self.prompts.rating(b["user"].to(device), b["item"].to(device)) - b["rating"].to(device)) ** 2
            rmask = b["rating_mask"].to(device)
            out["mse_rating"] = (err * rmask).sum() / rmask.sum().clamp(min=1)
            out["loss"] = text + self.config.rating_reg * out["mse_rating"]
        return out

    def loss_terms(self) -> dict[str, str]:
        """What each logged loss adds up, with this model's weights (the same for train and valid)."""
        if self.config.rating_head == "none":
            return {"loss": "nll_text"}
        return {"loss": f"1·nll_text + {self.config.rating_reg:g}·mse_rating",
                "criterion": "nll_text + mse_rating (valid only: early stopping, as PEPLER)"}

    @property
    def _device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # -- training ----------------------------------------------------------------------------
    def fit(self, dataset: Dataset) -> PromptLM:
        dataset.require(self.name, text=True)
        c = self.config
        set_threads(c.num_threads)
        train = target_rows(dataset, "train", c.target)
        valid = target_rows(dataset, "valid", c.target)
        if len(train) == 0 or len(valid) == 0:
            raise DataError(f"prompt_lm needs non-empty train and valid splits with a {c.target} text "
                            f"(got {len(train)} and {len(valid)} rows)")
        probe_rows = valid  # the collapse check draws from the whole split, not the loss's sample
        self.users, self.items = IdIndex(train["user_id"].to_list()), IdIndex(train["item_id"].to_list())
        self.user_aspects = self._aspect_words(train, "user_id")
        self.item_aspects = self._aspect_words(train, "item_id")
        self.index_neighbours(train)
        ratings = train["rating"].drop_nulls()
        self.rating_range = (float(ratings.min()), float(ratings.max()))
        self.rating = fit_rating_model(c.rating_model, dataset) if c.rating_head == "none" else None
        if c.max_train_samples and c.max_train_samples < len(train):
            train = train.sample(c.max_train_samples, seed=c.training.seed, shuffle=True)
        if c.max_valid_samples < len(valid):
            valid = valid.sample(c.max_valid_samples, seed=c.training.seed + 1, shuffle=True)
        self.lm, self.tokenizer = load_causal_lm(c.model, c.device)
        torch.manual_seed(c.training.seed)
        emb = self.lm.get_input_embeddings().weight
        self.prompts = ContinuousPrompts(len(self.users), len(self.items), emb.shape[1], c.rating_head,
                                         float(ratings.mean()), float(emb.detach().std())).to(self._device)
        tr, va = self._encode(train, training=True), self._encode(valid)
        fingerprint = self._fingerprint(train, valid)

        def valid_extra(out: dict[str, float]) -> dict[str, float]:
            if "mse_rating" in out:  # PEPLER early-stops on the unweighted sum
                out["criterion"] = out["nll_text"] + out["mse_rating"]
            return out

        terms = self.loss_terms()
        criterion = "criterion" if "criterion" in terms else "loss"
        self.training_log, kept = [], None
        for phase, lr, epochs in (("prompts", c.prompt_lr, c.prompt_epochs), ("full", c.full_lr, c.full_epochs)):
            if epochs == 0:
                continue
            for p in self.lm.parameters():
                p.requires_grad_(phase == "full")
            module = nn.ModuleDict({"prompts": self.prompts, "lm": self.lm}) if phase == "full" else self.prompts
            folder = c.training.checkpoint_dir
            settings = c.training.model_copy(update={"lr": lr, "max_epochs": epochs,
                                                     "checkpoint_dir": str(Path(folder) / phase) if folder else None})
            view = TrainableView(module)
            trainer = Trainer(view, settings, n_train=len(tr), n_valid=len(va), desc=f"prompt_lm [{phase}]",
                              make_batch=lambda idx, train: (self._batch(tr, idx, c.id_dropout) if train
                                                             else self._batch(va, idx)),
                              loss_fn=self.losses, valid_extra=valid_extra, fingerprint=f"{fingerprint}-{phase}",
                              criterion=criterion, terms=terms,
                              lengths=[2 + len(r["prefix"]) + len(r["tokens"]) for r in tr] if c.group_by_length
                              else None)
            result = trainer.fit()
            phase_log = [{"phase": phase, **entry} for entry in result.log]
            self.training_log += phase_log
            # the last phase's best epoch holds the weights that are kept
            kept = next(e for e in phase_log if e["epoch"] == result.best_epoch)
            self.lm_tuned |= phase == "full"
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.lm.eval()
        self.prompts.eval()
        kept = kept if kept is not None else {}  # no epoch (both phases 0): the signal of the untrained prompts
        sig = check_collapse(self, probe_rows, kept, len(train), len(self.training_log))
        self.training_summary = {"terms": terms, "best_phase": kept.get("phase"), "best_epoch": kept.get("epoch"),
                                 "epochs": len(self.training_log), "train_rows": len(train), "collapse": sig}
        self.is_fitted = True
        return self

    def _fingerprint(self, train: pl.DataFrame, valid: pl.DataFrame) -> str:
        skip = {"checkpoint_dir", "progress", "num_threads"} | COLLAPSE_SETTINGS
        h = hashlib.sha256(json.dumps({k: v for k, v in flat_settings(self.config).items() if k not in skip},
                                      sort_keys=True).encode())
        col = target_column(self.config.target)
        for df in (train, valid):
            h.update(df.select("user_id", "item_id", "rating", col).write_csv().encode())
        return h.hexdigest()

    # -- prediction --------------------------------------------------------------------------
    def _ids(self, requests: Sequence[FeedbackRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.users.lookup([r.user_id for r in requests])),
                torch.from_numpy(self.items.lookup([r.item_id for r in requests])))

    def predict_rating(self, requests: Sequence[FeedbackRequest]) -> np.ndarray:
        self.check_fitted()
        if self.prompts.head == "none":
            return self.rating.predict_rating(requests)
        user, item = self._ids(requests)
        with torch.no_grad():
            r = self.prompts.rating(user.to(self._device), item.to(self._device)).double().cpu().numpy()
        return self.clip(r)

    def generate_text(self, requests: list[FeedbackRequest], decoding: Decoding) -> tuple[list[str], list[dict]]:
        """Texts and meta per request; repeated 4-grams are blocked unless the caller set
        `no_repeat_ngram_size` (`decoding.loops.guard_loops`; meta["decoding_defaults"] says so)."""
        self.check_fitted()
        decoding, defaults = guard_loops(decoding)
        requests = with_seeds(requests, decoding)
        user, item = self._ids(requests)
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        device = self._device
        texts, metas = [], []
        for start in range(0, len(requests), decoding.batch_size):
            sl = slice(start, start + decoding.batch_size)
            prefixes = [self._discrete(r.user_id, r.item_id) + self._sep for r in requests[sl]]
            width = 2 + max(len(p) for p in prefixes)
            # left padding: every row ends with its separator, where writing starts
            mask = torch.tensor([[0] * (width - 2 - len(p)) + [1] * (2 + len(p)) for p in prefixes])
            u, i = user[sl].to(device), item[sl].to(device)
            # from inputs_embeds, generate's input_ids hold only the new tokens: no prompt to skip
            kwargs = hf_generate_kwargs(decoding, pad, eos, prompt_length=0, device=device,
                                        seeds=[stream_seed(r) for r in requests[sl]] if decoding.do_sample else None)
            with torch.no_grad():
                x = self._left_padded_inputs(u, i, prefixes, width)
                out = self.lm.generate(inputs_embeds=x, attention_mask=mask.to(device), **kwargs)
            for row, seq in enumerate(out.tolist()):
                stopped = eos in seq
                seq = seq[:seq.index(eos)] if stopped else seq
                texts.append(" ".join(self.tokenizer.decode(seq, skip_special_tokens=True).split()))
                metas.append({**provenance(GENERATED), "tokens": len(seq), "stopped": "eos" if stopped else "length",
                              "unknown_user": int(u[row]) == 0, "unknown_item": int(i[row]) == 0,
                              **({"decoding_defaults": defaults} if defaults else {})})
        return texts, metas

    def _left_padded_inputs(self, u: torch.Tensor, i: torch.Tensor, prefixes: list[list[int]], width: int):
        """Embeddings of [pad ... pad, user, item, prefix tokens], every row `width` long."""
        embed = self.lm.get_input_embeddings()
        vectors = self.prompts(u, i)
        pad = self.tokenizer.pad_token_id
        rows = []
        for r, p in enumerate(prefixes):
            n_pad = width - 2 - len(p)
            tokens = embed(torch.tensor([pad] * n_pad + p, device=u.device))
            rows.append(torch.cat([tokens[:n_pad], vectors[r], tokens[n_pad:]], 0))
        return torch.stack(rows)

    # -- state -------------------------------------------------------------------------------
    def get_state(self):
        tensors = {f"prompts.{k}": v for k, v in self.prompts.state_dict().items()}
        state = {"users": self.users, "items": self.items, "user_aspects": self.user_aspects,
                 "item_aspects": self.item_aspects, "lm_tuned": self.lm_tuned, "mean_rating": self.prompts.mean,
                 "hidden": self.prompts.user.weight.shape[1]}
        if self.rating is not None:
            rt, rs = rating_model_state(self.rating)
            tensors.update(rt)
            state.update(rs)
        if self.neighbours is not None:
            nt, ns = self.neighbours.get_state("rag.")
            tensors.update(nt)
            state.update(ns)
        return tensors, state

    def set_state(self, tensors, state):
        self.users, self.items = IdIndex.of(state["users"]), IdIndex.of(state["items"])
        self.user_aspects, self.item_aspects = state["user_aspects"], state["item_aspects"]
        self.lm_tuned = state["lm_tuned"]
        self.prompts = ContinuousPrompts(len(self.users), len(self.items), state["hidden"], self.config.rating_head,
                                         state["mean_rating"], 0.0)
        self.prompts.load_state_dict({k[len("prompts."):]: v for k, v in tensors.items() if k.startswith("prompts.")})
        self.prompts.eval()
        self.rating = rating_model_from_state(tensors, state) if "rating_model" in state else None
        self.neighbours = (NeighbourIndex.from_state(tensors, state, self.users, self.items, "rag.")
                           if self.config.rag_k else None)

    def save_extra(self, path: Path) -> None:
        if self.lm_tuned:
            self.lm.save_pretrained(path / "lm")
            self.tokenizer.save_pretrained(path / "lm")

    def load_extra(self, path: Path, arrays: dict[str, torch.Tensor]) -> None:
        source = str(path / "lm") if self.lm_tuned else self.config.model
        self.lm, self.tokenizer = load_causal_lm(source, self.config.device)
        self.prompts.to(self._device)
