"""The explainer's choice among candidates: its weights on the valid split, its bounds on test.

    python bench/explainer.py --model models/explainer_pf            # PETER-format MI, split 1
    python bench/explainer.py --model models/explainer --dataset data/mi
    python bench/explainer.py --model models/old_explainer --set utility_grounding=1.25 --set utility_sentiment=0.4

`--model`: a folder from `feedbackgen train DATA --model explainer` on the same data. Every
request's candidates are decoded once per split, exactly as `generate` decodes them (greedy, 20
new tokens, the folder's plan settings; they are read where they all pass, `rerank.choose`), and the
choice is then replayed offline:

1. valid split: the utility's weights (grounding / fluency / tone) on a grid, with the tone scale
   (`rerank.ToneScale`: quantile-mapped) and, for comparison, the linear map of the rating range
   used before. The explainer's weights were chosen from this table: the largest tone–rating ρ
   with item grounding well above 0.8.
2. test split: the folder's own weights, and two oracles that read the reference (no generator can):
   the candidate of best ROUGE-L against it, and the same among the grounded candidates. They bound
   what any choice among these candidates can reach on BLEU/ROUGE.

Columns: BLEU-4 and ROUGE-L F (PETER's, ×100), item grounding (`evaluation.grounding`), D-2
(Distinct-2), ρ(tone, ★̂): Spearman of the kept text's VADER compound with the rating it goes with.
Quality only: the bench prints no times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peter import load_data  # noqa: E402  (bench/peter.py: the same data and test rows)

from feedbackgen.collapse import loops  # noqa: E402
from feedbackgen.config import key_values  # noqa: E402
from feedbackgen.data.text import tokenize  # noqa: E402
from feedbackgen.evaluation.extra import distinct_n, spearman, vader_compound  # noqa: E402
from feedbackgen.evaluation.grounding import item_grounding  # noqa: E402
from feedbackgen.evaluation.metrics import peter_metrics, peter_rouge  # noqa: E402
from feedbackgen.models import load, rerank  # noqa: E402
from feedbackgen.tables import number, table_lines  # noqa: E402
from feedbackgen.types import FeedbackRequest  # noqa: E402

GRID = [(g, f, s) for g in (1.0, 1.25, 1.5) for f in (0.2, 0.3) for s in (0.2, 0.4)]


class Candidates:
    """One split's candidates, (requests, k) arrays of texts and utility terms."""

    def __init__(self, model, ds, split: str):
        import polars as pl

        rows = ds.split(split).filter(pl.col("explanation").is_not_null())
        seen = {}
        original = rerank.choose

        def record(texts, items, ratings, logprobs, k, pool, tone, weights):
            seen.update(texts=list(texts), items=list(items), ratings=np.asarray(ratings), logprobs=np.asarray(logprobs),
                        k=k, margin=np.nan_to_num(pool.item_margin(texts, items), nan=0.0), target=tone(ratings),
                        linear=rerank.ToneScale.linear(model.rating_range)(ratings))
            return original(texts, items, ratings, logprobs, k, pool, tone, weights)

        rerank.choose = record
        try:
            model.generate([FeedbackRequest(u, i) for u, i in rows.select("user_id", "item_id").iter_rows()],
                           {"max_new_tokens": 20, "batch_size": 128})
        finally:
            rerank.choose = original
        k = self.k = seen["k"]
        self.n = len(seen["texts"]) // k
        shape = (self.n, k)
        self.texts = np.array(seen["texts"], dtype=object).reshape(shape)
        self.items = rows["item_id"].to_list()
        self.ratings = seen["ratings"].reshape(shape)[:, 0]
        self.margin, self.logprob = seen["margin"].reshape(shape), seen["logprobs"].reshape(shape)
        self.target, self.linear = seen["target"].reshape(shape)[:, :1], seen["linear"].reshape(shape)[:, :1]
        self.tone = vader_compound(seen["texts"]).reshape(shape)
        self.loops = np.array([loops(t) for t in seen["texts"]], dtype=float).reshape(shape)
        self.refs = [tokenize(r) for r in rows["explanation"].to_list()]
        self.true = rows["rating"].to_list()

    def utility(self, g: float, f: float, s: float, linear: bool = False) -> np.ndarray:
        target = self.linear if linear else self.target
        return (g * self.margin + f * self.logprob - s * np.abs(self.tone - target)
                - rerank.LOOP_PENALTY * self.loops)

    def rouge_l(self) -> np.ndarray:
        return np.array([[peter_rouge([self.refs[i]], [self.texts[i, j].split()])["rougeL_f"] for j in range(self.k)]
                         for i in range(self.n)])

    def row(self, label: str, utility: np.ndarray, ds) -> list[str]:
        import polars as pl

        pick = utility.argmax(axis=1)
        kept = list(self.texts[np.arange(self.n), pick])
        toks = [t.split() for t in kept]
        m = peter_metrics(toks, self.refs, None, None, list(self.ratings), self.true)
        ground = item_grounding(pl.DataFrame({"item_id": self.items, "text": kept}), ds)["item_grounding"]
        rho = spearman(self.tone[np.arange(self.n), pick], self.ratings)
        return [label, number(m["bleu4"], ".2f"), number(m["rougeL_f"], ".2f"), number(ground), number(distinct_n(toks, 2)),
                number(rho)]


HEADER = ["kept by", "BLEU-4", "ROUGE-L F", "ground", "D-2", "ρ(tone, ★̂)"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a folder trained with --model explainer on the same data")
    p.add_argument("--dataset", default=None, help="a prepared dataset folder (default: PETER-format MI, split 1)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="override a setting of the folder (e.g. utility_sentiment=0.4)")
    args = p.parse_args(argv)
    args.rows = args.test_rows = None
    ds = load_data(args)
    model = load(args.model)
    if args.set:
        model.config = model.config.model_copy(update=key_values(args.set))
    c = model.config
    valid = Candidates(model, ds, "valid")
    rows = [valid.row(f"{g:g} / {f:g} / {s:g}, linear tone", valid.utility(g, f, s, linear=True), ds) for g, f, s in
            ((1.0, 0.2, 0.2),)]
    rows += [valid.row(f"{g:g} / {f:g} / {s:g}", valid.utility(g, f, s), ds) for g, f, s in GRID]
    print(f"valid split, {valid.n} requests, {valid.k} candidates each; utility weights grounding / fluency / tone\n")
    print("\n".join(table_lines(HEADER, rows, "l" + "r" * 5)))
    test = Candidates(model, ds, "test")
    scores = test.rouge_l()
    own = (c.utility_grounding, c.utility_fluency, c.utility_sentiment)
    rows = [test.row("{:g} / {:g} / {:g} (the folder's weights)".format(*own), test.utility(*own), ds),
            test.row("oracle: best ROUGE-L against the reference", scores - rerank.LOOP_PENALTY * test.loops, ds),
            test.row("oracle: best ROUGE-L among the grounded",
                     scores + 1000 * (test.margin > 0) - rerank.LOOP_PENALTY * test.loops, ds)]
    print(f"\ntest split, {test.n} requests, {test.k} candidates each\n")
    print("\n".join(table_lines(HEADER, rows, "l" + "r" * 5)))


if __name__ == "__main__":
    main()
