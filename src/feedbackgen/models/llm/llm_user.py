"""`llm`: an instruction LLM plays the user, zero- or few-shot, with no training (Agent4Rec, SimUSER).

For each request the model gets the prompt of `prompts.build_messages` — the user's profile, the
item's description and (few-shot, `shots` > 0) the user's own most similar past reviews as worked
examples — and answers `{"rating": 4, "review": "..."}`. With `constrained` (the default) and a
back-end that can, the answer is decoded under `answers.answer_schema`, so it parses as it is;
otherwise its start is pre-filled (`ANSWER_PREFIX`). Each answer goes through
`answers.read_answer` all the same (a server may ignore the schema):

1. valid or repairable: used (repairs are listed in `Feedback.meta["repairs"]`);
2. invalid: asked again, up to `max_attempts` in all, with a reminder in the prompt and sampling
   at `retry_temperature` (a greedy retry would repeat the same bad answer);
3. still invalid: the fallback — the rating of the `rating_model` baseline and the user's past
   review most similar to the item (or, for a new user, a typical training text), marked
   `meta["answer"] = "fallback"`.

So no broken answer is ever passed on, and every Feedback says which of `valid`, `repaired`,
`retried` (valid or repaired after a retry) or `fallback` it was; `answer_counts` adds them up over
the generator's life and `backend_stats` counts the back-end's requests, cache hits and retries.

`fit` trains nothing: it indexes the training reviews (with their embeddings) that prompts quote,
and fits the fallback rating baseline. Users and items never seen in training are answered from
what their profiles say (cold start). `max_new_tokens` of the decoding counts the review's tokens;
the JSON around it gets `JSON_TOKENS` more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.decoding.loops import guard_loops
from feedbackgen.decoding.seeds import stream_seed, with_seeds
from feedbackgen.models.base import Generator, register
from feedbackgen.models.llm.answers import ONLY_REASONING, answer_schema, read_answer
from feedbackgen.models.llm.backends import Backend, BackendConfig, Completion, make_backend
from feedbackgen.models.llm.prompts import PromptConfig, ReviewHistory, build_messages, clean
from feedbackgen.models.rating import fit_rating_model, rating_model_from_state, rating_model_state
from feedbackgen.models.unknown import apply_policy
from feedbackgen.types import FALLBACK, GENERATED, Feedback, FeedbackRequest, provenance

JSON_TOKENS = 16  # `{"rating": 4, "review": "` ... `"}` in a byte-level BPE, with room to spare
ANSWER_PREFIX = '{"rating":'  # pre-filled where the back-end can: keeps a small model on the JSON track


class LLMUserConfig(PromptConfig, BackendConfig):
    """Prompt and answer settings (`PromptConfig`) and where the model runs (`BackendConfig`)."""


@register
class LLMUser(Generator):
    name = "llm"
    Config = LLMUserConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.history: ReviewHistory | None = None
        self._backend: Backend | None = None
        self.answer_counts: Counter = Counter()
        # replies of reasoning models: with a reasoning block removed, and with nothing but reasoning
        self.reasoning_counts: Counter = Counter()

    # -- fitting: index, no training ---------------------------------------------------------
    def fit(self, dataset: Dataset) -> LLMUser:
        dataset.require(self.name, text=True)
        self.history = ReviewHistory.from_dataset(dataset, self.config.target, self.config.embedding_model)
        self.rating = fit_rating_model(self.config.rating_model, dataset)
        self.rating_range = self.rating.rating_range
        self.is_fitted = True
        return self

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self.make_backend()
        return self._backend

    def make_backend(self) -> Backend:
        return make_backend(self.config)

    @property
    def backend_stats(self) -> dict[str, int]:
        return dict(self._backend.stats) if self._backend is not None else {}

    # -- answering ---------------------------------------------------------------------------
    def messages(self, request: FeedbackRequest, retry: bool = False, exclude: int | None = None):
        c = self.config
        return build_messages(self.history, request, c.shots, c.review_words, c.prompt_words, self.rating_range,
                              exclude=exclude, reminder=retry, rag_k=c.rag_k, rag_sources=c.rag_sources,
                              style=c.prompt_style)

    def answer(self, requests: Sequence[FeedbackRequest], decoding: Decoding) -> list[tuple[float, str, dict]]:
        """(rating, text, meta) per request: checked answers, retried, else the fallback. A sampled
        answer (or a retry, which always samples) records its request's seed in meta["seed"]. On the
        `transformers` back-end, repeated 4-grams are blocked unless the caller set
        `no_repeat_ngram_size` (`decoding.loops.guard_loops`; meta["decoding_defaults"] says so)."""
        c = self.config
        decoding, defaults = guard_loops(decoding) if self.backend.name == "transformers" else (decoding, {})
        constrain = c.constrained and self.backend.constrains
        schema = answer_schema(self.rating_range, c.review_words) if constrain else None
        prefix = "" if schema else ANSWER_PREFIX  # a grammar starts at the answer's first token
        # retries sample even after greedy decoding, which draws no seed: they use 0, so greedy stays repeatable
        requests = with_seeds(requests, decoding)
        budget = decoding.model_copy(update={"max_new_tokens": min(1024, decoding.max_new_tokens + JSON_TOKENS)})
        results: list[tuple[float, str, dict] | None] = [None] * len(requests)
        last: dict[int, tuple[Completion, str]] = {}
        pending = list(range(len(requests)))
        for attempt in range(c.max_attempts):
            if not pending:
                break
            d = budget if attempt == 0 else budget.model_copy(update={
                "do_sample": True, "temperature": c.retry_temperature, "num_beams": 1})
            convs = [self.messages(requests[i], retry=attempt > 0)[0] for i in pending]
            seeds = [stream_seed(requests[i], salt=attempt) for i in pending]
            # the schema only to back-ends that take one (a Backend written before schemas keeps working)
            completions = self.backend.chat(convs, d, prefix, seeds, **({"schema": schema} if schema else {}))
            still = []
            for i, done in zip(pending, completions):
                if done.refused:  # the server refuses this prompt (too long, ...): asking again changes nothing
                    last[i] = (done, f"refused by the server ({done.refused})")
                    continue
                ans = read_answer(done.text, self.rating_range, c.review_words)
                if ans.reasoning:
                    self.reasoning_counts["with_reasoning"] += 1
                    if ans.problem == ONLY_REASONING:
                        self.reasoning_counts["only_reasoning"] += 1
                if not ans.ok:
                    last[i] = (done, ans.problem)
                    still.append(i)
                    uncache = getattr(self.backend, "uncache", None)
                    if uncache is not None:  # never kept: a rerun, or a fixed server, is asked again
                        uncache(done)
                    continue
                kind = "retried" if attempt else ans.status
                results[i] = (ans.rating, ans.text, {**provenance(GENERATED), "answer": kind, "attempts": attempt + 1,
                                                     "repairs": ans.repairs, **self._usage(done)})
                if d.do_sample:
                    results[i][2]["seed"] = requests[i].seed
            pending = still
        pending = sorted(set(pending) | {i for i, (done, _) in last.items() if done.refused and results[i] is None})
        if pending:
            fallback_ratings = self.rating.predict_rating([requests[i] for i in pending])
            for i, rating in zip(pending, fallback_ratings):
                done, problem = last[i]
                text, source = self.fallback_text(requests[i])
                results[i] = (float(rating), text,
                              {**source, "answer": "fallback", "attempts": c.max_attempts, "problem": problem,
                               "raw": done.text[:500], **self._usage(done)})
                if done.refused:  # counted apart from the fallbacks of unusable answers, and named in meta
                    self.answer_counts["refused"] += 1
                    results[i][2].update(attempts=1, refused=done.refused)
        for _, _, meta in results:
            self.answer_counts[meta["answer"]] += 1
            if defaults:
                meta["decoding_defaults"] = defaults
        return results  # type: ignore[return-value]

    def _usage(self, done: Completion) -> dict[str, Any]:
        return {"backend": self.backend.name, "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens, "cached": done.cached, "constrained": done.constrained}

    def fallback_text(self, request: FeedbackRequest) -> tuple[str, dict[str, Any]]:
        """(text, its provenance entries): a training review standing in for an answer."""
        h = self.history
        rows = h.similar_reviews(request.user_id, request.item_id, 1)
        why = "the user's past review most similar to the item"
        if not rows:  # a new user: the item's review closest to the item's centre, else a typical text
            target = h.item_vector(request.item_id)
            centre = target if target is not None else h.vectors.mean(0)
            rows = [int(np.argmax(h.vectors @ centre))]
            why = "new user: the item's most typical review" if target is not None else \
                "new user and item: a typical training review"
        text = clean(h.rows["answer"][rows[0]], self.config.review_words)
        if not text:
            return "No comment.", provenance(FALLBACK, fallback="no answer and no usable review")
        return text, provenance(FALLBACK, source_user=h.rows["user_id"][rows[0]],
                                source_item=h.rows["item_id"][rows[0]], fallback=why)

    def generate(self, requests: Sequence[FeedbackRequest], decoding: Decoding | dict | None = None) -> list[Feedback]:
        self.check_fitted()
        decoding = validate(Decoding, decoding, "decoding settings")
        requests = list(requests)
        answers = self.answers_for_known_items(requests, decoding)
        for r, (_, _, meta) in zip(requests, answers):
            meta.update(shots=self.config.shots, unknown_user=not self.history.knows_user(r.user_id))
        # an item with neither a training review nor a catalogue entry: as decoding.unknown_item says
        texts, metas = apply_policy(self, requests, decoding, [a[1] for a in answers], [a[2] for a in answers])
        return [Feedback(r.user_id, r.item_id, float(self.clip(np.array([rating]))[0]), text,
                         [r.aspect] if r.aspect else [], self.name, meta)
                for r, (rating, _, _), text, meta in zip(requests, answers, texts, metas)]

    def answers_for_known_items(self, requests: list[FeedbackRequest], decoding: Decoding) -> list[tuple]:
        """`answer`'s (rating, text, meta) per request; the model is not asked about an unknown item
        whose text `decoding.unknown_item` replaces anyway: its rating is the `rating_model`
        baseline's, as for a fallback answer (meta["answer"] = "fallback", counted in `answer_counts`)."""
        ask = [k for k, known in enumerate(self.knows_items([r.item_id for r in requests]))
               if known or decoding.unknown_item == "generate"]
        out: list[tuple | None] = [None] * len(requests)
        for k, answer in zip(ask, self.answer([requests[k] for k in ask], decoding) if ask else []):
            out[k] = answer
        skipped = [k for k, answer in enumerate(out) if answer is None]
        if skipped:
            for k, rating in zip(skipped, self.rating.predict_rating([requests[k] for k in skipped])):
                out[k] = (float(rating), "", {"answer": "fallback"})
            self.answer_counts["fallback"] += len(skipped)
        return out  # type: ignore[return-value]

    def knows_items(self, item_ids: Sequence[str]) -> list[bool]:
        """Whether each item has a training review or a catalogue entry (`feedbackgen.models.unknown`)."""
        return [self.history.knows_item(i) for i in item_ids]

    def generate_text(self, requests: list[FeedbackRequest],
                      decoding: Decoding) -> tuple[list[str], list[dict[str, Any]]]:
        """The review texts of `answer` (checked, retried, else the fallback) and their meta."""
        self.check_fitted()
        answers = self.answer(requests, decoding)
        return [text for _, text, _ in answers], [meta for _, _, meta in answers]

    def predict_rating(self, requests: Sequence[FeedbackRequest]) -> np.ndarray:
        """The ratings of the model's answers (asking for them costs a generation per request)."""
        return np.array([f.rating for f in self.generate(requests)], dtype=np.float64)

    # -- state -------------------------------------------------------------------------------
    def get_state(self):
        tensors, rating = rating_model_state(self.rating)
        tensors["review_vectors"] = torch.from_numpy(np.ascontiguousarray(self.history.vectors))
        return tensors, rating

    def set_state(self, tensors, state):
        self.rating = rating_model_from_state(tensors, state)

    def save_extra(self, path: Path) -> None:
        self.history.save(path)

    def load_extra(self, path: Path, arrays: dict[str, torch.Tensor]) -> None:
        self.history = ReviewHistory.load(path, arrays["review_vectors"].numpy(), self.config.embedding_model)
