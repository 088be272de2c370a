"""The metrics the explainable-recommendation literature compares against (PETER / PEPLER).

Every function here computes exactly what lileipisces/PETER `utils.py` computes (and the
tensorflow/nmt `bleu.py` / `rouge.py` it imports), so numbers are comparable with published
tables; `tests/test_metrics.py` checks them against the reference's own output. The code is ours:
vectorised where the reference loops over pairs, but the arithmetic is the same.

Inputs are tokenised samples (`list[str]` each). Text metrics compare `generated[i]` with
`references[i]`; feature metrics use the feature (aspect) vocabulary; rating metrics clip the
predictions to [1, 5] first, as PETER does. BLEU and ROUGE are reported ×100 (as PETER prints
them), the ratios (USR, FMR, FCR, DIV) as fractions.

    peter_metrics(generated, references, feature_set, reference_features, ratings, reference_ratings)
    metrics_from_files(...)   # the same, from the plain aligned files `feedbackgen metrics` reads
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from feedbackgen.errors import ConfigError, DataError

Tokens = Sequence[str]

MIN_RATING, MAX_RATING = 1.0, 5.0  # PETER clips predictions to the corpus range; stars are 1..5


# -- metric definitions ------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """What a metric key means: where it is defined and which way is better."""

    name: str
    source: str
    direction: str  # "higher" | "lower" | "none" (descriptive: compare with the references)
    description: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


_PETER = "Li et al. 2021, PETER (ACL); lileipisces/PETER utils.py"
_NMT_BLEU = "Papineni et al. 2002; corpus BLEU of tensorflow/nmt scripts/bleu.py (smooth=False), as PETER bleu_score"
_NMT_ROUGE = "Lin 2004; tensorflow/nmt scripts/rouge.py (set-based n-grams, sentence LCS), as PETER rouge_score"
_OFFICIAL_ROUGE = "Lin 2004; Google `rouge-score` package (RougeScorer, default tokenizer, no stemming)"

METRICS: dict[str, Metric] = {
    "bleu1": Metric("BLEU-1", _NMT_BLEU, "higher", "corpus BLEU with unigrams only, ×100"),
    "bleu4": Metric("BLEU-4", _NMT_BLEU, "higher",
                    "corpus BLEU, uniform weights over 1..4-gram precisions, brevity penalty, ×100"),
    **{
        f"rouge{n}_{k}": Metric(f"ROUGE-{n.upper()} {label}", _NMT_ROUGE, "higher",
                                f"{label} of {what}, averaged over samples, ×100")
        for n, what in (("1", "distinct unigrams"), ("2", "distinct bigrams"),
                        ("L", "the longest common subsequence"))
        for k, label in (("p", "precision"), ("r", "recall"), ("f", "F1"))
    },
    **{
        f"rouge{n}_{k}_official": Metric(f"ROUGE-{n} {label} (rouge-score)", _OFFICIAL_ROUGE, "higher",
                                         f"{label} from the rouge-score package, averaged over samples, ×100")
        for n in ("1", "2", "L")
        for k, label in (("p", "precision"), ("r", "recall"), ("f", "F1"))
    },
    "usr": Metric("USR", _PETER + " unique_sentence_percent", "higher",
                  "unique generated sentences / generated sentences"),
    "usn": Metric("USN", _PETER + " unique_sentence_percent", "higher", "number of unique generated sentences"),
    "fmr": Metric("FMR", _PETER + " feature_matching_ratio", "higher",
                  "share of samples whose generated text contains the ground-truth feature "
                  "(samples without a ground-truth feature are left out)"),
    "fcr": Metric("FCR", _PETER + " feature_coverage_ratio", "higher",
                  "distinct features appearing in generated texts / size of the feature set"),
    "div": Metric("DIV", _PETER + " feature_diversity", "lower",
                  "mean number of features shared by two generated texts, over all pairs"),
    "rmse": Metric("RMSE", _PETER + " root_mean_square_error", "lower",
                   "root mean squared error of predictions clipped to [1, 5]"),
    "mae": Metric("MAE", _PETER + " mean_absolute_error", "lower",
                  "mean absolute error of predictions clipped to [1, 5]"),
}


# -- BLEU (tensorflow/nmt compute_bleu, one reference per sample) ------------------------------

def _ngrams(tokens: Tokens, n: int) -> Counter:
    """Counts of the n-grams of exactly order n."""
    return Counter(zip(*(tokens[i:] for i in range(n))))


def corpus_bleu(references: Sequence[Tokens], generated: Sequence[Tokens], max_order: int = 4) -> float:
    """Corpus BLEU in [0, 1]: clipped n-gram matches and candidate n-grams are summed over the
    corpus per order, precisions combined by a uniform geometric mean, times the brevity penalty
    exp(1 - ref_len / gen_len) when the generated corpus is shorter. No smoothing, so any order
    without a single match makes the score 0 (why BLEU-4 of short texts is often tiny)."""
    matches = np.zeros(max_order)
    possible = np.zeros(max_order)
    for ref, gen in zip(references, generated):
        for order in range(1, max_order + 1):
            overlap = _ngrams(gen, order) & _ngrams(ref, order)
            matches[order - 1] += sum(overlap.values())
            possible[order - 1] += max(len(gen) - order + 1, 0)
    if (matches == 0).any():  # also covers orders with no candidate n-gram at all
        return 0.0
    geo_mean = math.exp(sum(math.log(p) / max_order for p in matches / possible))
    gen_len = sum(len(g) for g in generated)
    ref_len = sum(len(r) for r in references)
    ratio = gen_len / ref_len if ref_len else math.inf
    brevity_penalty = 1.0 if ratio > 1.0 else math.exp(1 - 1 / ratio)
    return geo_mean * brevity_penalty


def bleu_score(references: Sequence[Tokens], generated: Sequence[Tokens], n_gram: int = 4) -> float:
    """PETER's BLEU-n: corpus BLEU up to order `n_gram`, ×100."""
    return corpus_bleu(references, generated, max_order=n_gram) * 100


# -- ROUGE, PETER's variant (tensorflow/nmt rouge.py) ------------------------------------------

def _rouge_words(tokens: Tokens) -> list[str]:
    """PETER joins tokens with spaces and the ROUGE script splits on " ", so an empty sample is one
    empty word. Kept on purpose: it makes ROUGE of two empty samples 1 instead of a division by 0."""
    return list(tokens) if tokens else [""]


def _ngram_set(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return set(zip(*(words[i:] for i in range(n))))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison & Dix 1986; Hyyrö 2004).

    Bit i of `v` is 0 where the LCS of a[:i+1] and the processed prefix of b gains a step; one
    add and a few masks per token of `b` replace a row of the O(len(a)·len(b)) table."""
    if not a or not b:
        return 0
    full = (1 << len(a)) - 1
    positions: dict[str, int] = {}
    for i, word in enumerate(a):
        positions[word] = positions.get(word, 0) | (1 << i)
    v = full
    for word in b:
        u = v & positions.get(word, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def _rouge_n_prf(gen: list[str], ref: list[str], n: int) -> tuple[float, float, float]:
    g, r = _ngram_set(gen, n), _ngram_set(ref, n)
    overlap = len(g & r)
    p = overlap / len(g) if g else 0.0
    rec = overlap / len(r) if r else 0.0
    return p, rec, 2.0 * (p * rec / (p + rec + 1e-8))  # the script's epsilon, kept for equal numbers


def _rouge_l_prf(gen: list[str], ref: list[str]) -> tuple[float, float, float]:
    lcs = lcs_length(gen, ref)
    p, r = lcs / len(gen), lcs / len(ref)
    beta = p / (r + 1e-12)  # the script's weighting: with beta = P/R the F-measure is its own kind
    f = (1 + beta**2) * r * p / (r + beta**2 * p + 1e-12)
    return p, r, f


def peter_rouge(references: Sequence[Tokens], generated: Sequence[Tokens]) -> dict[str, float]:
    """ROUGE-1/2/L precision, recall and F as PETER computes them, averaged over samples, ×100.

    Differs from the official package: n-grams are sets (a repeated n-gram counts once), no
    re-tokenisation or lower-casing, and its own F for ROUGE-L (see `_rouge_l_prf`)."""
    scores = {f"rouge{n}_{k}": np.zeros(len(generated)) for n in ("1", "2", "L") for k in "prf"}
    for i, (gen, ref) in enumerate(zip(generated, references)):
        gen, ref = _rouge_words(gen), _rouge_words(ref)
        for name, (p, r, f) in (("1", _rouge_n_prf(gen, ref, 1)), ("2", _rouge_n_prf(gen, ref, 2)),
                                ("L", _rouge_l_prf(gen, ref))):
            scores[f"rouge{name}_p"][i], scores[f"rouge{name}_r"][i], scores[f"rouge{name}_f"][i] = p, r, f
    return {k: float(np.mean(v)) * 100 for k, v in scores.items()}


def official_rouge(references: Sequence[Tokens], generated: Sequence[Tokens]) -> dict[str, float]:
    """ROUGE-1/2/L from Google's `rouge-score` package (its tokenizer: lower-case, letters and digits
    only; clipped n-gram counts), per-sample scores averaged, ×100. Keys end in `_official`."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    sums = {f"rouge{n}_{k}_official": 0.0 for n in ("1", "2", "L") for k in "prf"}
    for gen, ref in zip(generated, references):
        for name, score in scorer.score(target=" ".join(ref), prediction=" ".join(gen)).items():
            n = name.removeprefix("rouge")
            sums[f"rouge{n}_p_official"] += score.precision
            sums[f"rouge{n}_r_official"] += score.recall
            sums[f"rouge{n}_f_official"] += score.fmeasure
    count = max(len(generated), 1)
    return {k: v / count * 100 for k, v in sums.items()}


# -- diversity of the generated sentences ------------------------------------------------------

def unique_sentence_percent(generated: Sequence[Tokens]) -> tuple[float, int]:
    """USR (unique sentences / sentences) and USN (the count). Exact token-sequence identity."""
    unique = len({tuple(s) for s in generated})
    return (unique / len(generated) if generated else 0.0), unique


# -- features (aspects) ------------------------------------------------------------------------

def feature_detect(generated: Sequence[Tokens], feature_set: Iterable[str]) -> list[set[str]]:
    """For each generated sample, the set of its tokens that are features."""
    features = set(feature_set)
    return [features.intersection(tokens) for tokens in generated]


def feature_matching_ratio(detected: Sequence[set[str]], reference_features: Sequence[str | None]) -> float:
    """FMR: share of samples whose generated text mentions the sample's ground-truth feature.

    A sample whose ground-truth feature is None (our datasets can lack one) is left out of the
    denominator; PETER's data always has one, so on its data this is exactly its FMR."""
    pairs = [(found, f) for found, f in zip(detected, reference_features) if f is not None]
    return sum(f in found for found, f in pairs) / len(pairs) if pairs else 0.0


def feature_coverage_ratio(detected: Sequence[set[str]], feature_set: Iterable[str]) -> float:
    """FCR: distinct features mentioned anywhere in the generated texts / size of the feature set."""
    n_features = len(set(feature_set))
    return len(set().union(*detected)) / n_features if n_features else 0.0


def feature_diversity(detected: Sequence[set[str]]) -> float | None:
    """DIV: mean |F_i ∩ F_j| over all pairs i < j (lower = texts talk about different features).

    The reference loops over the n²/2 pairs; the same sum is Σ_f C(c_f, 2), where c_f is the
    number of samples mentioning feature f (each such pair shares f once), so it takes one pass.
    Fewer than two samples have no pairs: undefined, None (0.0 would claim perfect diversity)."""
    n = len(detected)
    if n < 2:
        return None
    counts = Counter(f for found in detected for f in found)
    shared = sum(c * (c - 1) // 2 for c in counts.values())
    return shared / (n * (n - 1) / 2)


# -- ratings -----------------------------------------------------------------------------------

def _clipped_errors(predicted: Sequence[float], true: Sequence[float],
                    max_rating: float, min_rating: float) -> np.ndarray:
    predicted = np.clip(np.asarray(predicted, dtype=np.float64), min_rating, max_rating)
    return predicted - np.asarray(true, dtype=np.float64)


def root_mean_square_error(predicted: Sequence[float], true: Sequence[float],
                           max_rating: float = MAX_RATING, min_rating: float = MIN_RATING) -> float:
    errors = _clipped_errors(predicted, true, max_rating, min_rating)
    return math.sqrt(float(np.mean(errors**2))) if errors.size else 0.0


def mean_absolute_error(predicted: Sequence[float], true: Sequence[float],
                        max_rating: float = MAX_RATING, min_rating: float = MIN_RATING) -> float:
    errors = _clipped_errors(predicted, true, max_rating, min_rating)
    return float(np.mean(np.abs(errors))) if errors.size else 0.0


# -- everything at once ------------------------------------------------------------------------

def to_stars(ratings: Sequence[float], lo: int = 1, hi: int = 5) -> np.ndarray:
    """The star a rating stands for: rounded half up to the nearest whole star (np.rint would
    round 2.5 to 2), within [lo, hi]."""
    return np.clip(np.floor(np.asarray(ratings, dtype=np.float64) + 0.5), lo, hi).astype(np.int64)


def _check_aligned(name: str, values: Sequence | None, n: int) -> None:
    if values is not None and len(values) != n:
        raise DataError(f"{name} has {len(values)} entries but generated has {n}; they must be aligned")


def peter_metrics(generated: list[list[str]], references: list[list[str]],
                  feature_set: Iterable[str] | None = None,
                  reference_features: Sequence[str | None] | None = None,
                  ratings: Sequence[float] | None = None,
                  reference_ratings: Sequence[float] | None = None) -> dict[str, float]:
    """All PETER metrics (plus the official rouge-score variant) for aligned tokenised samples.

    Keys: bleu1, bleu4, rouge{1,2,L}_{p,r,f}, rouge{1,2,L}_{p,r,f}_official, usr, usn; with a
    feature set: fcr, div, and fmr when reference features are given too; with both rating
    lists: rmse, mae. See `METRICS` for each key's source and direction."""
    n = len(generated)
    _check_aligned("references", references, n)
    _check_aligned("reference_features", reference_features, n)
    _check_aligned("ratings", ratings, n)
    _check_aligned("reference_ratings", reference_ratings, n)
    if (ratings is None) != (reference_ratings is None):
        raise ConfigError("ratings and reference_ratings must be given together")
    if reference_features is not None and feature_set is None:
        raise ConfigError("reference_features needs feature_set (FMR looks for features in the text)")

    out: dict[str, float] = {
        "bleu1": bleu_score(references, generated, n_gram=1),
        "bleu4": bleu_score(references, generated, n_gram=4),
        **peter_rouge(references, generated),
        **official_rouge(references, generated),
    }
    out["usr"], out["usn"] = unique_sentence_percent(generated)
    if feature_set is not None:
        feature_set = set(feature_set)
        detected = feature_detect(generated, feature_set)
        if reference_features is not None:
            out["fmr"] = feature_matching_ratio(detected, reference_features)
        out["fcr"] = feature_coverage_ratio(detected, feature_set)
        out["div"] = feature_diversity(detected)
    if ratings is not None:
        out["rmse"] = root_mean_square_error(ratings, reference_ratings)
        out["mae"] = mean_absolute_error(ratings, reference_ratings)
    return out


# -- plain files (the `feedbackgen metrics` command) -------------------------------------------

def _read_lines(path: Path) -> list[str]:
    """Lines split on "\\n" only (a token may hold any other character); one final newline is not
    a line."""
    try:
        # bytes, then decode: read_text would translate a lone "\r" into a line break
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError("file does not exist", source=str(path)) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=str(path)) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_token_file(path: Path) -> list[list[str]]:
    """One tokenised sample a line; tokens are split on single whitespace characters (a space, or a
    "\r", tab or other blank inside the line: the official ROUGE's tokeniser treats them as spaces,
    so BLEU must too) and used as they are. An empty line is a sample with no tokens."""
    return [_TOKEN_SEPARATOR.split(line) if line else [] for line in _read_lines(path)]


_TOKEN_SEPARATOR = re.compile(r"[^\S\n]")  # any whitespace but the line break, one character at a time


def read_word_file(path: Path) -> list[str]:
    """One word a line, surrounding whitespace stripped."""
    return [line.strip() for line in _read_lines(path)]


def read_number_file(path: Path) -> list[float]:
    values = []
    for number, line in enumerate(_read_lines(path), start=1):
        try:
            value = float(line.strip())
        except ValueError:
            raise DataError(f"expected a number, got {line.strip()!r}", source=str(path), line=number) from None
        if not math.isfinite(value):
            raise DataError(f"expected a finite number, got {line.strip()!r}", source=str(path), line=number)
        values.append(value)
    return values


def _newlines(path: Path) -> int:
    """What `wc -l` prints: the number of "\n" bytes (a last line without one is not counted)."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def _check_same_count(path: Path, values: list, expected: int, generated_path: Path) -> None:
    """Samples are lines ended by "\n" (the last may lack it); a mismatch names both counts, and
    `wc -l`'s where it differs (a missing final newline)."""
    if len(values) != expected:
        def count(p: Path, n: int) -> str:
            wc = _newlines(p)
            return f"{n} line{'s' if n != 1 else ''}" + (f" (wc -l: {wc}, the last line has no newline)"
                                                         if wc != n else "")
        raise DataError(f"has {count(path, len(values))} but {generated_path} has {count(generated_path, expected)}; "
                        "files must hold one sample a line, aligned (lines end at \"\\n\" only)", source=str(path))


def metrics_from_files(generated: Path, references: Path, feature_set: Path | None = None,
                       reference_features: Path | None = None, ratings: Path | None = None,
                       reference_ratings: Path | None = None) -> dict[str, float]:
    """`peter_metrics` on plain aligned files: generated / references one tokenised sample a line,
    feature set one word a line (blank lines ignored), reference features one word a line, ratings
    and reference ratings one number a line."""
    if (ratings is None) != (reference_ratings is None):
        raise DataError("--ratings and --reference-ratings must be given together")
    if reference_features is not None and feature_set is None:
        raise DataError("--reference-features needs --feature-set (FMR looks for features in the text)")
    gen = read_token_file(generated)
    n = len(gen)
    if not n:
        raise DataError("holds no samples: nothing to score (one tokenised sample a line)", source=str(generated))
    refs = read_token_file(references)
    _check_same_count(references, refs, n, generated)
    features = None
    if feature_set is not None:
        features = {w for w in read_word_file(feature_set) if w}
        if not features:
            raise DataError("holds no feature words", source=str(feature_set))
    ref_features = None
    if reference_features is not None:
        ref_features = read_word_file(reference_features)
        _check_same_count(reference_features, ref_features, n, generated)
    predicted = true = None
    if ratings is not None:
        predicted = read_number_file(ratings)
        _check_same_count(ratings, predicted, n, generated)
        true = read_number_file(reference_ratings)
        _check_same_count(reference_ratings, true, n, generated)
    return peter_metrics(gen, refs, features, ref_features, predicted, true)
