"""The PETER network (Li, Zhang & Chen, ACL 2021): its configuration, its modules, its losses and
its KV-cached generation, in one file. `generator.py` makes it a `Generator` (fit, save, predict).

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

Retrieval-augmented generation (`rag_k` > 0, `feedbackgen.models.peter.rag`): the tokens of k
retrieved training sentences, each ended by `<eos>` and padded with `<pad>` to a fixed width
(`rag_max_tokens`), sit between the IDs and `<bos>`. They are word embeddings plus a learnt
context-segment vector, at their own positions. They see the IDs and each other (both ways, like
the IDs see each other); every word sees them; the IDs never do, so the rating and context heads
stay functions of the IDs alone. `<pad>` positions are never attended to:

        u  i  c1 c2 b  w1
    u   1  1  0  0  0  0
    i   1  1  0  0  0  0
    c1  1  1  1  1  0  0
    c2  1  1  1  1  0  0
    b   1  1  1  1  1  0
    w1  1  1  1  1  1  1

Loss = `text_weight` × text NLL + `context_weight` × context NLL + `rating_weight` × rating MSE
(1, 1, 0.1 as in the paper), logged as `loss = λ_t·nll_text + λ_c·nll_context + λ_r·mse_rating`.
With `use_aspect=True` (PETER+), the aspect word sits after the item.

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

`generate` decodes batched with a key/value cache through `feedbackgen.decoding`
(greedy, beam search, or sampling with one random stream per row); `<pad>`, `<bos>` and `<unk>`
are never generated, and the first token is never `<eos>`.

Differences from lileipisces/PETER worth knowing: the context loss counts the target's words
without `<eos>`; the rating head's output bias starts at the mean training rating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from feedbackgen.config import Decoding, StrictModel
from feedbackgen.decoding.search import Step, decode, logits_processors
from feedbackgen.errors import ConfigError
from feedbackgen.models.text_units import Target
from feedbackgen.models.trainer import TRAINING_FIELDS, TrainingArguments, nest_training
from feedbackgen.models.vocab import BOS, EOS, PAD, UNK

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
    # retrieval-augmented generation (feedbackgen.models.peter.rag)
    rag_k: int = Field(0, ge=0, le=64, description="retrieved training sentences read as context (0 = off)")
    rag_max_tokens: int = Field(64, ge=4, le=1024, description="context tokens in all, <eos> separators "
                                "included; each sentence gets an equal share")
    rag_sources: Literal["both", "item", "user"] = Field(
        "both", description="the item's sentences by similar users, the user's about similar items, or both")
    rag_embedding_model: str = Field("all-MiniLM-L6-v2", description="sentence-transformers folder or name "
                                     "for the user/item similarity of the retrieval")
    # plan-then-write and the choice among candidates (feedbackgen.models.plan, .rerank; docs/explanations.md)
    plan_words: int = Field(0, ge=0, le=64, description="words of the content plan (what others wrote about the "
                            "item, ranked for the user) raised while decoding (0 = off)")
    plan_strength: float = Field(2.0, ge=0.0, le=20.0, description="logit bonus of the plan's best word "
                                 "(the others by their weight), until the text has it")
    candidates: int = Field(1, ge=1, le=64, description="texts decoded per request unless the call says "
                            "(Decoding.num_candidates); the best utility is kept (1 = off)")
    candidate_plans: Literal["item", "sentences"] = Field(
        "sentences", description="what candidates 2..n write from: the item's plan, or each one the words "
        "of one of the item's training sentences")
    utility_grounding: float = Field(1.0, ge=0.0, le=100.0, description="utility weight of item grounding")
    utility_fluency: float = Field(0.2, ge=0.0, le=100.0, description="utility weight of mean log-probability")
    utility_sentiment: float = Field(0.2, ge=0.0, le=100.0, description="utility weight of tone–rating agreement")
    # loss
    text_weight: float = Field(1.0, ge=0.0, le=100.0)
    context_weight: float = Field(1.0, ge=0.0, le=100.0)
    rating_weight: float = Field(0.1, ge=0.0, le=100.0)
    label_smoothing: float = Field(None, ge=0.0, lt=1.0, description="on the text loss")
    id_dropout: float = Field(None, ge=0.0, le=0.5, description="share of training IDs replaced by 'unknown'")
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
    # optimisation, batches, epochs, early stopping, seed, checkpoints: the Trainer's, with the
    # preset's values where not given (`--set lr=...` and `--set training.lr=...` are one setting)
    training: TrainingArguments = Field(default_factory=TrainingArguments)
    # running
    num_threads: int | None = Field(None, ge=1, le=1024, description="torch threads (None = torch's choice)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = nest_training(values)
        training = values["training"]
        preset = values.get("preset") or "default"
        if preset in PRESETS:
            for key, value in PRESETS[preset].items():
                where = training if key in TRAINING_FIELDS else values
                if where.get(key) is None:
                    where[key] = value
        if values.get("max_words") is None:
            values["max_words"] = MAX_WORDS.get(values.get("target") or "explanation", 20)
        if values.get("dp_epsilon") is not None and values.get("dp_max_grad_norm") is None:
            values["dp_max_grad_norm"] = 1.0
        return values

    @model_validator(mode="after")
    def _check_heads(self) -> PeterConfig:
        if self.emsize % self.nhead:
            raise ConfigError(f"emsize ({self.emsize}) must be divisible by nhead ({self.nhead})")
        if self.dp_epsilon is None and (self.dp_delta is not None or self.dp_max_grad_norm is not None
                                        or self.dp_seed is not None):
            raise ConfigError("dp_delta, dp_max_grad_norm and dp_seed apply only to differentially private "
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
    n_context: int = 0  # retrieved-context tokens between the IDs and <bos> (0 = no RAG)


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
        self.key_ok: torch.Tensor | None = None  # (B, keys) False at <pad> context keys (RAG only)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        if self.key_ok is not None:
            self.key_ok = self.key_ok.index_select(0, index)


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
        self.n_ids = 3 if s.n_aspects else 2
        self.prefix_len = self.n_ids + s.n_context  # positions before <bos>
        self.user_emb = nn.Embedding(s.n_users, s.emsize)
        self.item_emb = nn.Embedding(s.n_items, s.emsize)
        self.aspect_emb = nn.Embedding(s.n_aspects, s.emsize) if s.n_aspects else None
        self.word_emb = nn.Embedding(s.n_tokens, s.emsize)
        # one learnt segment vector marks the retrieved tokens (an Embedding, so that opacus sees it)
        self.context_emb = nn.Embedding(1, s.emsize) if s.n_context else None
        self.register_buffer("pe", sinusoidal(s.max_len, s.emsize), persistent=False)
        self.drop = nn.Dropout(s.dropout)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.nlayers))
        self.ln_f = nn.LayerNorm(s.emsize) if s.norm_first else nn.Identity()
        self.head = nn.Linear(s.emsize, s.n_tokens)
        self.rating_mlp = nn.Sequential(nn.Linear(s.emsize, s.emsize), nn.Sigmoid(), nn.Linear(s.emsize, 1))
        for emb in (self.user_emb, self.item_emb, self.aspect_emb, self.context_emb, self.word_emb, self.head,
                    self.rating_mlp[0], self.rating_mlp[2]):
            if emb is not None:
                nn.init.uniform_(emb.weight, -0.1, 0.1)
        for lin in (self.head, self.rating_mlp[0], self.rating_mlp[2]):
            nn.init.zeros_(lin.bias)
        nn.init.constant_(self.rating_mlp[2].bias, mean_rating)
        if s.tie_weights:
            self.head.weight = self.word_emb.weight

    def forward(self, user, item, tokens, aspect=None, cache: KVCache | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, E). Without a cache (or with an empty one) the input is the whole
        sequence `[user, item, (aspect), context..., tokens...]`; with a filled cache, just the new
        `tokens`. context: (B, n_context) token ids of the retrieved sentences (RAG models only)."""
        s = self.shape
        start = 0 if cache is None else cache.length
        x = self.word_emb(tokens)
        if start == 0:
            prefix = [self.user_emb(user), self.item_emb(item)]
            if self.aspect_emb is not None:
                prefix.append(self.aspect_emb(aspect))
            parts = [torch.stack(prefix, 1)]
            if s.n_context:
                parts.append(self.word_emb(context) + self.context_emb(torch.zeros_like(context)))
            x = torch.cat([*parts, x], 1)
        T = x.size(1)
        x = self.drop(x * math.sqrt(s.emsize) + self.pe[start:start + T])
        mask = self._mask(T, start, context, cache, x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def _mask(self, T: int, start: int, context, cache: KVCache | None, device) -> torch.Tensor | None:
        """The PETER mask; with RAG, extended to the context block and per row (B, 1, T, keys)."""
        if not self.shape.n_context:
            return None if (T == 1 and start > 0) else peter_mask(T, start + T).to(device)
        c0, c1 = self.n_ids, self.prefix_len
        base = peter_mask(T, start + T)
        if start == 0:
            base[c0:c1, c0:c1] = True  # the retrieved sentences see each other
            ok = torch.ones(context.size(0), T, dtype=torch.bool)
            ok[:, c0:c1] = context != PAD
            if cache is not None:
                cache.key_ok = ok
            return ((base.unsqueeze(0) & ok.unsqueeze(1)) | torch.eye(T, dtype=torch.bool)).unsqueeze(1).to(device)
        ok = torch.cat([cache.key_ok, torch.ones(cache.key_ok.size(0), start + T - cache.key_ok.size(1),
                                                 dtype=torch.bool)], 1)
        cache.key_ok = ok
        return (base.unsqueeze(0) & ok.unsqueeze(1)).unsqueeze(1).to(device)

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
        """Text NLL, context NLL, rating MSE and their weighted sum for one batch, named
        {"nll_text", "nll_context", "mse_rating", "loss"}.

        batch: user, item, (aspect), (context), inputs = [<bos>, w1..wn] and targets = [w1..wn, <eos>]
        (both padded with <pad>, which is ignored), rating, rating_mask.
        per_row: each term is first averaged within each row, then over the rows (DP-SGD)."""
        if per_row:
            return self._row_losses(batch, weights, label_smoothing)
        h = self.forward(batch["user"], batch["item"], batch["inputs"], batch.get("aspect"),
                         context=batch.get("context"))
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
        return {"loss": wt * text + wc * ctx + wr * rating, "nll_text": text, "nll_context": ctx,
                "mse_rating": rating}

    def _row_losses(self, batch, weights, label_smoothing: float) -> dict[str, torch.Tensor]:
        """`losses` with every term a mean over rows of that row's own loss, so each row's
        gradient depends on that row alone (DP-SGD clips it per row; a batch-wide word average
        would let one row's length weigh every other row's gradient). The word decoder runs on
        (B, T, E) rather than on the packed real positions: opacus needs the batch first."""
        h = self.forward(batch["user"], batch["item"], batch["inputs"], batch.get("aspect"),
                         context=batch.get("context"))
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
        return {"loss": loss.mean(), "nll_text": text.mean(), "nll_context": ctx.mean(),
                "mse_rating": rating.mean()}
    # -- decoding ----------------------------------------------------------------------------
    def stepper(self, user, item, aspect, max_new_tokens: int, use_cache: bool = True,
                context: torch.Tensor | None = None) -> Step:
        """The `decoding.Step` of these rows: next-word logits (rows, n_tokens) after `<bos>` and the
        words generated so far, from a KV cache (or, without one, the whole sequence each time)."""
        bos = torch.full((user.size(0), 1), BOS, dtype=torch.long)
        s = self.shape
        cache = KVCache(s.nlayers, user.size(0), s.nhead, self.prefix_len + 1 + max_new_tokens,
                        s.emsize // s.nhead) if use_cache else None

        def step(seqs: torch.Tensor, reorder: torch.Tensor | None) -> torch.Tensor:
            if cache is None:
                return self.logits(self.forward(user, item, torch.cat([bos, seqs], 1), aspect,
                                                context=context)[:, -1])
            if reorder is not None:
                cache.reorder(reorder)
            new = seqs[:, -1:] if seqs.size(1) else bos
            return self.logits(self.forward(user, item, new, aspect, cache, context)[:, -1])

        return step

    @torch.no_grad()
    def text_logprob(self, user, item, aspect, tokens: torch.Tensor, context: torch.Tensor | None = None,
                     ) -> torch.Tensor:
        """Mean log-probability per token (nats) of each row of `tokens` (B, T) — generated words
        then `<eos>`, padded with `<pad>` — after `<bos>` and the row's ids: shape (B,)."""
        bos = torch.full((tokens.size(0), 1), BOS, dtype=torch.long)
        h = self.forward(user, item, torch.cat([bos, tokens[:, :-1]], 1), aspect, context=context)
        logp = F.log_softmax(self.logits(h[:, self.prefix_len:]).float(), dim=-1)
        logp = logp.gather(2, tokens.unsqueeze(-1)).squeeze(-1)
        real = (tokens != PAD).float()
        return (logp * real).sum(1) / real.sum(1).clamp(min=1)

    @torch.no_grad()
    def generate(self, user, item, aspect, d: Decoding, seeds: Sequence[int] | None = None,
                 use_cache: bool = True, context: torch.Tensor | None = None, bias=None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Decode `d` for B rows of ids (B,). `seeds`: one stream seed per row, needed to sample.
        context: (B, n_context) retrieved-sentence tokens (RAG models only). bias: a
        `decoding.plan.PlanBias` with one plan per row.

        Returns (tokens (B, max_new_tokens) padded after <eos>, finished (B,), beam scores or None)."""
        K = d.num_beams
        if K > 1:
            user, item = user.repeat_interleave(K), item.repeat_interleave(K)
            aspect = aspect.repeat_interleave(K) if aspect is not None else None
            context = context.repeat_interleave(K, 0) if context is not None else None
            bias = bias.repeat(K) if bias is not None else None
        processors = logits_processors(d, EOS, suppress=NEVER, min_new_tokens=max(1, d.min_new_tokens),
                                       seeds=seeds, bias=bias)
        step = self.stepper(user, item, aspect, d.max_new_tokens, use_cache, context)
        return decode(step, user.size(0) // K, d, processors, eos=EOS, pad=PAD)


NEVER = (PAD, BOS, UNK)  # tokens never generated
