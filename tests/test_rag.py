"""Retrieval-augmented generation: the shared neighbour search, PETER with retrieved context, and
retrieved reviews in the LLM prompts (`llm`/`sft` share `build_messages`; `prompt_lm` its own).

Real rows of the PETER-format Musical Instruments data with two planted rows: a copy of a
training sentence by another user about the same item, and a test review also posted, by the same
user about the same item, in training.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from feedbackgen.config import Decoding
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.text import tokenize
from feedbackgen.models import create, load
from feedbackgen.models.base import IdIndex
from feedbackgen.models.llm.prompts import clean
from feedbackgen.models.peter import PETER, PeterShape
from feedbackgen.models.peter.rag import RagContext
from feedbackgen.models.vocab import EOS, PAD
from feedbackgen.types import FeedbackRequest
from support import TINY, peter_slice, requests_of

RAG = {**TINY, "rag_k": 3, "rag_max_tokens": 36}


@pytest.fixture(scope="module")
def planted(data_root):
    """(dataset, facts): the slice with the two planted training rows."""
    ds = peter_slice(data_root, n_train=300, n_valid=30, n_test=30)
    df = ds.interactions
    train = df.filter(pl.col("split") == "train")
    first = train.row(0, named=True)
    other_user = train.filter((pl.col("user_id") != first["user_id"])
                              & ~pl.col("user_id").is_in(train.filter(pl.col("item_id") == first["item_id"])
                                                         ["user_id"].implode()))["user_id"][0]
    copy = {**first, "user_id": other_user}  # another user "writes" row 0's sentence about its item
    test = df.filter(pl.col("split") == "test").row(0, named=True)
    repost = {**test, "split": "train"}  # the test review, posted in training by the same user
    planted = pl.DataFrame([copy, repost], schema=df.schema)
    return Dataset(pl.concat([df, planted])), {"first": first, "copy_user": other_user, "test": test}


@pytest.fixture(scope="module")
def rag_peter(planted):
    return create("peter", RAG).fit(planted[0])


def words(text: str) -> str:
    return " ".join(tokenize(text)[:20])


# -- the neighbour search -------------------------------------------------------------------------

def test_retrieval_never_returns_the_pairs_own_review_nor_other_splits(planted, rag_peter):
    ds, facts = planted
    index = rag_peter.rag.index
    train_texts = {words(t) for t in ds.train["explanation"].to_list()}
    assert set(index.texts) <= train_texts  # only the training split is indexed
    held_out = {words(t) for t in pl.concat([ds.valid, ds.test])["explanation"].to_list()} - train_texts
    test = facts["test"]
    # the test pair's own review is in training (the re-post) but never retrieved for that pair
    for k in (1, 3, 50):
        got = index.neighbour_texts([test["user_id"]], [test["item_id"]], k)[0]
        assert got and words(test["explanation"]) not in got
    for r in ds.test.iter_rows(named=True):
        for text in index.neighbour_texts([r["user_id"]], [r["item_id"]], 50)[0]:
            assert text in train_texts and text not in held_out


def test_leave_one_out_drops_the_row_its_pair_and_copies_of_its_text(planted, rag_peter):
    ds, facts = planted
    index = rag_peter.rag.index
    first = facts["first"]
    u, i = index.users.get(first["user_id"]), index.items.get(first["item_id"])
    row = index.row_of(first["user_id"], first["item_id"])
    own = words(first["explanation"])
    assert index.texts[row] == own
    # without leave-one-out the planted copy (another user, same item) is a candidate ...
    assert own in [index.texts[r] for r in index.nearest(u, i, 50)]
    # ... with it, neither the row nor any copy of its text
    for r in range(len(index)):
        got = index.nearest(int(index.author[r]), int(index.about[r]), 50, leave_out=r)
        assert r not in got
        assert all(index.texts[g] != index.texts[r] for g in got)
        assert not any(index.author[g] == index.author[r] and index.about[g] == index.about[r] for g in got)


def test_training_reads_leave_one_out_context(planted, monkeypatch):
    ds, _ = planted
    calls = []
    encode = RagContext.encode

    def spy(self, vocab, user_ids, item_ids, leave_out=False):
        calls.append((len(user_ids), leave_out))
        return encode(self, vocab, user_ids, item_ids, leave_out)

    monkeypatch.setattr(RagContext, "encode", spy)
    model = create("peter", {**RAG, "max_epochs": 1}).fit(ds)
    assert (len(ds.train), True) in calls and (len(ds.valid), False) in calls
    # and the training contexts hold no row's own sentence (as the encoder's ids)
    context = encode(model.rag, model.vocab, ds.train["user_id"].to_list(), ds.train["item_id"].to_list(), True)
    share = model.rag.share
    for r, ids in enumerate(model.vocab.encode_batch([tokenize(t)[:20] for t in ds.train["explanation"]])):
        own = ids[:share - 1] + [EOS]
        ctx = context[r].tolist()
        assert not any(ctx[s:s + len(own)] == own for s in range(len(ctx) - len(own) + 1)), r


def test_unknown_users_and_items_get_neighbours_from_the_known_side(planted, rag_peter):
    ds, _ = planted
    index = rag_peter.rag.index
    user, item = ds.train["user_id"][5], ds.train["item_id"][5]
    u, i = index.users.get(user), index.items.get(item)
    by_item = index.nearest(IdIndex.UNKNOWN, i, 3)
    by_user = index.nearest(u, IdIndex.UNKNOWN, 3)
    assert len(by_item) and all(index.about[by_item] == i)
    assert len(by_user) and all(index.author[by_user] == u)
    assert len(index.nearest(IdIndex.UNKNOWN, IdIndex.UNKNOWN, 3)) == 0
    out = rag_peter.generate([FeedbackRequest("never-seen", item), FeedbackRequest(user, "never-seen"),
                              FeedbackRequest("never-seen", "never-seen")], {"unknown_item": "generate"})
    assert [f.meta["retrieved"] for f in out[:2]] == [min(3, len(index.rows_of_item[i])),
                                                      min(3, len(index.rows_of_user[u]))]
    assert out[2].meta["retrieved"] == 0 and all(f.text for f in out)


# -- PETER with retrieved context -----------------------------------------------------------------

def test_ids_never_see_the_context_and_words_do():
    torch.manual_seed(0)
    net = PETER(PeterShape(n_users=5, n_items=6, n_aspects=0, n_tokens=20, emsize=16, nhead=2, nlayers=2,
                           nhid=32, dropout=0.0, max_len=64, n_context=5), mean_rating=4.0).eval()
    user, item, words_in = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[1, 7, 8], [1, 9, 10]])
    a = torch.tensor([[5, 6, EOS, PAD, PAD], [11, EOS, PAD, PAD, PAD]])
    b = torch.tensor([[12, 13, EOS, PAD, PAD], [11, EOS, PAD, PAD, PAD]])
    ha, hb = net(user, item, words_in, context=a), net(user, item, words_in, context=b)
    assert torch.allclose(ha[:, :2], hb[:, :2], atol=1e-6)  # rating and context heads: IDs only
    assert torch.allclose(net.rating(ha[:, 0]), net.predict_rating(user, item), atol=1e-5)
    assert not torch.allclose(ha[0, 7:], hb[0, 7:])  # the words read the retrieved sentences
    assert torch.allclose(ha[1], hb[1], atol=1e-6)  # the same context gives the same row


def test_saved_rag_model_reloads_to_identical_greedy_output(planted, rag_peter, tmp_path):
    ds, _ = planted
    reqs = requests_of(ds.test)
    out = rag_peter.generate(reqs, {"max_new_tokens": 12})
    uncached, _ = rag_peter.generate_text(reqs, Decoding(max_new_tokens=12), use_cache=False)
    assert uncached == [f.text for f in out]
    beams = rag_peter.generate(reqs[:4], {"max_new_tokens": 12, "num_beams": 3})
    assert all(f.text for f in beams)
    rag_peter.save(tmp_path / "m")
    tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
    state = json.loads((tmp_path / "m" / "state.json").read_text())
    assert {"rag.vectors", "rag.author", "rag.about"} <= set(tensors) and state["rag.texts"] == rag_peter.rag.index.texts
    again = load(tmp_path / "m")
    assert [f.text for f in again.generate(reqs, {"max_new_tokens": 12})] == [f.text for f in out]
    assert torch.equal(again.rag.encode(again.vocab, [r.user_id for r in reqs], [r.item_id for r in reqs]),
                       rag_peter.rag.encode(rag_peter.vocab, [r.user_id for r in reqs], [r.item_id for r in reqs]))


# -- the LLM prompts ------------------------------------------------------------------------------

def test_llm_prompts_quote_neighbours_never_the_rows_own_review(planted):
    ds, facts = planted
    model = create("llm", {"rag_k": 20, "shots": 0}).fit(ds)  # sft builds its training prompts the same way
    first = facts["first"]
    h = model.history
    row = h.row_of_pair[(first["user_id"], first["item_id"])]
    training_prompt = model.messages(FeedbackRequest(first["user_id"], first["item_id"]), exclude=row)[0][-1]
    assert "Similar reviews: " in training_prompt["content"]
    assert json.dumps(" ".join(first["explanation"].split())) not in training_prompt["content"]
    served = model.messages(FeedbackRequest(first["user_id"], first["item_id"]))[0][-1]["content"]
    retrieved = h.neighbours.neighbour_texts([first["user_id"]], [first["item_id"]], 20)[0]
    assert retrieved and all(json.dumps(clean(t, 40)) in served for t in retrieved)
    assert json.dumps(" ".join(first["explanation"].split())) in served  # the planted copy, at serving
    plain = create("llm", {"shots": 0}).fit(ds)
    assert "Similar reviews" not in plain.messages(FeedbackRequest(first["user_id"], first["item_id"]))[0][-1]["content"]


def test_prompt_lm_prompt_text_quotes_neighbours_leave_one_out(planted):
    from feedbackgen.models.llm.prompt_lm import PromptLM

    ds, facts = planted
    model = PromptLM({"rag_k": 20})
    train = ds.train
    model.users, model.items = IdIndex(train["user_id"].to_list()), IdIndex(train["item_id"].to_list())
    model.index_neighbours(train)
    first = facts["first"]
    own = json.dumps(" ".join(first["explanation"].split()))
    assert own in model.prompt_text(first["user_id"], first["item_id"])  # the planted copy, at serving
    text = model.prompt_text(first["user_id"], first["item_id"], training=True)
    assert text.startswith(" Similar reviews: ") and own not in text
