"""`peter`: the PErsonalized Transformer for Explainable Recommendation as a `Generator`.

The network, its configuration and its decoding loop are in `model.py`; this file learns it from
a `Dataset` (`fit`), answers requests (`predict_rating`, `generate`) and saves it as a folder.

Early stopping watches the validation text NLL + rating MSE, as the reference does: logged as
`criterion`, while `loss` is the optimised weighted sum in both the train and valid entries
(`loss_terms`). After every epoch a greedy decoding of 200 seeded validation requests gives the
collapse signal (USR, repetition; `feedbackgen.models.collapse`), logged per epoch; a collapsed
final model is announced on stderr and in `training.json`. `max_new_tokens` above `max_words` + 1
(what the model learnt to write) draws a `DecodingWarning`. With
`use_aspect=True` (PETER+), the aspect word of each training row (the dataset's `aspect` column)
is placed after the item; at generation the request's `aspect` goes there, and the decoder learns
to mention it.

On the PETER-format Musical Instruments (split 1, greedy, 20 new tokens), the `default` preset
trained in about 12 epochs (best at 7) to BLEU-1/4 16.6 / 1.45, ROUGE-1/2/L F 23.7 / 3.6 / 18.5,
USR 0.48, FMR 0.24, FCR 0.27, DIV 0.21, RMSE 0.94 (the reference code after 8 epochs: 20.8 / 0.89,
23.4 / 2.5 / 18.1, USR 0.17, FMR 0.19, FCR 0.09, DIV 1.03, RMSE 0.94); other seeds and nearby
settings moved ROUGE-L by ±0.3 and USR between 0.4 and 0.7. It trains at about 490 samples/s and
generates about 1,700 samples/s at batch 128 on two idle cores (the reference: 64 and 8.4).
The sub-word vocabulary (`vocab="bpe"`), emsize 512, 3 layers, more dropout, label smoothing and
other learning rates were tried and did no better here. Greedy outputs are shorter than the
references (about 10 tokens against 15), which costs BLEU-1 its brevity penalty.

Retrieval-augmented generation (`rag_k` > 0; `rag.py`, `model.py`): each row also reads the
`rag_k` training sentences that best fit its user and item, leave-one-out at training time; the
retrieval index is saved in the model folder, so `generate`, `serve`, `recommend` and `simulate`
retrieve the same way.

Targets: `target="explanation"` (the dataset's `explanation` column, the aspect sentence PETER
was built for, `max_words` 20 by default) or `target="review"` (the whole `text`, 60 words by
default). Longer texts are cut after `max_words` words (PETER's `--words`).

Unknown users, items and aspects at generation time map to index 0 of their `IdIndex`, whose
embedding is learnt by ID dropout (each training row's user, item and aspect are replaced by 0
with probability `id_dropout`); with `id_dropout=0` that embedding stays at its random start, so
such requests still get a (generic) answer, never an error. `Feedback.meta` says when an ID was
unknown.

Decoding follows `feedbackgen.config.Decoding` (`feedbackgen.decoding`): greedy, beam
search (`num_beams`; `meta["beam_score"]` is the mean log-probability per token) or sampling, each
request from its own random stream. Generated text is returned as space-separated tokens in the
form of `feedbackgen.data.text.tokenize` (so metrics compare like with like): the model's words
(or sub-word pieces glued back into words) are joined and re-split by `tokenize`. `num_threads` is
a training setting: generation runs with the threads of the process (`generate`/`serve --threads`).

Training can run data-parallel on several processes (`torchrun --nproc_per_node N -m
feedbackgen.cli train ...`; `feedbackgen.models.distributed`), and differentially private with
DP-SGD (`dp_epsilon`, `dp_delta`, `dp_max_grad_norm`; `feedbackgen.models.privacy`): the spent
(ε, δ) is in `privacy`, in `state.json` and in each training-log entry. DP training computes the
losses per row (each row's text and context NLL averaged over its own words), since DP-SGD clips
one gradient per row; the ordinary path averages over every word of the batch, as the reference.
See docs/training.md.

Differences from lileipisces/PETER worth knowing: the vocabulary is built from the training split
only (the reference counts every split); padding is trimmed per batch instead of padding every
batch to `max_words`; the first epoch is shuffled too.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from feedbackgen.config import Decoding
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.text import tokenize
from feedbackgen.errors import ConfigError, DataError, DecodingWarning
from feedbackgen.decoding.plan import PlanBias
from feedbackgen.decoding.seeds import stream_seed, with_seeds
from feedbackgen.models import collapse, distributed, rerank
from feedbackgen.models.base import ALIASES, Alias, Generator, IdIndex, register
from feedbackgen.models.peter.model import MAX_NEW_TOKENS, PETER, PeterConfig, PeterShape
from feedbackgen.models.peter.rag import PREFIX as RAG_PREFIX, RagContext
from feedbackgen.models.plan import ContentPlan
from feedbackgen.models.privacy import PrivacySettings, default_delta
from feedbackgen.models.text_units import target_column, target_rows
from feedbackgen.models.trainer import Trainer, flat_settings, read_checkpoint_extra
from feedbackgen.models.vocab import BOS, EOS, PAD, UNK, Vocab
from feedbackgen.types import GENERATED, FeedbackRequest, provenance

NEVER_BIASED = (PAD, BOS, EOS, UNK)  # a plan never raises these

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
        self.training_summary: dict[str, Any] | None = None  # loss terms, collapse signal (training.json)
        self.rag: RagContext | None = None  # the retrieval index when rag_k > 0
        self.plan: ContentPlan | None = None  # what each item's training sentences say (plan_words, candidates)
        self._tone: rerank.ToneScale | None = None  # the plan's tone per rating, built on first use

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

    def _encode(self, df: pl.DataFrame, leave_out: bool = False) -> dict[str, torch.Tensor]:
        """Rows as tensors; `seq` = <bos> ids <eos> padded to the longest row; with RAG, `context`
        (leave-one-out when `df` is the indexed training rows and `leave_out`)."""
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
        if self.rag is not None:
            out["context"] = self.rag.encode(self.vocab, df["user_id"].to_list(), df["item_id"].to_list(),
                                             leave_out)
        return out

    @staticmethod
    def _batch(data: dict[str, torch.Tensor], idx: torch.Tensor,
               id_dropout: float = 0.0) -> dict[str, torch.Tensor]:
        """Rows `idx` trimmed to their longest sequence; IDs replaced by "unknown" at `id_dropout`."""
        width = int(data["length"][idx].max())
        seq = data["seq"][idx, :width]
        batch = {k: data[k][idx] for k in ("user", "item", "rating", "rating_mask", "aspect", "context")
                 if k in data}
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
        # by the flat names, as before the training settings were nested: old checkpoints still resume
        cfg = {k: v for k, v in flat_settings(self.config).items() if k not in skip}
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
        saved = read_checkpoint_extra(c.training.checkpoint_dir)
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
        if c.rag_k:
            texts = [" ".join(t) for t in self._sentences(train)]
            self.rag = RagContext.fit(train, texts, self.users, self.items, c)
        if self.uses_plan:
            self.plan = ContentPlan.fit(train["user_id"].to_list(), train["item_id"].to_list(),
                                        [" ".join(t) for t in self._sentences(train)], train["rating"].to_list())
        self._tone = None
        torch.manual_seed(c.training.seed)
        self.model = PETER(self._shape(), float(ratings.mean()) if len(ratings) else 0.0)
        tr, va = self._encode(train, leave_out=True), self._encode(valid)
        weights = (c.text_weight, c.context_weight, c.rating_weight)

        def valid_extra(out: dict[str, float]) -> dict[str, float]:
            return {**out, "criterion": out["nll_text"] + out["mse_rating"]}  # the reference's early-stopping sum

        # the collapse signal after every epoch: greedy decoding of 200 rows costs well under a second
        probe_requests = collapse.sample_requests(valid, c.training.seed)

        def probe() -> dict[str, Any]:
            self.is_fitted = True  # generate_text refuses an unfitted model; set for good below
            self._tone = None  # the tone scale follows this epoch's rating head
            return collapse.probe(self, probe_requests, self.max_text_tokens)

        per_row = c.dp_epsilon is not None
        privacy = PrivacySettings(
            epsilon=c.dp_epsilon, delta=c.dp_delta if c.dp_delta is not None else default_delta(len(train)),
            max_grad_norm=c.dp_max_grad_norm, accountant=c.dp_accountant, seed=c.dp_seed) if per_row else None
        trainer = Trainer(self.model, c.training, n_train=len(train), n_valid=len(valid),
                          make_batch=lambda idx, train: (self._batch(tr, idx, c.id_dropout) if train
                                                         else self._batch(va, idx)),
                          loss_fn=lambda b: self.model.losses(b, weights, c.label_smoothing, per_row),
                          valid_loss_fn=lambda b: self.model.losses(b, weights), valid_extra=valid_extra,
                          fingerprint=fingerprint,
                          extra={"fingerprint": fingerprint, "vocab": self.vocab.to_str()},
                          criterion="criterion", terms=self.loss_terms(), probe=probe, privacy=privacy,
                          desc="peter")
        result = trainer.fit()
        self.training_log = result.log
        self.privacy = result.privacy
        self.model.eval()
        self.is_fitted = True
        self._tone = None  # built again from the kept weights on first use
        # the kept weights are the best epoch's, so its entry holds the final model's signal
        best = next(e for e in result.log if e["epoch"] == result.best_epoch)
        sig = best.get("collapse") or probe()  # a checkpoint from before the signal was logged
        if world.is_main:  # one warning, not one per rank
            sig = collapse.announce(self.name, sig, len(train), len(result.log))
        best["collapse"] = sig
        self.training_summary = {"terms": self.loss_terms(), "best_epoch": result.best_epoch,
                                 "epochs": len(result.log), "train_rows": len(train), "collapse": sig}
        return self

    def loss_terms(self) -> dict[str, str]:
        """What each logged loss adds up, with this model's weights (the same for train and valid)."""
        c = self.config
        return {"loss": f"{c.text_weight:g}·nll_text + {c.context_weight:g}·nll_context + "
                        f"{c.rating_weight:g}·mse_rating",
                "criterion": "nll_text + mse_rating (valid only: early stopping, as the reference)"}

    @property
    def uses_plan(self) -> bool:
        """Whether this model keeps a content plan: it raises plan words, or chooses among candidates."""
        return bool(self.config.plan_words) or self.config.candidates > 1

    @property
    def max_text_tokens(self) -> int:
        """The longest output this model learnt to write: `max_words` words and <eos>."""
        return self.config.max_words + 1

    def _shape(self, n_tokens: int | None = None) -> PeterShape:
        c = self.config
        return PeterShape(
            n_users=len(self.users), n_items=len(self.items),
            n_aspects=len(self.aspects) if self.aspects is not None else 0,
            n_tokens=n_tokens if n_tokens is not None else len(self.vocab),
            emsize=c.emsize, nhead=c.nhead, nlayers=c.nlayers, nhid=c.nhid, dropout=c.dropout,
            norm_first=c.norm_first, activation=c.activation, tie_weights=c.tie_weights,
            n_context=c.rag_max_tokens if c.rag_k else 0,
            max_len=3 + 2 + max(self.config.max_words, MAX_NEW_TOKENS) + (c.rag_max_tokens if c.rag_k else 0))

    # -- prediction --------------------------------------------------------------------------
    def encode(self, requests: Sequence[FeedbackRequest]):
        """The network's inputs for `requests`: (users, items, aspects) id tensors of shape (rows,),
        0 for an id not seen in training; aspects None when the model has no aspect vocabulary."""
        users = torch.from_numpy(self.users.lookup([r.user_id for r in requests]))
        items = torch.from_numpy(self.items.lookup([r.item_id for r in requests]))
        aspects = None
        if self.aspects is not None:
            aspects = torch.from_numpy(self.aspects.lookup([r.aspect or "" for r in requests]))
        return users, items, aspects

    def predict_rating(self, requests: Sequence[FeedbackRequest]) -> np.ndarray:
        self.check_fitted()
        users, items, _ = self.encode(requests)
        out = []
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(requests), 1024):
                out.append(self.model.predict_rating(users[start:start + 1024], items[start:start + 1024]))
        return self.clip(torch.cat(out).numpy() if out else np.zeros(0))

    def decoding_warnings(self, decoding: Decoding) -> list[str]:
        """One message when `max_new_tokens`, given explicitly, is above `max_text_tokens`: positions
        are encoded up to MAX_NEW_TOKENS, but no training text went past that length."""
        limit = self.max_text_tokens
        if decoding.max_new_tokens <= limit or "max_new_tokens" not in decoding.model_fields_set:
            return []
        return [f"{self.name} learnt texts of at most {self.config.max_words} words and <eos> "
                f"({limit} tokens, max_words): max_new_tokens={decoding.max_new_tokens} asks for "
                "more than it was trained to write, so texts end by about that length or run on "
                "untrained; retrain with --set max_words=N for longer texts"]

    def generate_text(self, requests: list[FeedbackRequest], decoding: Decoding,
                      use_cache: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
        self.check_fitted()
        for message in self.decoding_warnings(decoding):
            warnings.warn(message, DecodingWarning, stacklevel=3)
        requests = with_seeds(requests, decoding)
        ids = self.encode(requests)
        context = None if self.rag is None else self.rag.encode(
            self.vocab, [r.user_id for r in requests], [r.item_id for r in requests])
        stars = None  # the rating each text goes with: the request's own, else the predicted one
        if self.plan is not None and requests:
            stars = np.array([r.rating if r.rating is not None else p
                              for r, p in zip(requests, self.predict_rating(requests))])
        k = decoding.num_candidates or self.config.candidates
        plans = self._candidate_plans(requests, k, stars) or [None] * k  # per candidate, per request
        tokens, finished, scores = self._decode(requests, ids, context, self._bias(plans[0]), decoding, 0, use_cache)
        chosen = utilities = None
        if k > 1 and requests:  # the request's own decoding, then k - 1 sampled candidates
            sampled = rerank.candidate_decoding(decoding)
            runs = [(tokens, finished)] + [
                self._decode(requests, ids, context, self._bias(plans[j]), sampled, rerank.candidate_salt(j),
                             use_cache)[:2]
                for j in range(1, k)]
            chosen, utilities = self._choose(requests, ids, context, [t for t, _ in runs], k, stars)
            pick = torch.from_numpy(chosen)
            tokens = torch.stack([t for t, _ in runs], 1)[torch.arange(len(requests)), pick]
            finished = torch.stack([f for _, f in runs], 1)[torch.arange(len(requests)), pick]
        users, items, aspects = ids
        texts, metas = [], []
        for i, row in enumerate(tokens.tolist()):
            words = tokenize(" ".join(self.vocab.decode(row)))
            texts.append(" ".join(words))
            meta = {**provenance(GENERATED), "tokens": len(words),
                    "stopped": "eos" if bool(finished[i]) else "length",
                    "unknown_user": int(users[i]) == 0, "unknown_item": int(items[i]) == 0}
            if aspects is not None:
                meta["unknown_aspect"] = int(aspects[i]) == 0
            if scores is not None and chosen is None:
                meta["beam_score"] = float(scores[i])
            if context is not None:
                meta["retrieved"] = int((context[i] == EOS).sum())  # sentences read
            if plans[0] is not None:  # the plan the kept text was written from
                meta["plan"] = [w for w, _ in plans[0 if chosen is None else chosen[i]][i]]
            if chosen is not None:
                meta["candidate"], meta["utility"] = int(chosen[i]), round(float(utilities[i, chosen[i]]), 4)
            metas.append(meta)
        return texts, metas

    def _decode(self, requests, ids, context, bias, decoding: Decoding, salt: int, use_cache: bool):
        """One decoding of every request, in batches: (tokens (rows, max_new_tokens) padded after
        <eos>, finished (rows,), beam scores (rows,) or None). `salt`: the streams' (candidates)."""
        users, items, aspects = ids
        outs, fins, scores = [], [], []
        for start in range(0, len(requests), decoding.batch_size):
            sl = slice(start, start + decoding.batch_size)
            seeds = [stream_seed(r, salt) for r in requests[sl]] if decoding.do_sample else None
            out, finished, score = self.model.generate(
                users[sl], items[sl], aspects[sl] if aspects is not None else None, decoding, seeds, use_cache,
                context[sl] if context is not None else None, bias.rows_slice(sl) if bias is not None else None)
            outs.append(out)
            fins.append(finished)
            scores.append(score)
        width = decoding.max_new_tokens
        tokens = torch.cat([F.pad(o, (0, width - o.size(1)), value=PAD) for o in outs]) if outs else \
            torch.zeros(0, width, dtype=torch.long)
        finished = torch.cat(fins) if fins else torch.zeros(0, dtype=torch.bool)
        return tokens, finished, (torch.cat(scores) if scores and scores[0] is not None else None)

    def _candidate_plans(self, requests: Sequence[FeedbackRequest], k: int, stars=None) -> list | None:
        """Each candidate's content plan per request, [(word, weight)] (None without a plan), k lists:
        the item's plan for the request's own decoding (candidate 0); with
        `candidate_plans="sentences"`, candidate j ≥ 1 writes from the words of the item's j-th
        training sentence for this user (`ContentPlan.sentence_plans`, those whose stars are
        closest to `stars`, the rating each text goes with, first), or from the item's plan when it
        has fewer sentences. A request's `aspect` is a plan the caller gives: its words come first,
        at full weight."""
        c = self.config
        if self.plan is None or not c.plan_words or not c.plan_strength:
            return None
        out = [[] for _ in range(k)]
        for n, r in enumerate(requests):
            plan = self.plan.words(r.user_id, r.item_id, c.plan_words)
            others = []
            if k > 1 and c.candidate_plans == "sentences":
                rating = float(stars[n]) if stars is not None else None
                others = self.plan.sentence_plans(r.user_id, r.item_id, k - 1, c.plan_words, rating)
            given = [(w, 1.0) for w in tokenize(r.aspect)] if r.aspect else []  # "explain it in terms of price"
            for j in range(k):
                out[j].append(given + (others[j - 1] if 0 < j <= len(others) else plan))
        return out

    def _bias(self, plans: list | None) -> PlanBias | None:
        """Plans as a logits bias: `plan_strength` × weight on each word's (first) token."""
        if plans is None:
            return None
        return PlanBias.from_plans(plans, lambda w: self.vocab.encode([w]), self.config.plan_strength, NEVER_BIASED)

    def _choose(self, requests, ids, context, runs: list[torch.Tensor], k: int, stars=None):
        """The utility choice among each request's `k` candidates (`feedbackgen.models.rerank`)."""
        users, items, aspects = ids
        c = self.config
        logprobs = torch.stack([self._logprob(ids, context, t) for t in runs], 1).reshape(-1).numpy()
        texts = [" ".join(tokenize(" ".join(self.vocab.decode(row))))
                 for n in range(len(requests)) for row in (t[n].tolist() for t in runs)]
        item_ids = [r.item_id for r in requests for _ in range(k)]
        ratings = np.repeat(stars if stars is not None else self.predict_rating(requests), k)
        pool = self.plan.pool if self.plan is not None else None
        return rerank.choose(texts, item_ids, ratings, logprobs, k, pool, self._tone_scale(),
                             (c.utility_grounding, c.utility_fluency, c.utility_sentiment))

    def _tone_scale(self) -> rerank.ToneScale | None:
        """The expected tone per rating (`rerank.ToneScale`), from this model's predicted ratings of
        the plan's training rows and those rows' sentences; built on first use, as it follows from
        the weights and the plan. Linear on the rating range without a plan."""
        if self._tone is None and self.plan is not None:
            rows = [FeedbackRequest(u, i) for u, i in zip(self.plan.users, self.plan.items)]
            self._tone = rerank.ToneScale(self.predict_rating(rows), self.plan.tones)
        if self._tone is None and self.rating_range is not None:
            return rerank.ToneScale.linear(self.rating_range)
        return self._tone

    def _logprob(self, ids, context, tokens: torch.Tensor, batch: int = 512) -> torch.Tensor:
        users, items, aspects = ids
        out = []
        with torch.no_grad():
            for s in range(0, len(tokens), batch):
                sl = slice(s, s + batch)
                out.append(self.model.text_logprob(users[sl], items[sl], aspects[sl] if aspects is not None else None,
                                                   tokens[sl], context[sl] if context is not None else None))
        return torch.cat(out)

    # -- state -------------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {k: v for k, v in self.model.state_dict().items()
                   if not (self.config.tie_weights and k == "head.weight")}
        state = {"users": self.users, "items": self.items, "aspects": self.aspects,
                 "n_tokens": self.model.shape.n_tokens}
        if self.privacy is not None:
            state["privacy"] = self.privacy
        if self.rag is not None:
            rag_tensors, rag_state = self.rag.get_state()
            tensors.update(rag_tensors)
            state.update(rag_state)
        if self.plan is not None:
            state.update(self.plan.get_state())
        return tensors, state

    def set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self.users, self.items = IdIndex.of(state["users"]), IdIndex.of(state["items"])
        self.aspects = IdIndex.of(state.get("aspects"))
        self.privacy = state.get("privacy")
        self.model = PETER(self._shape(state["n_tokens"]))
        if self.config.rag_k:
            self.rag = RagContext.from_state(tensors, state, self.users, self.items, self.config)
        self.plan = ContentPlan.from_state(state) if "plan.sentences" in state else None
        self._tone = None
        tensors = {k: v for k, v in tensors.items() if not k.startswith(RAG_PREFIX)}
        if self.config.tie_weights:
            tensors = {**tensors, "head.weight": tensors["word_emb.weight"]}
        self.model.load_state_dict(tensors)
        self.model.eval()

    def save_extra(self, path: Path) -> None:
        self.vocab.save(path)

    def load_extra(self, path: Path, arrays: dict[str, torch.Tensor]) -> None:
        self.vocab = Vocab.load(path)


# The recommended explainer (docs/explanations.md: what was measured to choose it).
# The utility's weights were chosen on the valid split of PETER-format Musical Instruments
# (docs/explanations.md): the most tone-rating agreement with item grounding well above 0.8.
EXPLAINER = {"plan_words": 6, "plan_strength": 8.0, "candidates": 8, "utility_grounding": 1.25, "utility_sentiment": 0.4}
ALIASES["explainer"] = Alias(
    "peter", EXPLAINER, "the recommended explainer: peter (default preset) writing from content plans (the "
    "item's words; each candidate one of its training sentences' words), 8 candidates per request, the best "
    "utility kept (1.25 × grounding + 0.2 × fluency + 0.4 × tone agreement)")
