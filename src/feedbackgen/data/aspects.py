"""Explanation targets in the PETER style: an aspect word, the sentence that mentions it, a sentiment.

Aspect (feature) words are mined without supervision, in one pass over the training reviews:

1. Candidates: alphabetic tokens of at least 3 letters that are not stop words (function words,
   light verbs, generic nouns: `STOP_WORDS`), not opinion words (the VADER lexicon), and do not
   end in -ly (adverbs).
2. Noun test, from the token's company (no tagger needed): nouns head noun phrases, so an aspect
   must often follow a determiner, possessive or number ("the strings", "my amp", "a great
   tone": at least `min_determiner_ratio` of its occurrences), and must rarely follow a degree
   adverb ("very small", "too heavy": at most `max_degree_ratio`), which is where adjectives sit.
3. Score: the number of sentences in which the token occurs within `window` tokens of an opinion
   word — people comment on the aspects they care about. The `top_n` best are the aspects.

Each review's explanation is then its first sentence that mentions an aspect within the first
`max_tokens` tokens: `aspect` (that word), `explanation` (the sentence's first `max_tokens`
tokens joined by single spaces, as in the PETER data) and `sentiment` (+1 / 0 / -1 from VADER's
compound score of the whole sentence, with a threshold of ±0.05). A review with no such sentence
keeps a null explanation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from functools import lru_cache
from typing import NamedTuple

import polars as pl

from feedbackgen.data.text import split_sentences, tokenize

STOP_WORDS = frozenset("""
a about above across after afterwards again against ago all almost along already also although
always am among amongst an and another any anybody anyhow anyone anything anyway anyways anywhere
are aren't around as aside at away back be became because become becomes been before beforehand
behind being below beside besides between beyond both but by can can't cannot could couldn't did
didn't do does doesn't doing don't done down during each eg either else elsewhere enough especially
etc even ever every everybody everyone everything everywhere except far few for former formerly
from further furthermore get gets getting got gotten had hadn't has hasn't have haven't having he
he'd he'll he's hence her here here's hereby herein hers herself him himself his how how's however
i i'd i'll i'm i've ie if in inc indeed instead into is isn't it it'd it'll it's its itself just
last later latter least less let let's lot lots made make makes making many may maybe me meanwhile
might mine more moreover most mostly much must mustn't my myself namely near nearly need needs
neither never nevertheless next no nobody none noone nor not nothing now nowhere of off often on
once one ones only onto or other others otherwise ought our ours ourselves out over overall own per
perhaps please put quite rather really said same say says see seem seemed seeming seems shall
shan't she she'd she'll she's should shouldn't since so some somebody somehow someone something
sometime sometimes somewhat somewhere still such sure take taken takes than that that'd that'll
that's the their theirs them themselves then thence there there's thereafter thereby therefore
therein these they they'd they'll they're they've thing things think this those though through
throughout thru thus till to together too toward towards two three four five under unless until up
upon us use used uses using various very via was wasn't way ways we we'd we'll we're we've well
were weren't what what's whatever when when's whence whenever where where's whereas whereby
wherever whether which while who who's whoever whole whom whose why why's will with within without
won't would wouldn't yes yet you you'd you'll you're you've your yours yourself yourselves
bit job stuff time times day days year years fact reason review reviews star stars people
new first second come comes came try tried
""".split())

DETERMINERS = frozenset("""
the a an this that these those my your his her its our their some any no every each both few
several many all one two three four five another
""".split())

DEGREE_ADVERBS = frozenset("""
very too so pretty quite really extremely fairly super rather incredibly somewhat relatively
""".split())


@lru_cache(maxsize=1)
def sentiment_analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def opinion_words() -> frozenset[str]:
    """The VADER lexicon's entries: words (and emoticons) that carry sentiment."""
    return frozenset(sentiment_analyzer().lexicon)


def is_candidate(token: str, opinion: Collection[str]) -> bool:
    return (len(token) >= 3 and token.isalpha() and token not in STOP_WORDS
            and token not in opinion and not token.endswith("ly"))


def mine_aspects(texts: Iterable[str], *, top_n: int = 200, window: int = 3, min_count: int = 3,
                 min_determiner_ratio: float = 0.15,
                 max_degree_ratio: float = 0.02) -> list[tuple[str, int]]:
    """The `top_n` aspect words of `texts` with their scores (see the module docstring), best first;
    ties broken alphabetically so the result is a pure function of the texts."""
    opinion = opinion_words()
    score: Counter = Counter()     # sentences where the token is near an opinion word
    count: Counter = Counter()     # occurrences
    after_det: Counter = Counter()
    after_degree: Counter = Counter()
    for text in texts:
        for sentence in split_sentences(text or ""):
            tokens = tokenize(sentence)
            opinion_at = [i for i, t in enumerate(tokens) if t in opinion]
            near = set()
            for i, token in enumerate(tokens):
                if not is_candidate(token, opinion):
                    continue
                count[token] += 1
                prev = tokens[i - 1] if i else ""
                if prev in DETERMINERS or prev.isdigit() or (
                        i > 1 and prev in opinion and tokens[i - 2] in DETERMINERS):
                    after_det[token] += 1
                if prev in DEGREE_ADVERBS:
                    after_degree[token] += 1
                if any(abs(i - j) <= window for j in opinion_at):
                    near.add(token)
            score.update(near)
    ranked = sorted(
        (w for w in score
         if count[w] >= min_count
         and after_det[w] >= min_determiner_ratio * count[w]
         and after_degree[w] <= max_degree_ratio * count[w]),
        key=lambda w: (-score[w], w))
    return [(w, score[w]) for w in ranked[:top_n]]


class Explanation(NamedTuple):
    aspect: str
    explanation: str
    sentiment: int


def sentiment_label(sentence: str, threshold: float = 0.05) -> int:
    compound = sentiment_analyzer().polarity_scores(sentence)["compound"]
    return 1 if compound >= threshold else -1 if compound <= -threshold else 0


def explain(text: str | None, aspects: Collection[str], *, max_tokens: int = 20,
            threshold: float = 0.05) -> Explanation | None:
    """The explanation target of one review, or None when no sentence mentions an aspect."""
    for sentence in split_sentences(text or ""):
        tokens = tokenize(sentence)[:max_tokens]
        aspect = next((t for t in tokens if t in aspects), None)
        if aspect is not None:
            return Explanation(aspect, " ".join(tokens), sentiment_label(sentence, threshold))
    return None


def add_explanations(df: pl.DataFrame, aspects: Collection[str], *, max_tokens: int = 20,
                     threshold: float = 0.05) -> pl.DataFrame:
    """`df` with `aspect`, `explanation` and `sentiment` columns from its `text` column."""
    aspects = frozenset(aspects)
    found = [explain(t, aspects, max_tokens=max_tokens, threshold=threshold) for t in df["text"]]
    return df.with_columns(
        pl.Series("aspect", [e.aspect if e else None for e in found], dtype=pl.Utf8),
        pl.Series("explanation", [e.explanation if e else None for e in found], dtype=pl.Utf8),
        pl.Series("sentiment", [e.sentiment if e else None for e in found], dtype=pl.Int8),
    )
