"""Word and sub-word vocabularies for the neural generators, saved as a Hugging Face `tokenizer.json`.

Text reaching a model is already split by `feedbackgen.data.text.tokenize` (lower-case
`[a-z0-9']+` words, every other non-space character its own token). A `Vocab` maps those words to
ids and back:

- `Vocab.train_words(...)`: one id per word (a `tokenizers` WordLevel model), the most frequent
  `size - 4` words seen at least `min_count` times; the rest become `<unk>`.
- `Vocab.train_bpe(...)`: byte-pair-encoding pieces learnt inside words (a `tokenizers` BPE model
  whose non-initial pieces start with `##`), so every word can be spelled and `<unk>` only stands
  for characters never seen in training. The merges are learnt here (`learn_bpe`), not by
  `tokenizers`' trainer, whose choice among equally frequent pairs changes from run to run: the
  same corpus always gives the same vocabulary.

Both are saved the same way (`tokenizer.json`, loadable with `tokenizers.Tokenizer.from_file`), and
`decode` turns ids back into words: pieces are glued to the word before them, special tokens are
dropped. The first four ids are always `<pad>`, `<bos>`, `<eos>`, `<unk>`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
import heapq
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from feedbackgen.errors import DataError
from feedbackgen.io import atomic_write_text

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
CONTINUATION = "##"
FILE_NAME = "tokenizer.json"


class Vocab:
    """A trained `tokenizers.Tokenizer` over pre-split words, with the four special ids first."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        for i, tok in enumerate(SPECIALS):
            if tokenizer.token_to_id(tok) != i:
                raise DataError(f"vocabulary must map {tok!r} to id {i}")
        self.kind = "bpe" if isinstance(tokenizer.model, models.BPE) else "word"
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._pieces = [tokenizer.id_to_token(i) for i in range(size)]

    def __len__(self) -> int:
        return len(self._pieces)

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def train_words(cls, sentences: Iterable[Sequence[str]], size: int = 20000, min_count: int = 1) -> Vocab:
        """The `size - 4` most frequent words (ties broken alphabetically) seen `min_count`+ times."""
        counts = Counter(w for s in sentences for w in s)
        words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))[: max(0, size - len(SPECIALS))]
        vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words])}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return cls(tok)

    @classmethod
    def train_bpe(cls, sentences: Iterable[Sequence[str]], size: int = 4000, min_count: int = 2) -> Vocab:
        """BPE pieces within words, up to `size` entries (at least the specials and the alphabet,
        each character both word-initial and as a `##` piece); a merge needs `min_count` occurrences."""
        counts = Counter(w for s in sentences for w in s)
        pieces, merges = learn_bpe(counts, size, min_count)
        tok = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>",
                                   continuing_subword_prefix=CONTINUATION))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return cls(tok)

    # -- use ---------------------------------------------------------------------------------
    def encode(self, words: Sequence[str]) -> list[int]:
        return self.encode_batch([words])[0]

    def encode_batch(self, sentences: Sequence[Sequence[str]]) -> list[list[int]]:
        """Ids per sentence (no bos/eos added); empty sentences give empty lists."""
        out: list[list[int]] = [[] for _ in sentences]
        nonempty = [i for i, s in enumerate(sentences) if len(s)]
        if nonempty:
            encs = self.tokenizer.encode_batch([list(sentences[i]) for i in nonempty],
                                               is_pretokenized=True, add_special_tokens=False)
            for i, enc in zip(nonempty, encs):
                out[i] = enc.ids
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words for `ids`: continuation pieces glued on, specials (and anything after `<eos>`) dropped."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i < len(SPECIALS) or i >= len(self._pieces):
                continue
            piece = self._pieces[i]
            if self.kind == "bpe" and piece.startswith(CONTINUATION) and len(piece) > len(CONTINUATION):
                piece = piece[len(CONTINUATION):]
                if words:
                    words[-1] += piece
                    continue
            words.append(piece)
        return words

    def token(self, i: int) -> str:
        return self._pieces[i]

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    # -- persistence -------------------------------------------------------------------------
    def to_str(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_str(cls, text: str) -> Vocab:
        return cls(Tokenizer.from_str(text))

    def save(self, folder: str | Path) -> Path:
        return atomic_write_text(Path(folder) / FILE_NAME, self.to_str())

    @classmethod
    def load(cls, folder: str | Path) -> Vocab:
        path = Path(folder) / FILE_NAME
        return cls(Tokenizer.from_file(str(path)))


def learn_bpe(word_counts: dict[str, int], size: int,
              min_count: int = 2) -> tuple[list[str], list[tuple[str, str]]]:
    """(pieces, merges) of a BPE vocabulary with at most `size` pieces (specials and alphabet first).

    Classic BPE over word types: repeatedly merge the most frequent adjacent pair (ties: the
    smallest pair in string order), until `size` pieces or no pair occurs `min_count` times.
    Non-initial pieces carry the `##` prefix, as `tokenizers` expects."""
    words: list[list] = []
    chars: set[str] = set()
    for w, c in sorted(word_counts.items()):
        if w:
            words.append([[w[0]] + [CONTINUATION + ch for ch in w[1:]], c])
            chars.update(w)
    pieces = [*SPECIALS, *sorted({*chars, *(CONTINUATION + ch for ch in chars)})]
    known = set(pieces)
    pair_counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, (syms, c) in enumerate(words):
        for pair in zip(syms, syms[1:]):
            pair_counts[pair] += c
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(pieces) < size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue  # a stale entry: the pair's count changed since it was pushed
        if -neg < min_count:
            break
        a, b = pair
        new = a + (b[len(CONTINUATION):] if b.startswith(CONTINUATION) else b)
        merges.append(pair)
        if new not in known:
            pieces.append(new)
            known.add(new)
        changed = set()
        for wi in sorted(where.pop(pair, ())):
            syms, c = words[wi]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            if len(out) == len(syms):
                continue
            for p in zip(syms, syms[1:]):
                pair_counts[p] -= c
                changed.add(p)
            for p in zip(out, out[1:]):
                pair_counts[p] += c
                changed.add(p)
                where[p].add(wi)
            words[wi][0] = out
        pair_counts.pop(pair, None)
        for p in sorted(changed):
            if p != pair and pair_counts.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    return pieces, merges
