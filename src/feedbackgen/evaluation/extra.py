"""Metrics beyond PETER's: diversity, meaning, sentiment, personalisation, length, memorisation.

PETER's metrics reward n-gram overlap with one reference. These ask the other questions a
reader of generated feedback has: is it varied (distinct-n, self-BLEU), does it loop (loops: the
share of texts repeating a phrase, `feedbackgen.collapse`), does it say the same
thing as the real review (embedding similarity), does its tone match the stars (sentiment vs
rating), is it *this* user's review rather than anyone's (personalisation), is it the right
length, and is it copied from the training set (memorisation). `EXTRA_METRICS` documents each key.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from feedbackgen.collapse import LOOP_RULE
from feedbackgen.embeddings import embed
from feedbackgen.evaluation.grounding import GROUNDING_SOURCE
from feedbackgen.features.sentences import vader_compound  # noqa: F401  (re-exported: one definition)
from feedbackgen.evaluation.metrics import Metric, _ngrams

Tokens = Sequence[str]

SELF_BLEU_MAX_SAMPLES = 500
MEMORISATION_N = 8
PERSONALISATION_DISTRACTORS = 99
PERSONALISATION_MAX_QUERIES = 2000

_PERSONALISATION = (f"feedbackgen: for each generated text, its own row's reference is ranked among the "
                    f"references of {PERSONALISATION_DISTRACTORS} other users drawn at random (seeded), "
                    "by MiniLM cosine; ties count half")

EXTRA_METRICS: dict[str, Metric] = {
    "item_grounding": Metric("Item grounding", GROUNDING_SOURCE, "higher",
                             "share of texts whose nearest training sentence (TF-IDF cosine) was written "
                             "about the same item; empty texts and unknown items left out and counted"),
    "distinct1": Metric("Distinct-1", "Li et al. 2016, A Diversity-Promoting Objective (NAACL)", "higher",
                        "distinct unigrams / unigrams, over all generated texts"),
    "distinct2": Metric("Distinct-2", "Li et al. 2016, A Diversity-Promoting Objective (NAACL)", "higher",
                        "distinct bigrams / bigrams, over all generated texts"),
    "self_bleu4": Metric("Self-BLEU-4", "Zhu et al. 2018, Texygen (SIGIR); nltk sentence_bleu, smoothing "
                         "method1", "lower",
                         f"mean BLEU-4 of each generated text against the others as references, on at "
                         f"most {SELF_BLEU_MAX_SAMPLES} texts sampled with a fixed seed, ×100"),
    "loops": Metric("Loops", "feedbackgen.collapse (seq-rep-4 after Welleck et al. 2019, Neural Text "
                    "Degeneration with Unlikelihood Training, arXiv:1908.04319)", "lower",
                    f"share of generated texts with a looping phrase: {LOOP_RULE}, on the texts' words "
                    "(the rule the collapse check applies; real Musical Instruments reviews: 0.28 %)"),
    "embedding_sim": Metric("Embedding similarity", "Reimers & Gurevych 2019; all-MiniLM-L6-v2", "higher",
                            "mean cosine between the embeddings of each generated text and its reference"),
    "sentiment_rating_rho": Metric("Sentiment–rating ρ", "Hutto & Gilbert 2014 (VADER); Spearman", "higher",
                                   "Spearman correlation of the VADER compound score of the generated "
                                   "text with the true rating"),
    "sentiment_pred_rating_rho": Metric("Sentiment–predicted rating ρ", "Hutto & Gilbert 2014 (VADER); "
                                        "Spearman", "higher",
                                        "Spearman correlation of the VADER compound score of the generated "
                                        "text with the model's own predicted rating (self-consistency)"),
    "personalisation_mrr": Metric("Personalisation MRR", _PERSONALISATION, "higher",
                                  "mean reciprocal rank of the own reference (compare with the chance level)"),
    "personalisation_mean_rank": Metric("Personalisation mean rank", _PERSONALISATION, "lower",
                                        "mean rank of the own reference among the candidates"),
    "personalisation_chance_mrr": Metric("Personalisation MRR at chance", _PERSONALISATION, "none",
                                         "expected MRR of a random ranking: H(K+1)/(K+1)"),
    "personalisation_chance_mean_rank": Metric("Personalisation mean rank at chance", _PERSONALISATION,
                                               "none", "expected rank of a random ranking: (K+2)/2"),
    "personalisation_candidates": Metric("Personalisation candidates", _PERSONALISATION, "none",
                                         "candidates per query, K+1 (fewer when there are fewer users)"),
    "personalisation_queries": Metric("Personalisation queries", _PERSONALISATION, "none",
                                      f"generated texts ranked (at most {PERSONALISATION_MAX_QUERIES}, "
                                      "sampled with a fixed seed)"),
    **{
        f"length_{side}_{stat}": Metric(f"Length {stat} ({side})", "feedbackgen", "none",
                                        f"{stat} tokens per {'generated text' if side == 'gen' else 'reference'}"
                                        + " (compare generated with reference)")
        for side in ("gen", "ref") for stat in ("mean", "median", "p90")
    },
    "memorisation": Metric("Memorisation", "feedbackgen (after Carlini et al. 2021's verbatim "
                           "extraction)", "lower",
                           f"share of generated texts that copy {MEMORISATION_N} or more tokens verbatim from "
                           "the training texts"),
    "longest_copied_span": Metric("Longest copied span", "feedbackgen", "lower",
                                  f"longest run of consecutive {MEMORISATION_N}-grams found in training, in "
                                  "tokens (an upper bound on the longest verbatim copy: overlapping "
                                  f"{MEMORISATION_N}-grams may come from different training texts); 0 if none"),
}


# -- diversity ---------------------------------------------------------------------------------

def distinct_n(generated: Sequence[Tokens], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / total n-grams over the whole corpus."""
    counts = Counter()
    for tokens in generated:
        counts.update(_ngrams(tokens, n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def _sample_indices(n: int, max_samples: int, seed: int) -> np.ndarray:
    if n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def _top_two(counts: list[Counter]) -> dict[tuple, tuple[int, int, int]]:
    """For each n-gram: (highest count in any text, that text's index, second highest count)."""
    top: dict[tuple, tuple[int, int, int]] = {}
    for i, counter in enumerate(counts):
        for gram, c in counter.items():
            best, holder, second = top.get(gram, (0, -1, 0))
            if c > best:
                top[gram] = (c, i, best)
            elif c > second:
                top[gram] = (best, holder, c)
    return top


def _matches_against_others(counter: Counter, top: dict, i: int) -> int:
    """Clipped matches of text i's n-grams: each counts at most as often as in any *other* text."""
    matched = 0
    for gram, c in counter.items():
        best, holder, second = top[gram]
        matched += min(c, second if holder == i else best)
    return matched


def self_bleu(generated: Sequence[Tokens], max_order: int = 4, max_samples: int = SELF_BLEU_MAX_SAMPLES,
              seed: int = 1) -> float:
    """Self-BLEU (Texygen): mean sentence BLEU of each text against all the others as references, ×100.

    Same numbers as nltk `sentence_bleu(others, text, smoothing_function=SmoothingFunction().method1)`
    (counts clipped by the most occurrences in any other text, closest reference length for the
    brevity penalty, 0.1 matches given to an order without any), on at most `max_samples` texts
    drawn with `seed`, because it is quadratic in the number of texts. "Most occurrences in any
    other text" comes from each n-gram's two highest counts, so no pair of texts is compared."""
    texts = [list(generated[i]) for i in _sample_indices(len(generated), max_samples, seed)]
    if len(texts) < 2:
        return 0.0
    counts = [[_ngrams(t, order) for t in texts] for order in range(1, max_order + 1)]
    tops = [_top_two(per_text) for per_text in counts]
    lengths = np.array([len(t) for t in texts])
    scores = np.zeros(len(texts))
    for i, hyp_len in enumerate(lengths):
        matched = [_matches_against_others(counts[o][i], tops[o], i) for o in range(max_order)]
        if matched[0] == 0:
            continue  # no unigram in common with any other text: 0, as nltk
        totals = [max(1, sum(counts[o][i].values())) for o in range(max_order)]
        log_precision = [math.log((m if m else 0.1) / t) for m, t in zip(matched, totals)]
        others = np.delete(lengths, i)
        closest = int(others[np.lexsort((others, np.abs(others - hyp_len)))[0]])  # ties: the shorter
        brevity = 1.0 if hyp_len > closest else math.exp(1 - closest / hyp_len)
        scores[i] = brevity * math.exp(math.fsum(lp / max_order for lp in log_precision))
    return float(scores.mean()) * 100


# -- meaning -----------------------------------------------------------------------------------

def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine of two aligned embedding matrices (rows need not be normalised)."""
    if len(a) == 0:
        return 0.0
    return float(np.mean(np.sum(_unit_rows(a) * _unit_rows(b), axis=1)))


def embedding_similarity(generated: Sequence[str], references: Sequence[str]) -> float:
    """Mean cosine of all-MiniLM-L6-v2 embeddings of each generated text and its reference."""

    return mean_cosine(embed(list(generated)), embed(list(references)))


# -- sentiment ---------------------------------------------------------------------------------

def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's ρ; None when undefined (fewer than 3 pairs, or either side constant)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def sentiment_rating_agreement(texts: Sequence[str], ratings: Sequence[float]) -> float | None:
    """Spearman ρ between the VADER compound of each text and its rating (higher = tone follows stars)."""
    return spearman(vader_compound(texts), ratings)


# -- personalisation ---------------------------------------------------------------------------

def personalisation(generated_vecs: np.ndarray, reference_vecs: np.ndarray, user_ids: Sequence[str],
                    n_distractors: int = PERSONALISATION_DISTRACTORS,
                    max_queries: int = PERSONALISATION_MAX_QUERIES, seed: int = 1) -> dict[str, float]:
    """Does a generated text look more like its own user's real review than like other users'?

    Rows are aligned: generated text i was written for the user of row i, whose held-out
    reference is reference i. For each query row i (at most `max_queries`, drawn with `seed`), the
    candidates are reference i and, for each of K = `n_distractors` distinct other users drawn
    uniformly, one of that user's references drawn uniformly. Candidates are scored by cosine
    with generated text i; the rank of reference i is 1 + (distractors scoring higher) + ½ (those
    scoring equal). Reported: mean reciprocal rank and mean rank, with their values under a random
    ranking, H(K+1)/(K+1) and (K+2)/2, for comparison. Returns {} with fewer than two users."""
    users, user_of_row = np.unique(np.asarray(user_ids, dtype=object), return_inverse=True)
    n_users = len(users)
    if n_users < 2 or len(user_of_row) == 0:
        return {}
    k = min(n_distractors, n_users - 1)
    rng = np.random.default_rng(seed)
    queries = _sample_indices(len(user_of_row), max_queries, seed)
    # rows grouped by user, to draw "one reference of user u" in O(1)
    rows_by_user = np.argsort(user_of_row, kind="stable")
    first_row = np.searchsorted(user_of_row[rows_by_user], np.arange(n_users))
    row_count = np.bincount(user_of_row, minlength=n_users)

    distractor_rows = np.empty((len(queries), k), dtype=np.int64)
    for q, i in enumerate(queries):
        others = rng.choice(n_users - 1, size=k, replace=False)
        others += others >= user_of_row[i]  # skip the query's own user
        pick = first_row[others] + (rng.random(k) * row_count[others]).astype(np.int64)
        distractor_rows[q] = rows_by_user[pick]

    gen = _unit_rows(generated_vecs[queries])
    refs = _unit_rows(reference_vecs)
    own = np.einsum("qd,qd->q", gen, refs[queries])
    distractors = np.einsum("qd,qkd->qk", gen, refs[distractor_rows])
    rank = 1 + (distractors > own[:, None]).sum(1) + 0.5 * (distractors == own[:, None]).sum(1)
    harmonic = sum(1 / r for r in range(1, k + 2))
    return {
        "personalisation_mrr": float(np.mean(1 / rank)),
        "personalisation_mean_rank": float(np.mean(rank)),
        "personalisation_chance_mrr": harmonic / (k + 1),
        "personalisation_chance_mean_rank": (k + 2) / 2,
        "personalisation_candidates": k + 1,
        "personalisation_queries": len(queries),
    }


# -- length ------------------------------------------------------------------------------------

def length_stats(samples: Sequence[Tokens], side: str) -> dict[str, float]:
    """Mean, median and 90th percentile of tokens per sample; keys `length_{side}_{stat}`."""
    lengths = np.array([len(s) for s in samples], dtype=np.float64)
    if lengths.size == 0:
        return {}
    return {f"length_{side}_mean": float(lengths.mean()),
            f"length_{side}_median": float(np.median(lengths)),
            f"length_{side}_p90": float(np.percentile(lengths, 90))}


# -- memorisation ------------------------------------------------------------------------------

_HASH_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits so near-identical n-grams get unrelated hashes."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _window_hashes(sequences: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every n-token window lying inside one sequence (sequence by sequence, in
    order), and whether each window holds an unknown token (id < 0: it cannot occur in training)."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    counts = np.maximum(lengths - n + 1, 0)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool)
    ids = np.concatenate(sequences)
    offsets = np.cumsum(lengths) - lengths
    seq_of_window = np.repeat(np.arange(len(sequences)), counts)
    first_window = np.cumsum(counts) - counts
    starts = offsets[seq_of_window] + np.arange(total) - first_window[seq_of_window]
    h = np.zeros(total, dtype=np.uint64)
    unknown = np.zeros(total, dtype=bool)
    for k in range(n):
        token = ids[starts + k]
        unknown |= token < 0
        h = (h ^ token.astype(np.uint64)) * _HASH_MULTIPLIER  # wraps mod 2**64, as intended
    return _mix64(h), unknown


class NgramIndex:
    """The set of hashed n-grams of the training texts (sorted unique uint64, 8 bytes each)."""

    def __init__(self, training: Sequence[Tokens], n: int = MEMORISATION_N, chunk: int = 100_000):
        self.n = n
        self.vocab: dict[str, int] = {}
        parts = [np.zeros(0, dtype=np.uint64)]
        for start in range(0, len(training), chunk):  # chunks bound the temporary arrays
            seqs = [np.array([self.vocab.setdefault(w, len(self.vocab)) for w in t], dtype=np.int64)
                    for t in training[start:start + chunk]]
            parts.append(np.unique(_window_hashes(seqs, n)[0]))
        self.hashes = np.unique(np.concatenate(parts))

    def __len__(self) -> int:
        return len(self.hashes)

    def matches(self, samples: Sequence[Tokens]) -> list[np.ndarray]:
        """For each sample, one bool per n-gram window, in order: does it occur in training?"""
        seqs = [np.array([self.vocab.get(w, -1) for w in s], dtype=np.int64) for s in samples]
        hashes, unknown = _window_hashes(seqs, self.n)
        pos = np.minimum(np.searchsorted(self.hashes, hashes), max(len(self.hashes) - 1, 0))
        found = ~unknown & (self.hashes[pos] == hashes) if len(self.hashes) else np.zeros(len(hashes), bool)
        counts = [max(len(s) - self.n + 1, 0) for s in seqs]
        return np.split(found, np.cumsum(counts)[:-1]) if counts else []


def memorisation(generated: Sequence[Tokens], index: NgramIndex) -> dict[str, float]:
    """Share of generated texts copying an n-gram verbatim from training, and the longest copied run.

    A run of r consecutive windows found in training spans r + n - 1 tokens. Exact up to 64-bit
    hash collisions (negligible), except that the run's windows may come from different training
    texts, so the span is an upper bound on the longest single verbatim copy."""
    copied = 0
    longest = 0
    for found in index.matches(generated):
        if not found.any():
            continue
        copied += 1
        run = best = 0
        for hit in found:
            run = run + 1 if hit else 0
            best = max(best, run)
        longest = max(longest, best + index.n - 1)
    return {"memorisation": copied / len(generated) if generated else 0.0, "longest_copied_span": longest}
