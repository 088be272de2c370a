"""`peter`: the PErsonalized Transformer for Explainable Recommendation (Li, Zhang & Chen, ACL 2021).

One small transformer reads `[user, item, (aspect), <bos>, w1, w2, ...]` and does three jobs:

- the **rating head** (an MLP) reads the hidden state at the *user* position and predicts the star
  rating;
- the **context head** (the word decoder) reads the *item* position and predicts the bag of words
  of the target text;
- the **text head** (the same word decoder) reads every word position and predicts the next word.

The PETER attention mask is left-to-right (causal), except that the user position may also look at
the item position, so the rating and context heads see both IDs while every word sees only what
came before it:

        u  i  a  b  w1          (True = may attend)
    u   1  1  0  0  0
    i   1  1  0  0  0
    a   1  1  1  0  0
    b   1  1  1  1  0
    w1  1  1  1  1  1

Loss = `text_weight` × text NLL + `context_weight` × context NLL + `rating_weight` × rating MSE
(1, 1, 0.1 as in the paper). Early stopping watches the validation text NLL + rating MSE, as the
reference does. With `use_aspect=True` (PETER+), the aspect word of each training row (the
dataset's `aspect` column) is placed after the item; at generation the request's `aspect` goes
there, and the decoder learns to mention it.

Presets (`preset`; every other field given overrides the preset's value):

| field | `reference` (the published set-up) | `default` (faster and better on a 2-core CPU) |
|---|---|---|
| vocabulary | 20,000 most frequent words | words seen twice or more in training (≤ 20,000) |
| emsize / nhead / nlayers / nhid | 512 / 2 / 2 / 2048 | 256 / 4 / 2 / 1024 |
| dropout / label smoothing | 0.2 / 0 | 0.2 / 0 |
| layer norm / activation / tied embeddings | post-LN / ReLU / no | pre-LN / GELU / yes |
| optimiser | SGD lr 1.0, ×0.25 after each epoch without improvement | AdamW lr 2e-3, wd 0.01, warm-up 200 steps, cosine to 0.1× |
| clip / batch / patience | 1.0 / 128 / 5 misses | 1.0 / 128 / 5 misses |
| max epochs | 100 (the reference's default) | 15 |
| ID dropout (learns the "unknown" embedding) | 0 | 0.03 |

On the PETER-format Musical Instruments (split 1, greedy, 20 new tokens), the `default` preset
trained in about 12 epochs (best at 7) to BLEU-1/4 16.6 / 1.45, ROUGE-1/2/L F 23.7 / 3.6 / 18.5,
USR 0.48, FMR 0.24, FCR 0.27, DIV 0.21, RMSE 0.94 (the reference code after 8 epochs: 20.8 / 0.89,
23.4 / 2.5 / 18.1, USR 0.17, FMR 0.19, FCR 0.09, DIV 1.03, RMSE 0.94); other seeds and nearby
settings moved ROUGE-L by ±0.3 and USR between 0.4 and 0.7. It trains at about 490 samples/s and
generates about 1,700 samples/s at batch 128 on two idle cores (the reference: 64 and 8.4).
The sub-word vocabulary (`vocab="bpe"`), emsize 512, 3 layers, more dropout, label smoothing and
other learning rates were tried and did no better here. Greedy outputs are shorter than the
references (about 10 tokens against 15), which costs BLEU-1 its brevity penalty.

Targets: `target="explanation"` (the dataset's `explanation` column, the aspect sentence PETER
was built for, `max_words` 20 by default) or `target="review"` (the whole `text`, 60 words by
default). Longer texts are cut after `max_words` words (PETER's `--words`).

Unknown users, items and aspects at generation time map to index 0 of their `IdIndex`, whose
embedding is learnt by ID dropout (each training row's user, item and aspect are replaced by 0
with probability `id_dropout`); with `id_dropout=0` that embedding stays at its random start, so
such requests still get a (generic) answer, never an error. `Feedback.meta` says when an ID was
unknown.

Decoding (`feedbackgen.config.Decoding`) runs batched with a key/value cache: greedy, beam search
(`num_beams`), or sampling (`do_sample` with `temperature`, `top_k`, `top_p`), with
`repetition_penalty`, `no_repeat_ngram_size` and `min_new_tokens`; each row stops at its own end-of-sentence and the
finished rows are padded. Beam hypotheses are ranked by their mean log-probability per token, and
a row's search ends once it has `num_beams` finished hypotheses. `<pad>`, `<bos>` and `<unk>` are
never generated, and the first token is never `<eos>`. Generated text is returned as space-separated tokens in the form of
`feedbackgen.data.text.tokenize` (so metrics compare like with like): the model's words (or
sub-word pieces glued back into words) are joined and re-split by `tokenize`.

Training can run data-parallel on several processes (`torchrun --nproc_per_node N -m
feedbackgen.cli train ...`; `feedbackgen.models.distributed`), and differentially private with
DP-SGD (`dp_epsilon`, `dp_delta`, `dp_max_grad_norm`; `feedbackgen.models.privacy`): the spent
(ε, δ) is in `privacy`, in `state.json` and in each training-log entry. DP training computes the
losses per row (each row's text and context NLL averaged over its own words), since DP-SGD clips
one gradient per row; the ordinary path averages over every word of the batch, as the reference.
See docs/training.md.

Differences from lileipisces/PETER worth knowing: the vocabulary is built from the training split
only (the reference counts every split); the context loss counts the target's words without
`<eos>`; the rating head's output bias starts at the mean training rating; padding is trimmed per
batch instead of padding every batch to `max_words`; the first epoch is shuffled too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from feedbackgen.config import Decoding, StrictModel
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.text import tokenize
from feedbackgen.errors import ConfigError, DataError
from feedbackgen.models import distributed
from feedbackgen.models.base import Generator, IdIndex, register
from feedbackgen.models.privacy import PrivacySettings, default_delta
from feedbackgen.models.text_units import Target, target_column, target_rows
from feedbackgen.models.trainer import Trainer, TrainSettings, read_checkpoint_extra
from feedbackgen.models.vocab import BOS, EOS, PAD, UNK, Vocab
from feedbackgen.types import FeedbackRequest

# -- configuration -------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "reference": dict(
        vocab="word", vocab_size=20000, min_count=1,
        emsize=512, nhead=2, nlayers=2, nhid=2048, dropout=0.2,
        norm_first=False, activation="relu", tie_weights=False,
        optimizer="sgd", lr=1.0, weight_decay=0.0, schedule="plateau", lr_decay=0.25, warmup_steps=0,
        clip=1.0, batch_size=128, max_epochs=100, patience=5, id_dropout=0.0, label_smoothing=0.0,
    ),
    "default": dict(
        vocab="word", vocab_size=20000, min_count=2,
        emsize=256, nhead=4, nlayers=2, nhid=1024, dropout=0.2,
        norm_first=True, activation="gelu", tie_weights=True,
        optimizer="adamw", lr=2e-3, weight_decay=0.01, schedule="cosine", lr_decay=0.25, warmup_steps=200,
        clip=1.0, batch_size=128, max_epochs=15, patience=5, id_dropout=0.03, label_smoothing=0.0,
    ),
}
MAX_WORDS = {"explanation": 20, "review": 60}
MAX_NEW_TOKENS = 1024  # the largest `Decoding.max_new_tokens`: positions are encoded up to here


class PeterConfig(StrictModel):
    """Fields left out (or None) take the value of `preset` (see the module docstring)."""

    preset: Literal["default", "reference"] = "default"
    target: Target = "explanation"
    use_aspect: bool = Field(False, description="PETER+: put the aspect word after the IDs")
    max_words: int = Field(None, ge=1, le=1000, description="target words kept (PETER's --words)")
    # vocabulary
    vocab: Literal["word", "bpe"] = None
    vocab_size: int = Field(None, ge=10, le=200_000)
    min_count: int = Field(None, ge=1, le=1000, description="word: min occurrences; bpe: min pair count")
    # architecture
    emsize: int = Field(None, ge=8, le=4096)
    nhead: int = Field(None, ge=1, le=64)
    nlayers: int = Field(None, ge=1, le=48)
    nhid: int = Field(None, ge=8, le=16384, description="feed-forward width")
    dropout: float = Field(None, ge=0.0, lt=1.0)
    norm_first: bool = Field(None, description="pre-LN (True) or post-LN as in the reference (False)")
    activation: Literal["relu", "gelu"] = None
    tie_weights: bool = Field(None, description="share the word embedding with the word decoder")
    # loss
    text_weight: float = Field(1.0, ge=0.0, le=100.0)
    context_weight: float = Field(1.0, ge=0.0, le=100.0)
    rating_weight: float = Field(0.1, ge=0.0, le=100.0)
    label_smoothing: float = Field(None, ge=0.0, lt=1.0, description="on the text loss")
    id_dropout: float = Field(None, ge=0.0, le=0.5, description="share of training IDs replaced by 'unknown'")
    # optimisation
    optimizer: Literal["sgd", "adamw"] = None
    lr: float = Field(None, gt=0.0, le=100.0)
    weight_decay: float = Field(None, ge=0.0, le=1.0)
    schedule: Literal["plateau", "cosine"] = None
    lr_decay: float = Field(None, gt=0.0, le=1.0, description="plateau: lr factor after a miss")
    warmup_steps: int = Field(None, ge=0, le=1_000_000)
    clip: float = Field(None, ge=0.0, le=1000.0, description="gradient-norm clip (0 = off)")
    batch_size: int = Field(None, ge=1, le=65536)
    max_epochs: int = Field(None, ge=1, le=10000)
    patience: int = Field(None, ge=1, le=1000, description="epochs without improvement before stopping")
    seed: int = Field(1, ge=0)
    # differential privacy (DP-SGD with opacus)
    dp_epsilon: float | None = Field(None, gt=0.0, le=1000.0,
                                     description="train with DP-SGD spending at most this ε (None = no DP)")
    dp_delta: float | None = Field(None, gt=0.0, lt=1.0,
                                   description="δ of the DP guarantee (None = min(1e-5, 1/(10 × training rows)))")
    dp_max_grad_norm: float | None = Field(None, gt=0.0, le=1000.0,
                                           description="DP: each row's gradient is clipped to this norm (None = 1.0)")
    dp_accountant: Literal["rdp", "prv"] = Field("rdp", description="DP: opacus's privacy accountant")
    dp_seed: int | None = Field(None, ge=0, description="DP: seed of the noise and the batch sampling "
                                "(None = from the OS; a known seed voids the guarantee: tests only)")
    # running
    checkpoint_dir: str | None = Field(None, description="resumable training state, written every epoch")
    progress: bool = True
    num_threads: int | None = Field(None, ge=1, le=1024, description="torch threads (None = torch's choice)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        preset = values.get("preset") or "default"
        if preset in PRESETS:
            for key, value in PRESETS[preset].items():
                if values.get(key) is None:
                    values[key] = value
        if values.get("max_words") is None:
            values["max_words"] = MAX_WORDS.get(values.get("target") or "explanation", 20)
        if values.get("dp_epsilon") is not None and values.get("dp_max_grad_norm") is None:
            values["dp_max_grad_norm"] = 1.0
        return values

    @model_validator(mode="after")
    def _check_heads(self) -> PeterConfig:
        if self.emsize % self.nhead:
            raise ValueError(f"emsize ({self.emsize}) must be divisible by nhead ({self.nhead})")
        if self.dp_epsilon is None and (self.dp_delta is not None or self.dp_max_grad_norm is not None
                                        or self.dp_seed is not None):
            raise ValueError("dp_delta, dp_max_grad_norm and dp_seed apply only to differentially private "
                             "training: set dp_epsilon too, or leave them out")
        return self


# -- the network ---------------------------------------------------------------------------------

@dataclass
class PeterShape:
    n_users: int
    n_items: int
    n_aspects: int  # 0 = no aspect slot
    n_tokens: int
    emsize: int = 256
    nhead: int = 4
    nlayers: int = 2
    nhid: int = 1024
    dropout: float = 0.2
    norm_first: bool = True
    activation: str = "gelu"
    tie_weights: bool = True
    max_len: int = 1100


def peter_mask(n_queries: int, n_keys: int | None = None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask, True where attention is allowed: causal, plus user -> item.

    Queries are the last `n_queries` of `n_keys` positions (a cached prefix comes first)."""
    n_keys = n_queries if n_keys is None else n_keys
    start = n_keys - n_queries
    q = torch.arange(start, n_keys).unsqueeze(1)
    k = torch.arange(n_keys).unsqueeze(0)
    mask = k <= q
    if start == 0 and n_queries > 0 and n_keys > 1:
        mask[0, 1] = True  # the user position also sees the item
    return mask


class KVCache:
    """Keys and values of the positions decoded so far, per layer: (B, H, max_len, D) buffers."""

    def __init__(self, n_layers: int, batch: int, nhead: int, max_len: int, head_dim: int):
        self.k = torch.zeros(n_layers, batch, nhead, max_len, head_dim)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


class SelfAttention(nn.Module):
    def __init__(self, s: PeterShape):
        super().__init__()
        self.nhead, self.dropout = s.nhead, s.dropout
        self.qkv = nn.Linear(s.emsize, 3 * s.emsize)
        self.proj = nn.Linear(s.emsize, s.emsize)

    def forward(self, x, mask, cache: KVCache | None, layer: int):
        B, T, E = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.nhead, E // self.nhead).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, E))


class Block(nn.Module):
    def __init__(self, s: PeterShape):
        super().__init__()
        self.norm_first = s.norm_first
        self.attn = SelfAttention(s)
        self.ln1, self.ln2 = nn.LayerNorm(s.emsize), nn.LayerNorm(s.emsize)
        act = nn.GELU() if s.activation == "gelu" else nn.ReLU()
        self.ffn = nn.Sequential(nn.Linear(s.emsize, s.nhid), act, nn.Dropout(s.dropout),
                                 nn.Linear(s.nhid, s.emsize))
        self.drop = nn.Dropout(s.dropout)

    def forward(self, x, mask, cache, layer):
        if self.norm_first:
            x = x + self.drop(self.attn(self.ln1(x), mask, cache, layer))
            return x + self.drop(self.ffn(self.ln2(x)))
        x = self.ln1(x + self.drop(self.attn(x, mask, cache, layer)))
        return self.ln2(x + self.drop(self.ffn(x)))


def sinusoidal(max_len: int, dim: int) -> torch.Tensor:
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(max_len, dim)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class PETER(nn.Module):
    """The network. `forward` returns hidden states; the heads are `logits`, `rating`, `losses`."""

    def __init__(self, s: PeterShape, mean_rating: float = 0.0):
        super().__init__()
        self.shape = s
        self.prefix_len = 3 if s.n_aspects else 2  # positions before <bos>
        self.user_emb = nn.Embedding(s.n_users, s.emsize)
        self.item_emb = nn.Embedding(s.n_items, s.emsize)
        self.aspect_emb = nn.Embedding(s.n_aspects, s.emsize) if s.n_aspects else None
        self.word_emb = nn.Embedding(s.n_tokens, s.emsize)
        self.register_buffer("pe", sinusoidal(s.max_len, s.emsize), persistent=False)
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.nlayers))
        self.ln_f = nn.LayerNorm(s.emsize) if s.norm_first else nn.Identity()
        self.head = nn.Linear(s.emsize, s.n_tokens)
        self.rating_mlp = nn.Sequential(nn.Linear(s.emsize, s.emsize), nn.Sigmoid(), nn.Linear(s.emsize, 1))
        for emb in (self.user_emb, self.item_emb, self.aspect_emb, self.word_emb, self.head,
                    self.rating_mlp[0], self.rating_mlp[2]):
            if emb is not None:
                nn.init.uniform_(emb.weight, -0.1, 0.1)
        for lin in (self.head, self.rating_mlp[0], self.rating_mlp[2]):
            nn.init.zeros_(lin.bias)
        nn.init.constant_(self.rating_mlp[2].bias, mean_rating)
        if s.tie_weights:
            self.head.weight = self.word_emb.weight

    def forward(self, user, item, tokens, aspect=None, cache: KVCache | None = None) -> torch.Tensor:
        """Hidden states (B, T, E). Without a cache (or with an empty one) the input is the whole
        sequence `[user, item, (aspect), tokens...]`; with a filled cache, just the new `tokens`."""
        s = self.shape
        start = 0 if cache is None else cache.length
        x = self.word_emb(tokens)
        if start == 0:
            prefix = [self.user_emb(user), self.item_emb(item)]
            if self.aspect_emb is not None:
                prefix.append(self.aspect_emb(aspect))
            x = torch.cat([torch.stack(prefix, 1), x], 1)
        T = x.size(1)
        x = self.drop(x * math.sqrt(s.emsize) + self.pe[start:start + T])
        mask = None if (T == 1 and start > 0) else peter_mask(T, start + T).to(x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def rating(self, user_hidden: torch.Tensor) -> torch.Tensor:
        return self.rating_mlp(user_hidden).squeeze(-1)

    def predict_rating(self, user, item) -> torch.Tensor:
        """Ratings from `[user, item]` alone: under the PETER mask nothing later reaches the user."""
        x = torch.stack([self.user_emb(user), self.item_emb(item)], 1) * math.sqrt(self.shape.emsize)
        x = self.drop(x + self.pe[:2])
        mask = peter_mask(2).to(x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None, i)
        return self.rating(self.ln_f(x)[:, 0])

    def losses(self, batch: dict[str, torch.Tensor], weights: tuple[float, float, float],
               label_smoothing: float = 0.0, per_row: bool = False) -> dict[str, torch.Tensor]:
        """Text NLL, context NLL, rating MSE and their weighted sum ("loss") for one batch.

        batch: user, item, (aspect), inputs = [<bos>, w1..wn] and targets = [w1..wn, <eos>]
        (both padded with <pad>, which is ignored), rating, rating_mask.
        per_row: each term is first averaged within each row, then over the rows (DP-SGD)."""
        if per_row:
            return self._row_losses(batch, weights, label_smoothing)
        h = self.forward(batch["user"], batch["item"], batch["inputs"], batch.get("aspect"))
        P = self.prefix_len
        targets = batch["targets"]
        real = targets != PAD
        text = F.cross_entropy(self.logits(h[:, P:][real]), targets[real], label_smoothing=label_smoothing)
        words = real & (targets != EOS)
        ctx_logp = F.log_softmax(self.logits(h[:, 1]), dim=-1)  # the item position
        ctx = -(ctx_logp.gather(1, targets) * words).sum() / words.sum().clamp(min=1)
        rmask = batch["rating_mask"]
        err = (self.rating(h[:, 0]) - batch["rating"]) ** 2 * rmask
        rating = err.sum() / rmask.sum().clamp(min=1)
        wt, wc, wr = weights
        return {"loss": wt * text + wc * ctx + wr * rating, "text": text, "context": ctx, "rating": rating}

    def _row_losses(self, batch, weights, label_smoothing: float) -> dict[str, torch.Tensor]:
        """`losses` with every term a mean over rows of that row's own loss, so each row's
        gradient depends on that row alone (DP-SGD clips it per row; a batch-wide word average
        would let one row's length weigh every other row's gradient). The word decoder runs on
        (B, T, E) rather than on the packed real positions: opacus needs the batch first."""
        h = self.forward(batch["user"], batch["item"], batch["inputs"], batch.get("aspect"))
        targets = batch["targets"]
        real = (targets != PAD).float()
        nll = F.cross_entropy(self.logits(h[:, self.prefix_len:]).transpose(1, 2), targets,
                              reduction="none", label_smoothing=label_smoothing)
        text = (nll * real).sum(1) / real.sum(1).clamp(min=1)
        words = real * (targets != EOS).float()
        ctx_logp = F.log_softmax(self.logits(h[:, 1]), dim=-1)
        ctx = -(ctx_logp.gather(1, targets) * words).sum(1) / words.sum(1).clamp(min=1)
        rating = (self.rating(h[:, 0]) - batch["rating"]) ** 2 * batch["rating_mask"]
        wt, wc, wr = weights
        loss = wt * text + wc * ctx + wr * rating
        return {"loss": loss.mean(), "text": text.mean(), "context": ctx.mean(), "rating": rating.mean()}

    # -- decoding ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, user, item, aspect, d: Decoding, generator: torch.Generator | None = None,
                 use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(tokens (B, max_new_tokens) padded after <eos>, finished (B,), beam scores or None)."""
        if d.num_beams > 1:
            if d.do_sample:
                raise ConfigError("beam sampling is not supported: use num_beams=1 with do_sample, "
                                  "or do_sample=false with num_beams>1")
            return self._beam_search(user, item, aspect, d, d.num_beams, use_cache)
        B = user.size(0)
        bos = torch.full((B, 1), BOS, dtype=torch.long)
        cache = self._new_cache(B, d.max_new_tokens) if use_cache else None
        logits = self.logits(self.forward(user, item, bos, aspect, cache)[:, -1])
        out = torch.full((B, d.max_new_tokens), PAD, dtype=torch.long)
        finished = torch.zeros(B, dtype=torch.bool)
        for t in range(d.max_new_tokens):
            scores = process_logits(logits, out[:, :t], t, d)
            if d.do_sample:
                nxt = sample(scores, d, generator)
            else:
                nxt = scores.argmax(-1)
            nxt = nxt.masked_fill(finished, PAD)
            out[:, t] = nxt
            finished |= nxt == EOS
            if finished.all() or t == d.max_new_tokens - 1:
                break
            if cache is not None:
                h = self.forward(user, item, nxt.unsqueeze(1), aspect, cache)
            else:
                h = self.forward(user, item, torch.cat([bos, out[:, :t + 1]], 1), aspect)
            logits = self.logits(h[:, -1])
        return out, finished, None

    def _new_cache(self, batch: int, max_new_tokens: int) -> KVCache:
        s = self.shape
        return KVCache(s.nlayers, batch, s.nhead, self.prefix_len + 1 + max_new_tokens, s.emsize // s.nhead)

    def _beam_search(self, user, item, aspect, d: Decoding, K: int, use_cache: bool):
        B, V, L = user.size(0), self.shape.n_tokens, d.max_new_tokens
        user, item = user.repeat_interleave(K), item.repeat_interleave(K)
        aspect = aspect.repeat_interleave(K) if aspect is not None else None
        bos = torch.full((B * K, 1), BOS, dtype=torch.long)
        cache = self._new_cache(B * K, L) if use_cache else None
        logits = self.logits(self.forward(user, item, bos, aspect, cache)[:, -1])
        seqs = torch.full((B * K, 0), PAD, dtype=torch.long)
        beam_scores = torch.zeros(B, K)
        beam_scores[:, 1:] = -math.inf  # all beams start equal: keep one
        hyps: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B
        for t in range(L):
            logp = F.log_softmax(process_logits(logits, seqs, t, d), dim=-1)
            cand = (beam_scores.view(-1, 1) + logp).view(B, K * V)
            top_scores, top_idx = cand.topk(2 * K, dim=1)
            origin, token = top_idx // V, top_idx % V
            new_scores = torch.full((B, K), -math.inf)
            new_origin = torch.arange(B).unsqueeze(1) * K + torch.zeros(B, K, dtype=torch.long)
            new_token = torch.full((B, K), PAD, dtype=torch.long)
            ts, to, tt = top_scores.tolist(), origin.tolist(), token.tolist()
            for b in range(B):
                if done[b]:
                    continue
                j = 0
                for score, o, tok in zip(ts[b], to[b], tt[b]):
                    if score == -math.inf:
                        break
                    if tok == EOS:
                        if len(hyps[b]) < K:
                            hyps[b].append((score / (t + 1), seqs[b * K + o].tolist() + [EOS]))
                        continue
                    new_scores[b, j], new_origin[b, j], new_token[b, j] = score, b * K + o, tok
                    j += 1
                    if j == K:
                        break
                if len(hyps[b]) >= K or j == 0:
                    done[b] = True
            if all(done) or t == L - 1:
                break
            index = new_origin.view(-1)
            seqs = torch.cat([seqs[index], new_token.view(-1, 1)], 1)
            beam_scores = new_scores
            if cache is not None:
                cache.reorder(index)
                h = self.forward(user, item, new_token.view(-1, 1), aspect, cache)
            else:
                h = self.forward(user, item, torch.cat([bos, seqs], 1), aspect)
            logits = self.logits(h[:, -1])
        if not all(done):  # rows that ran out of length: their live beams count as hypotheses
            for b in range(B):
                if done[b]:
                    continue
                for j in range(K):
                    if new_scores[b, j] == -math.inf:
                        continue
                    seq = seqs[new_origin[b, j]].tolist() + [int(new_token[b, j])]
                    hyps[b].append((float(new_scores[b, j]) / max(1, len(seq)), seq))
        out = torch.full((B, L), PAD, dtype=torch.long)
        finished = torch.zeros(B, dtype=torch.bool)
        scores = torch.full((B,), -math.inf)
        for b in range(B):
            if not hyps[b]:
                continue
            score, seq = max(hyps[b], key=lambda h: h[0])
            seq = seq[:L]
            out[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            finished[b] = EOS in seq
            scores[b] = score
        return out, finished, scores


# -- logits processing and sampling (Hugging Face semantics) -------------------------------------

NEVER = (PAD, BOS, UNK)


def process_logits(logits: torch.Tensor, generated: torch.Tensor, t: int, d: Decoding) -> torch.Tensor:
    """Ban special tokens (and <eos> before `min_new_tokens`, at least one), then apply repetition
    penalty and n-gram blocking."""
    scores = logits.float().clone()
    scores[:, list(NEVER)] = -math.inf
    if t < max(1, d.min_new_tokens):
        scores[:, EOS] = -math.inf
    if d.repetition_penalty != 1.0 and generated.size(1):
        prev = scores.gather(1, generated)
        prev = torch.where(prev < 0, prev * d.repetition_penalty, prev / d.repetition_penalty)
        scores.scatter_(1, generated, prev)
    n = d.no_repeat_ngram_size
    if n and generated.size(1) >= n - 1:
        for row, seq in enumerate(generated.tolist()):
            banned = banned_ngram_tokens(seq, n)
            if banned:
                scores[row, banned] = -math.inf
    return scores


def banned_ngram_tokens(seq: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in `seq`."""
    if n == 1:
        return list(set(seq))
    if len(seq) < n:
        return []
    prefix = tuple(seq[len(seq) - n + 1:])
    return [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix]


def sample(scores: torch.Tensor, d: Decoding, generator: torch.Generator | None) -> torch.Tensor:
    scores = scores / d.temperature
    if d.top_k:
        kth = scores.topk(min(d.top_k, scores.size(-1)), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if d.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop = cum - sorted_scores.softmax(-1) >= d.top_p  # keep the smallest set reaching top_p
        scores = scores.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)


# -- the generator -------------------------------------------------------------------------------

@register
class Peter(Generator):
    """PETER as a `Generator`: `fit(dataset)`, `generate(requests, decoding)`, `save`/`load`."""

    name = "peter"
    Config = PeterConfig
    data_parallel = True  # `fit` trains with DDP under torchrun (feedbackgen.models.distributed)

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.model: PETER | None = None
        self.vocab: Vocab | None = None
        self.training_log: list[dict[str, Any]] = []
        self.privacy: dict[str, Any] | None = None  # the spent (ε, δ) of a DP-trained model

    # -- data --------------------------------------------------------------------------------
    def _rows(self, dataset: Dataset, split: str) -> pl.DataFrame:
        df = target_rows(dataset, split, self.config.target)
        if self.config.use_aspect and "aspect" not in df.columns:
            raise DataError("use_aspect=True needs an 'aspect' column in the dataset "
                            "(prepare it with aspect extraction), or set use_aspect=false")
        return df

    def _sentences(self, df: pl.DataFrame) -> list[list[str]]:
        n = self.config.max_words
        return [tokenize(t)[:n] for t in df[target_column(self.config.target)].to_list()]

    def _encode(self, df: pl.DataFrame) -> dict[str, torch.Tensor]:
        """Rows as tensors; `seq` = <bos> ids <eos> padded to the longest row."""
        ids = self.vocab.encode_batch(self._sentences(df))
        width = max((len(x) for x in ids), default=0) + 2
        seq = np.full((len(ids), width), PAD, dtype=np.int64)
        for r, x in enumerate(ids):
            seq[r, 0], seq[r, 1:len(x) + 1], seq[r, len(x) + 1] = BOS, x, EOS
        rating = df["rating"].cast(pl.Float32)
        out = {
            "user": torch.from_numpy(self.users.lookup(df["user_id"].to_list())),
            "item": torch.from_numpy(self.items.lookup(df["item_id"].to_list())),
            "seq": torch.from_numpy(seq),
            "length": torch.tensor([len(x) + 2 for x in ids], dtype=torch.long),
            "rating": torch.from_numpy(rating.fill_null(0.0).to_numpy().astype(np.float32)),
            "rating_mask": torch.from_numpy(rating.is_not_null().to_numpy().astype(np.float32)),
        }
        if self.config.use_aspect:
            out["aspect"] = torch.from_numpy(self.aspects.lookup(df["aspect"].fill_null("").to_list()))
        return out

    @staticmethod
    def _batch(data: dict[str, torch.Tensor], idx: torch.Tensor,
               id_dropout: float = 0.0) -> dict[str, torch.Tensor]:
        """Rows `idx` trimmed to their longest sequence; IDs replaced by "unknown" at `id_dropout`."""
        width = int(data["length"][idx].max())
        seq = data["seq"][idx, :width]
        batch = {k: data[k][idx] for k in ("user", "item", "rating", "rating_mask", "aspect") if k in data}
        batch["inputs"], batch["targets"] = seq[:, :-1], seq[:, 1:]
        if id_dropout > 0:
            for key in ("user", "item", "aspect"):
                if key in batch:
                    drop = torch.rand(len(idx)) < id_dropout
                    batch[key] = batch[key].masked_fill(drop, IdIndex.UNKNOWN)
        return batch

    def _fingerprint(self, train: pl.DataFrame, valid: pl.DataFrame) -> str:
        skip = {"checkpoint_dir", "progress", "num_threads"}
        if self.config.dp_epsilon is None:  # so that checkpoints from before DP existed still resume
            skip |= {"dp_epsilon", "dp_delta", "dp_max_grad_norm", "dp_accountant", "dp_seed"}
        cfg = {k: v for k, v in self.config.model_dump().items() if k not in skip}
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        cols = ["user_id", "item_id", "rating", target_column(self.config.target)]
        if self.config.use_aspect:
            cols.append("aspect")
        for df in (train, valid):
            h.update(df.select(cols).write_csv().encode())
        return h.hexdigest()

    # -- training ----------------------------------------------------------------------------
    def fit(self, dataset: Dataset) -> Peter:
        dataset.require(self.name, text=True)
        c = self.config
        if c.num_threads:
            torch.set_num_threads(c.num_threads)
        if c.dp_epsilon is not None and distributed.requested():
            raise ConfigError("dp_epsilon (differentially private training) runs in one process: "
                              "start it without torchrun, or drop dp_epsilon for data-parallel training")
        world = distributed.setup()  # joins torchrun's process group; one process otherwise
        train, valid = self._rows(dataset, "train"), self._rows(dataset, "valid")
        if len(train) == 0 or len(valid) == 0:
            raise DataError(f"peter needs non-empty train and valid splits with a {c.target} text "
                            f"(got {len(train)} and {len(valid)} rows)")
        fingerprint = self._fingerprint(train, valid)
        saved = read_checkpoint_extra(c.checkpoint_dir)
        if saved is not None and saved.get("fingerprint") == fingerprint:
            self.vocab = Vocab.from_str(saved["vocab"])  # a BPE vocabulary may differ when retrained
        elif c.vocab == "word":
            self.vocab = Vocab.train_words(self._sentences(train), c.vocab_size, c.min_count)
        else:
            self.vocab = Vocab.train_bpe(self._sentences(train), c.vocab_size, c.min_count)
        self.users, self.items = IdIndex(train["user_id"].to_list()), IdIndex(train["item_id"].to_list())
        self.aspects = IdIndex(train["aspect"].drop_nulls().to_list()) if c.use_aspect else None
        ratings = train["rating"].drop_nulls()
        if len(ratings):
            self.rating_range = (float(ratings.min()), float(ratings.max()))
        torch.manual_seed(c.seed)
        self.model = PETER(self._shape(), float(ratings.mean()) if len(ratings) else 0.0)
        tr, va = self._encode(train), self._encode(valid)
        weights = (c.text_weight, c.context_weight, c.rating_weight)

        def valid_fn() -> dict[str, float]:
            self.model.eval()
            sums, n = {}, len(valid)
            mine = torch.arange(world.rank, n, world.size)  # this rank's rows (all of them in one process)
            with torch.no_grad():
                for start in range(0, len(mine), c.batch_size):
                    idx = mine[start:start + c.batch_size]
                    for k, v in self.model.losses(self._batch(va, idx), weights).items():
                        sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            if world.parallel:  # every rank then decides on the same numbers
                keys = ["loss", "text", "context", "rating"]
                sums = dict(zip(keys, distributed.sum_across([sums.get(k, 0.0) for k in keys])))
            out = {k: v / n for k, v in sums.items()}
            out["weighted"] = out["loss"]
            out["loss"] = out["text"] + out["rating"]  # the reference's early-stopping criterion
            return out

        settings = TrainSettings(
            optimizer=c.optimizer, lr=c.lr, weight_decay=c.weight_decay, schedule=c.schedule,
            warmup_steps=c.warmup_steps, lr_decay=c.lr_decay, clip=c.clip, batch_size=c.batch_size,
            max_epochs=c.max_epochs, patience=c.patience, seed=c.seed, checkpoint_dir=c.checkpoint_dir,
            progress=c.progress, desc="peter")
        per_row = c.dp_epsilon is not None
        if per_row:
            settings.privacy = PrivacySettings(
                epsilon=c.dp_epsilon, delta=c.dp_delta if c.dp_delta is not None else default_delta(len(train)),
                max_grad_norm=c.dp_max_grad_norm, accountant=c.dp_accountant, seed=c.dp_seed)
        trainer = Trainer(self.model, settings, n_train=len(train),
                          make_batch=lambda idx, _train: self._batch(tr, idx, c.id_dropout),
                          loss_fn=lambda b: self.model.losses(b, weights, c.label_smoothing, per_row),
                          valid_fn=valid_fn,
                          fingerprint=fingerprint,
                          extra={"fingerprint": fingerprint, "vocab": self.vocab.to_str()})
        result = trainer.fit()
        self.training_log = result.log
        self.privacy = result.privacy
        self.model.eval()
        self.is_fitted = True
        return self

    def _shape(self, n_tokens: int | None = None) -> PeterShape:
        c = self.config
        return PeterShape(
            n_users=len(self.users), n_items=len(self.items),
            n_aspects=len(self.aspects) if self.aspects is not None else 0,
            n_tokens=n_tokens if n_tokens is not None else len(self.vocab),
            emsize=c.emsize, nhead=c.nhead, nlayers=c.nlayers, nhid=c.nhid, dropout=c.dropout,
            norm_first=c.norm_first, activation=c.activation, tie_weights=c.tie_weights,
            max_len=3 + 2 + max(self.config.max_words, MAX_NEW_TOKENS))

    # -- prediction --------------------------------------------------------------------------
    def _ids(self, requests: Sequence[FeedbackRequest]):
        users = torch.from_numpy(self.users.lookup([r.user_id for r in requests]))
        items = torch.from_numpy(self.items.lookup([r.item_id for r in requests]))
        aspects = None
        if self.aspects is not None:
            aspects = torch.from_numpy(self.aspects.lookup([r.aspect or "" for r in requests]))
        return users, items, aspects

    def predict_rating(self, requests: Sequence[FeedbackRequest]) -> np.ndarray:
        self.check_fitted()
        users, items, _ = self._ids(requests)
        out = []
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(requests), 1024):
                out.append(self.model.predict_rating(users[start:start + 1024], items[start:start + 1024]))
        return self.clip(torch.cat(out).numpy() if out else np.zeros(0))

    def generate_text(self, requests: list[FeedbackRequest], decoding: Decoding,
                      use_cache: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
        self.check_fitted()
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        users, items, aspects = self._ids(requests)
        generator = torch.Generator().manual_seed(decoding.seed)
        texts, metas = [], []
        self.model.eval()
        for start in range(0, len(requests), decoding.batch_size):
            sl = slice(start, start + decoding.batch_size)
            out, finished, scores = self.model.generate(
                users[sl], items[sl], aspects[sl] if aspects is not None else None, decoding,
                generator, use_cache)
            for r, row in enumerate(out.tolist()):
                i = start + r
                words = tokenize(" ".join(self.vocab.decode(row)))
                texts.append(" ".join(words))
                meta = {"tokens": len(words), "stopped": "eos" if bool(finished[r]) else "length",
                        "unknown_user": int(users[i]) == 0, "unknown_item": int(items[i]) == 0}
                if aspects is not None:
                    meta["unknown_aspect"] = int(aspects[i]) == 0
                if scores is not None:
                    meta["beam_score"] = float(scores[r])
                metas.append(meta)
        return texts, metas

    # -- state -------------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {k: v for k, v in self.model.state_dict().items()
                   if not (self.config.tie_weights and k == "head.weight")}
        state = {"users": self.users.ids, "items": self.items.ids,
                 "aspects": self.aspects.ids if self.aspects is not None else None,
                 "n_tokens": self.model.shape.n_tokens}
        if self.privacy is not None:
            state["privacy"] = self.privacy
        return tensors, state

    def set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.users, self.items = IdIndex(state["users"]), IdIndex(state["items"])
        self.aspects = IdIndex(state["aspects"]) if state.get("aspects") is not None else None
        self.privacy = state.get("privacy")
        self.model = PETER(self._shape(state["n_tokens"]))
        if self.config.tie_weights:
            tensors = {**tensors, "head.weight": tensors["word_emb.weight"]}
        self.model.load_state_dict(tensors)
        self.model.eval()

    def save(self, path: str | Path) -> Path:
        path = super().save(path)
        self.vocab.save(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Peter:
        path = Path(path)
        model = super().load(path)
        model.vocab = Vocab.load(path)
        return model
