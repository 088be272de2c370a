"""The decoding loop and its logits processors (torch): `logits_processors`, `RowSampler`,
`hf_generate_kwargs`, `decode` and `beam_search`. See the package docstring for seeds and
determinism."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from feedbackgen.config import Decoding
from feedbackgen.decoding.loops import NoRepeatGeneratedNGram
from feedbackgen.errors import DataError


class RowSampler:
    """A logits processor that samples each row's next token from that row's own random stream.

    `seeds[r]` seeds row r's `torch.Generator` (made on the scores' device at the first call).
    Called with scores (rows, vocabulary) already processed and warped, it returns a tensor of the
    same shape holding 0 at each row's drawn token and -inf elsewhere. Every row draws once per
    call, finished or not, so a row's draws depend on its seed and its own scores alone.
    """

    def __init__(self, seeds: Sequence[int]):
        self.seeds = list(seeds)
        self.streams: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.size(0) != len(self.seeds):
            raise DataError(f"RowSampler has {len(self.seeds)} seeds for {scores.size(0)} rows")
        if self.streams is None:
            self.streams = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = scores.float().softmax(-1)
        picks = torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.streams)])
        return torch.full_like(scores, -math.inf).scatter_(1, picks.unsqueeze(1), 0.0)


def logits_processors(d: Decoding, eos_token_id: int | list[int], *, prompt_length: int = 0,
                      min_new_tokens: int | None = None, suppress: Sequence[int] = (),
                      seeds: Sequence[int] | None = None, device: str | torch.device = "cpu", constraint=None,
                      bias=None):
    """Hugging Face's `LogitsProcessorList` for `d`, applied to (input_ids, scores) at every step.

    `prompt_length`: leading columns of input_ids that are prompt, not generated text (for
    `min_new_tokens`, and for `no_repeat_ngram_size`, which counts generated n-grams only);
    `min_new_tokens` overrides `d.min_new_tokens`; `suppress`: tokens never
    generated; `seeds`: one stream seed per row (`stream_seed`), needed when `d.do_sample`;
    `constraint`: a processor that masks tokens outside a grammar (`constrained.SchemaConstraint`),
    applied before the warpers so that they, and the sampler, see only allowed tokens; `bias`: a
    processor that adds to some tokens' scores (`plan.PlanBias`), applied before the constraint.
    Raises ValueError when sampling without seeds."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out = LogitsProcessorList()
    if suppress:
        out.append(SuppressTokensLogitsProcessor(list(suppress), device=device))
    least = d.min_new_tokens if min_new_tokens is None else min_new_tokens
    if least:
        out.append(MinNewTokensLengthLogitsProcessor(prompt_length, least, eos_token_id, device=device))
    if d.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(d.repetition_penalty))
    if d.no_repeat_ngram_size:
        out.append(NoRepeatGeneratedNGram(d.no_repeat_ngram_size, prompt_length))
    if bias is not None:
        out.append(bias)
    if constraint is not None:
        out.append(constraint)
    if d.do_sample:
        if seeds is None:
            raise DataError("sampling needs one stream seed per row")
        if d.temperature != 1.0:
            out.append(TemperatureLogitsWarper(d.temperature))
        if d.top_k:
            out.append(TopKLogitsWarper(d.top_k))
        if d.top_p < 1.0:
            out.append(TopPLogitsWarper(d.top_p))
        out.append(RowSampler(seeds))
    return out


def hf_generate_kwargs(d: Decoding, pad_token_id: int, eos_token_id: int | list[int], *, prompt_length: int,
                       seeds: Sequence[int] | None = None, device: str | torch.device = "cpu",
                       constraint=None) -> dict[str, Any]:
    """Keyword arguments of Hugging Face `generate` that decode as `d` through `logits_processors`
    (`constraint`: there).

    `generate` itself only searches (greedy, or beams): every processor, and the sampling, comes
    from here, and the settings it would otherwise build processors from (or that a model's
    generation_config.json may carry) are neutralised."""
    return dict(max_new_tokens=d.max_new_tokens, do_sample=False, num_beams=d.num_beams,
                pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                logits_processor=logits_processors(d, eos_token_id, prompt_length=prompt_length, seeds=seeds,
                                                   device=device, constraint=constraint),
                temperature=None, top_k=None, top_p=None, repetition_penalty=1.0, no_repeat_ngram_size=0,
                min_new_tokens=0)


# A network's next-token scores: step(seqs, reorder) -> (rows, vocabulary). `seqs` (rows, t) holds
# the tokens generated so far (t = 0 at the first call); `reorder`, in beam search, says which row
# each row descends from since the last call (a KV cache reorders itself with it), else None.
Step = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@torch.no_grad()
def decode(step: Step, batch: int, d: Decoding, processors, *, eos: int, pad: int,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Greedy or sampled decoding (the sampling is in `processors`), or beam search when
    `d.num_beams` > 1, of `batch` rows (`batch × num_beams` rows for `step` in beam search).

    Returns (tokens (batch, max_new_tokens) padded with `pad` after each row's `eos`, finished
    (batch,) bool, beam scores (batch,) or None)."""
    if d.num_beams > 1:
        return beam_search(step, batch, d.num_beams, d.max_new_tokens, processors, eos=eos, pad=pad)
    L = d.max_new_tokens
    out = torch.full((batch, L), pad, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool)
    logits = step(out[:, :0], None)
    for t in range(L):
        nxt = processors(out[:, :t], logits.float()).argmax(-1).masked_fill(finished, pad)
        out[:, t] = nxt
        finished |= nxt == eos
        if finished.all() or t == L - 1:
            break
        logits = step(out[:, :t + 1], None)
    return out, finished, None


@torch.no_grad()
def beam_search(step: Step, batch: int, K: int, L: int, processors, *, eos: int, pad: int,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search with `K` beams per row (`step` sees batch × K rows, each row's beams together).

    Scores are sums of log-probabilities of the processed logits; a hypothesis is ranked by its
    mean log-probability per token, and a row's search ends once it has K finished hypotheses
    (rows that run out of length count their live beams). Returns (tokens (batch, L), finished
    (batch,), the best hypothesis's score (batch,), -inf for a row with none)."""
    logits = step(torch.zeros(batch * K, 0, dtype=torch.long), None)
    V = logits.size(-1)
    seqs = torch.zeros(batch * K, 0, dtype=torch.long)
    beam_scores = torch.zeros(batch, K)
    beam_scores[:, 1:] = -math.inf  # all beams start equal: keep one
    hyps: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    for t in range(L):
        logp = F.log_softmax(processors(seqs, logits.float()), dim=-1)
        cand = (beam_scores.view(-1, 1) + logp).view(batch, K * V)
        top_scores, top_idx = cand.topk(2 * K, dim=1)
        origin, token = top_idx // V, top_idx % V
        new_scores = torch.full((batch, K), -math.inf)
        new_origin = torch.arange(batch).unsqueeze(1) * K + torch.zeros(batch, K, dtype=torch.long)
        new_token = torch.full((batch, K), pad, dtype=torch.long)
        ts, to, tt = top_scores.tolist(), origin.tolist(), token.tolist()
        for b in range(batch):
            if done[b]:
                continue
            j = 0
            for score, o, tok in zip(ts[b], to[b], tt[b]):
                if score == -math.inf:
                    break
                if tok == eos:
                    if len(hyps[b]) < K:
                        hyps[b].append((score / (t + 1), seqs[b * K + o].tolist() + [eos]))
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
        logits = step(seqs, index)
    for b in range(batch):  # rows that ran out of length: their live beams count as hypotheses
        if done[b]:
            continue
        for j in range(K):
            if new_scores[b, j] == -math.inf:
                continue
            seq = seqs[new_origin[b, j]].tolist() + [int(new_token[b, j])]
            hyps[b].append((float(new_scores[b, j]) / max(1, len(seq)), seq))
    out = torch.full((batch, L), pad, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool)
    scores = torch.full((batch,), -math.inf)
    for b in range(batch):
        if not hyps[b]:
            continue
        score, seq = max(hyps[b], key=lambda h: h[0])
        seq = seq[:L]
        out[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        finished[b] = eos in seq
        scores[b] = score
    return out, finished, scores
