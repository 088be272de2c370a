"""Write from a plan: a logits processor that raises the words a text should mention until it has.

A plan is, per row, the words that the text should say (`feedbackgen.models.plan.ContentPlan`
chooses them: what other buyers wrote about this item, ranked for this user) with a weight each.
`PlanBias` adds `weight` to the score of every planned token that the row has not generated yet,
so the decoder is drawn to mention each once; a token already written gets no bonus, which keeps a
plan from causing loops. It is a soft lexical constraint, in the family of Hokamp & Liu (ACL 2017)
and Post & Vilar (NAACL 2018) for hard constraints and of Pascual et al. ("A Plug-and-Play Method
for Controlled Text Generation", EMNLP 2021 Findings) for additive keyword guidance, applied before
the warpers and the sampler (`search.logits_processors`' `bias`), like any Hugging Face logits
processor: `__call__(input_ids (rows, t), scores (rows, vocabulary)) -> scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from feedbackgen.errors import DataError


class PlanBias:
    """Adds `bonuses[r][token]` to row r's score of `token` while row r has not generated it.

    bonuses: one {token id: bonus in logits} per row; with beam search or several candidates per
    request, give one mapping per decoded row (`repeat`). Raises DataError when called with another
    number of rows than it has mappings."""

    def __init__(self, bonuses: Sequence[Mapping[int, float]]):
        self.bonuses = list(bonuses)
        self.n_rows = len(self.bonuses)
        self.rows = torch.tensor([r for r, b in enumerate(self.bonuses) for _ in b], dtype=torch.long)
        self.tokens = torch.tensor([t for b in self.bonuses for t in b], dtype=torch.long)
        self.values = torch.tensor([v for b in self.bonuses for v in b.values()], dtype=torch.float32)

    @classmethod
    def from_plans(cls, plans: Sequence[Sequence[tuple[str, float]]], encode: Callable[[str], list[int]],
                   strength: float, never: Iterable[int] = ()) -> PlanBias:
        """Word plans as token bonuses: per row, [(word, weight in (0, 1])] → `strength` × weight on
        the word's first token (`encode(word)`: its token ids; a word's best weight wins), except on
        the tokens in `never` (padding, sequence marks, unknown)."""
        never = set(never)
        bonuses = []
        for plan in plans:
            bonus: dict[int, float] = {}
            for word, weight in plan:
                pieces = encode(word)
                if pieces and pieces[0] not in never:
                    bonus[pieces[0]] = max(bonus.get(pieces[0], 0.0), strength * weight)
            bonuses.append(bonus)
        return cls(bonuses)

    def rows_slice(self, rows: slice) -> PlanBias:
        """The plans of `rows` (a batch of the requests)."""
        return PlanBias(self.bonuses[rows])

    def repeat(self, k: int) -> PlanBias:
        """The same plans for rows repeated `k` times each (beam search: r → r·k … r·k + k − 1)."""
        return PlanBias([b for b in self.bonuses for _ in range(k)])

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.size(0) != self.n_rows:
            raise DataError(f"PlanBias has plans for {self.n_rows} rows, the scores have {scores.size(0)}")
        if not len(self.rows):
            return scores
        bonus = torch.zeros_like(scores)
        bonus[self.rows, self.tokens] = self.values.to(scores.dtype)
        if input_ids.size(1):
            written = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, input_ids, True)
            bonus = bonus.masked_fill(written, 0.0)
        return scores + bonus


__all__ = ["PlanBias"]
