"""PETER: the mask, the heads, the losses, decoding, save/load, resuming, unknown IDs, overfitting.

Tiny configurations on a few hundred real rows of the PETER-format Musical Instruments data.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from feedbackgen.config import Decoding
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.text import tokenize
from feedbackgen.errors import CollapseWarning, ConfigError, DecodingWarning, NotFittedError
from feedbackgen.models import collapse, create, load
from feedbackgen.models import trainer as trainer_mod
from feedbackgen.batch import run_generation
from feedbackgen.decoding.search import beam_search, logits_processors
from feedbackgen.models.peter import Peter, peter_mask
from feedbackgen.models.peter.model import NEVER
from feedbackgen.models.vocab import BOS, EOS, PAD, Vocab
from feedbackgen.types import FeedbackRequest

from support import (TINY, fit_interrupted_after_first_checkpoint, peter_slice, requests_of,
                     run_until_first_checkpoint, tiny_net, weights)


@pytest.fixture(scope="module")
def ds(data_root) -> Dataset:
    return peter_slice(data_root)


@pytest.fixture(scope="module")
def fitted(tiny_peter) -> Peter:
    return tiny_peter  # TINY, 3 epochs on `ds`'s slice: the session's (conftest), shared with the batch-job tests


# -- the mask and the heads ----------------------------------------------------------------------

def test_peter_mask_is_causal_plus_user_sees_item():
    expected = torch.tensor([
        [1, 1, 0, 0, 0],   # user: itself and the item
        [1, 1, 0, 0, 0],   # item
        [1, 1, 1, 0, 0],   # <bos>
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(peter_mask(5), expected)
    # the last two queries of a five-position sequence (a cached prefix): plain causal rows
    assert torch.equal(peter_mask(2, 5), expected[3:])
    assert peter_mask(1, 7).all()


@pytest.mark.parametrize("norm_first", [True, False])
def test_heads_read_their_positions(norm_first):
    net = tiny_net(norm_first=norm_first)
    user, item = torch.tensor([1, 2, 3]), torch.tensor([1, 1, 4])
    tokens = torch.tensor([[BOS, 5, 6, 7], [BOS, 8, 9, EOS], [BOS, 10, EOS, PAD]])
    h = net(user, item, tokens)
    assert h.shape == (3, 2 + 4, 16)
    assert net.logits(h).shape == (3, 6, 20)
    rating = net.rating(h[:, 0])
    assert rating.shape == (3,)
    # the rating head sits on the user position, which sees the item but no text
    assert torch.allclose(net.predict_rating(user, item), rating, atol=1e-5)
    other_text = torch.tensor([[BOS, 11, 12, 13]] * 3)
    h2 = net(user, item, other_text)
    assert torch.allclose(h2[:, :2], h[:, :2], atol=1e-5)  # user and item positions: text unseen
    assert not torch.allclose(h2[:, 3:], h[:, 3:])
    h3 = net(user, torch.tensor([2, 2, 2]), tokens)
    assert not torch.allclose(net.rating(h3[:, 0]), rating)  # the user position sees the item


def test_aspect_slot_shifts_the_text():
    net = tiny_net(n_aspects=4)
    assert net.prefix_len == 3
    user, item, aspect = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([1, 2])
    tokens = torch.tensor([[BOS, 5], [BOS, 6]])
    h = net(user, item, tokens, aspect)
    assert h.shape == (2, 5, 16)
    h2 = net(user, item, tokens, torch.tensor([3, 3]))
    assert torch.allclose(h2[:, :2], h[:, :2], atol=1e-5)  # ids do not see the aspect
    assert not torch.allclose(h2[:, 3:], h[:, 3:])  # the words do


@torch.no_grad()
def test_loss_terms_match_their_definitions():
    net = tiny_net()
    seq = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 8, EOS, PAD, PAD]])
    batch = {"user": torch.tensor([1, 2]), "item": torch.tensor([3, 4]), "inputs": seq[:, :-1],
             "targets": seq[:, 1:], "rating": torch.tensor([5.0, 2.0]), "rating_mask": torch.ones(2)}
    out = net.losses(batch, (1.0, 1.0, 0.1))
    h = net(batch["user"], batch["item"], batch["inputs"])
    logp = F.log_softmax(net.logits(h), -1)
    # text: next-word NLL from <bos> on, pads ignored
    nll = [-logp[0, 2 + j, t] for j, t in enumerate([5, 6, 7, EOS])] + [-logp[1, 2, 8], -logp[1, 3, EOS]]
    assert math.isclose(float(out["nll_text"]), float(torch.stack(nll).mean()), rel_tol=1e-5)
    # context: the item position's distribution scored on every target word (not <eos>)
    ctx = [-logp[0, 1, t] for t in (5, 6, 7)] + [-logp[1, 1, 8]]
    assert math.isclose(float(out["nll_context"]), float(torch.stack(ctx).mean()), rel_tol=1e-5)
    r = net.rating(h[:, 0])
    assert math.isclose(float(out["mse_rating"]), float(((r - batch["rating"]) ** 2).mean()), rel_tol=1e-5)
    assert math.isclose(float(out["loss"]), float(out["nll_text"] + out["nll_context"] + 0.1 * out["mse_rating"]),
                        rel_tol=1e-5)
    w = net.losses(batch, (0.5, 0.0, 2.0))
    assert math.isclose(float(w["loss"]), float(0.5 * out["nll_text"] + 2.0 * out["mse_rating"]), rel_tol=1e-5)


# -- configuration -------------------------------------------------------------------------------

def test_presets_and_overrides():
    ref = Peter({"preset": "reference"}).config
    assert (ref.emsize, ref.nhead, ref.nlayers, ref.nhid, ref.dropout) == (512, 2, 2, 2048, 0.2)
    t = ref.training  # the Trainer's settings, nested, the preset's where not given
    assert (t.optimizer, t.lr, t.lr_decay, t.clip, t.batch_size, t.patience) == ("sgd", 1.0, 0.25, 1.0, 128, 5)
    assert (ref.vocab, ref.vocab_size, ref.max_words, ref.rating_weight) == ("word", 20000, 20, 0.1)
    d = Peter({"emsize": 64, "nhead": 2}).config
    assert (d.preset, d.emsize, d.training.optimizer, d.training.schedule) == ("default", 64, "adamw", "cosine")
    assert Peter({"target": "review"}).config.max_words == 60
    # a saved config (every field filled in) loads back unchanged
    assert Peter(ref.model_dump()).config == ref
    # a training setting by its flat name (--set lr=...), dotted or nested is one setting; the
    # preset fills the others, and a flat config saved before the nesting reads the same
    flat, dotted, nested = (Peter({"preset": "reference", **x}).config
                            for x in ({"lr": 0.5}, {"training.lr": 0.5}, {"training": {"lr": 0.5}}))
    assert flat == dotted == nested and flat.training.lr == 0.5 and flat.training.optimizer == "sgd"
    old_layout = {k: v for k, v in ref.model_dump().items() if k != "training"} | ref.training.model_dump()
    assert Peter(old_layout).config == ref


@pytest.mark.parametrize("bad,field", [
    ({"dropout": 1.5}, "dropout"), ({"emsize": 30, "nhead": 4}, "divisible"), ({"preset": "huge"}, "preset"),
    ({"optimizer": "adam"}, "optimizer"), ({"colour": 1}, "colour")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        Peter(bad)


def test_unfitted_model_says_what_to_call():
    with pytest.raises(NotFittedError, match="fit"):
        Peter(TINY).generate([FeedbackRequest("u", "i")])


# -- vocabularies --------------------------------------------------------------------------------

def test_word_and_bpe_vocabularies_round_trip(tmp_path):
    sents = [tokenize("the strings sound great, and they're cheap!"), tokenize("great strings .")] * 3
    words = Vocab.train_words(sents, size=10, min_count=2)
    assert [words.token(i) for i in range(4)] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert len(words) == 10
    ids = words.encode(tokenize("great strings zzz"))
    assert words.decode(ids)[:2] == ["great", "strings"]  # an unknown word decodes to nothing
    assert len(ids) == 3 and ids[2] == words.token_to_id("<unk>")
    assert words.decode(ids + [EOS, 5]) == words.decode(ids)  # stops at <eos>
    bpe = Vocab.train_bpe(sents, size=60, min_count=1)
    alphabet = 4 + 2 * len({ch for s in sents for w in s for ch in w})  # specials, x and ##x
    assert alphabet < len(bpe) <= 60
    assert any(len(bpe.token(i).removeprefix("##")) > 1 for i in range(len(bpe)))  # merges learnt
    for s in sents:
        assert bpe.decode(bpe.encode(s)) == s
    assert Vocab.train_bpe(sents, size=60, min_count=1).to_str() == bpe.to_str()  # deterministic
    bpe.save(tmp_path)
    again = Vocab.load(tmp_path)
    assert again.kind == "bpe" and again.encode(sents[0]) == bpe.encode(sents[0])


# -- fitting, saving, loading --------------------------------------------------------------------

def test_fit_logs_and_save_load_round_trip(fitted, ds, tmp_path):
    log = fitted.training_log
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert {"step", "train", "valid", "seconds", "samples_per_s", "lr"} <= set(log[0])
    assert log[-1]["train"]["loss"] < log[0]["train"]["loss"]
    fitted.save(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "state.json", "training_log.jsonl", "tokenizer.json"} <= names
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"] == "peter"
    lines = (tmp_path / "m" / "training_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
    again = load(tmp_path / "m")
    assert isinstance(again, Peter)
    reqs = requests_of(ds.test)
    a, b = fitted.generate(reqs), again.generate(reqs)
    assert [x.text for x in a] == [x.text for x in b]
    assert np.array_equal([x.rating for x in a], [x.rating for x in b])
    assert again.training_log == fitted.training_log


def test_generated_text_is_tokenized_and_ratings_clipped(fitted, ds):
    out = fitted.generate(requests_of(ds.test))
    assert len(out) == len(ds.test)
    assert not all(fb.meta["unknown_item"] for fb in out)
    for fb in out:
        assert bool(fb.text) != fb.meta["unknown_item"]  # an item never seen gets no text by default
        assert fb.text == " ".join(tokenize(fb.text))
        assert 1.0 <= fb.rating <= 5.0
        assert fb.model == "peter" and (not fb.text or fb.meta["stopped"] in ("eos", "length"))
        assert fb.meta["provenance"] == ("generated" if fb.text else "none")


def test_unknown_users_and_items_still_get_feedback(fitted):
    reqs = [FeedbackRequest("nobody", "nothing"), FeedbackRequest("nobody", fitted.items.ids[0]),
            FeedbackRequest(fitted.users.ids[0], "nothing")]
    out = fitted.generate(reqs, {"unknown_item": "generate"})  # the default writes nothing for them
    assert all(fb.text for fb in out)
    assert [bool(fb.text) for fb in fitted.generate(reqs)] == [False, True, False]
    assert [fb.meta["unknown_user"] for fb in out] == [True, True, False]
    assert [fb.meta["unknown_item"] for fb in out] == [True, False, True]
    assert all(fitted.rating_range[0] <= fb.rating <= fitted.rating_range[1] for fb in out)


def test_aspect_conditioning(ds):
    m = create("peter", {**TINY, "use_aspect": True, "max_epochs": 1}).fit(ds)
    assert m.model.prefix_len == 3
    reqs = requests_of(ds.test.head(5), aspect=True)
    reqs.append(FeedbackRequest(reqs[0].user_id, reqs[0].item_id, "no-such-aspect"))
    out = m.generate(reqs)
    assert all(fb.text for fb in out)
    assert out[0].aspects == [reqs[0].aspect]
    assert out[-1].meta["unknown_aspect"] is True and out[0].meta["unknown_aspect"] is False


# -- decoding ------------------------------------------------------------------------------------

def test_cached_and_uncached_decoding_agree(fitted, ds):
    reqs = requests_of(ds.test)
    for dec in (Decoding(max_new_tokens=15), Decoding(max_new_tokens=12, num_beams=3),
                Decoding(max_new_tokens=12, do_sample=True, top_k=20, seed=3)):
        cached, _ = fitted.generate_text(reqs, dec, use_cache=True)
        plain, _ = fitted.generate_text(reqs, dec, use_cache=False)
        assert cached == plain


def test_beam_search_with_one_beam_is_greedy(fitted, ds):
    users, items, aspects = fitted.encode(requests_of(ds.test))
    dec = Decoding(max_new_tokens=20)
    greedy, fin_g, _ = fitted.model.generate(users, items, aspects, dec)
    processors = logits_processors(dec, EOS, suppress=NEVER, min_new_tokens=1)
    beam, fin_b, _ = beam_search(fitted.model.stepper(users, items, aspects, 20), len(users), 1, 20, processors,
                                 eos=EOS, pad=PAD)
    assert torch.equal(greedy, beam) and torch.equal(fin_g, fin_b)


def test_beam_search_reports_its_scores(fitted, ds):
    reqs = requests_of(ds.test)[:10]
    _, metas = fitted.generate_text(reqs, Decoding(num_beams=4, max_new_tokens=20))
    assert all("beam_score" in m for m in metas)
    with pytest.raises(ConfigError, match="beam sampling is not supported"):
        fitted.generate(reqs, {"num_beams": 4, "do_sample": True})


def test_sampling_is_seeded_and_constraints_hold(fitted, ds):
    reqs = requests_of(ds.test)
    dec = Decoding(do_sample=True, temperature=1.5, top_p=0.95, seed=7, max_new_tokens=20)
    a, _ = fitted.generate_text(reqs, dec)
    b, _ = fitted.generate_text(reqs, dec)
    c, _ = fitted.generate_text(reqs, dec.model_copy(update={"seed": 8}))
    assert a == b and a != c
    # top_k=1 sampling is greedy
    k1, _ = fitted.generate_text(reqs, Decoding(do_sample=True, top_k=1, max_new_tokens=20))
    greedy, _ = fitted.generate_text(reqs, Decoding(max_new_tokens=20))
    assert k1 == greedy
    # no_repeat_ngram_size: no token id bigram twice
    users, items, aspects = fitted.encode(reqs)
    out, _, _ = fitted.model.generate(users, items, aspects,
                                      Decoding(max_new_tokens=25, no_repeat_ngram_size=2))
    for row in out.tolist():
        row = [t for t in row if t != PAD]
        grams = list(zip(row, row[1:]))
        assert len(grams) == len(set(grams))
    # finished rows are padded after their <eos>
    for row in out.tolist():
        if EOS in row:
            assert set(row[row.index(EOS) + 1:]) <= {PAD}


# -- seeds: a request's sample is its own (field case 13) -----------------------------------------

def test_a_seeded_request_samples_one_text_alone_batched_and_served(fitted, seeded_case, seeded_request_texts):
    dec = {"do_sample": True, "seed": 7, "max_new_tokens": 20}
    texts = seeded_request_texts(fitted, dec)
    assert texts[0] and len(set(texts)) == 1, texts
    assert fitted.generate(seeded_case[0], {**dec, "seed": 8})[0].text != texts[0]


def test_unseeded_sampling_varies_and_its_drawn_seed_replays_it(fitted, ds):
    reqs = requests_of(ds.test)[:10]
    dec = Decoding(do_sample=True, max_new_tokens=20)
    first, second = fitted.generate(reqs, dec), fitted.generate(reqs, dec)
    assert [f.text for f in first] != [f.text for f in second]
    seeds = [f.meta["seed"] for f in first]
    assert len(set(seeds)) == len(seeds)
    replay = fitted.generate([dataclasses.replace(r, seed=s) for r, s in zip(reqs, seeds)], dec)
    assert [f.text for f in replay] == [f.text for f in first]
    alone = fitted.generate(reqs[3:4], dec.model_copy(update={"seed": seeds[3]}))  # the decoding's seed too
    assert alone[0].text == first[3].text
    assert "seed" not in fitted.generate(reqs[:1])[0].meta  # greedy: nothing drawn


def test_sampled_rows_depend_on_neither_shards_nor_the_global_random_state(fitted, ds, tmp_path):
    reqs = requests_of(ds.test)
    dec = Decoding(do_sample=True, seed=7, max_new_tokens=15, batch_size=4)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    run_generation(fitted, reqs, tmp_path / "a.jsonl", dec, shard_size=3, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # inference never touches the global generator
    torch.manual_seed(1)
    run_generation(fitted, reqs, tmp_path / "b.jsonl", dec.model_copy(update={"batch_size": 64}), shard_size=100,
                   progress=False)

    def rows(path):
        return [(r["text"], r["meta"]) for r in map(json.loads, path.read_text().splitlines())]

    assert rows(tmp_path / "a.jsonl") == rows(tmp_path / "b.jsonl")


def test_generation_runs_on_the_process_threads_not_the_training_setting(fitted, ds):
    assert fitted.config.num_threads == 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fitted.generate(requests_of(ds.test)[:2], {"do_sample": True, "seed": 1})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_new_tokens_holds_back_end_of_sentence(fitted, ds, num_beams, monkeypatch):
    users, items, aspects = fitted.encode(requests_of(ds.test)[:8])
    net = fitted.model
    plain_logits = net.logits

    def eager_to_stop(hidden):  # a model that wants to end every sentence at once
        out = plain_logits(hidden).clone()
        out[..., EOS] += 100.0
        return out

    monkeypatch.setattr(net, "logits", eager_to_stop)
    free, _, _ = net.generate(users, items, aspects, Decoding(max_new_tokens=20, num_beams=num_beams))
    assert all(row[1] == EOS for row in free.tolist())  # <eos> is never first, then it wins
    held, _, _ = net.generate(users, items, aspects,
                              Decoding(max_new_tokens=20, min_new_tokens=8, num_beams=num_beams))
    for row in held.tolist():
        assert EOS not in row[:8] and PAD not in row[:8] and row[8] == EOS


def test_tiny_model_overfits_a_handful_of_samples(ds):
    small = ds.interactions.filter(pl.col("split") == "train").head(6)
    data = Dataset(pl.concat([small, small.with_columns(pl.lit("valid").alias("split"))]))
    m = create("peter", {**TINY, "emsize": 64, "nhid": 128, "dropout": 0.0, "id_dropout": 0.0,
                         "lr": 1e-2, "warmup_steps": 0, "max_epochs": 120, "patience": 120,
                         "batch_size": 8, "min_count": 1})
    m.fit(data)
    log = m.training_log
    assert log[-1]["train"]["nll_text"] < 0.1 * log[0]["train"]["nll_text"]
    reqs = requests_of(small)
    out = m.generate(reqs, {"max_new_tokens": 25})
    refs = [" ".join(tokenize(t)[:20]) for t in small["explanation"]]
    assert sum(fb.text == ref for fb, ref in zip(out, refs)) >= 5
    ratings = m.predict_rating(reqs)
    assert np.abs(ratings - small["rating"].to_numpy()).mean() < 0.5


# -- failure is announced -----------------------------------------------------------------------

def test_collapse_signal_follows_its_definitions():
    texts = ["great sound", "i i i i", "great sound", "good , good good strings"]
    sig = collapse.signal(texts)
    # USR: distinct / all (PETER's unique_sentence_percent); repetition: a token 3+ times in a row
    assert (sig["n"], sig["distinct"], sig["usr"]) == (4, 3, 0.75)
    assert sig["repetition"] == 0.25 and not sig["collapsed"]  # "good , good good" is no run of 3
    assert collapse.signal(["i i i"] * 3 + ["ok"])["collapsed"]  # 75 % loop
    assert collapse.signal(["same words"] * 40)["collapsed"]  # USR 1/40 < 0.05
    with pytest.raises(ValueError):
        collapse.signal([])


def test_a_collapsed_model_is_announced_on_stderr_in_the_log_and_the_folder(ds, capsys, tmp_path):
    # the default preset, 1 epoch on 300 real reviews: 3 steps of a 200-step warm-up, a collapsed model
    m = create("peter", {"max_epochs": 1, "progress": False, "num_threads": 1}).fit(ds)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "answers every request alike" in x]
    assert len(lines) == 1, err
    sig = m.training_log[0]["collapse"]
    assert sig["collapsed"] and sig["n"] == len(ds.valid)
    # it names the signal that fired, with its number, and not one that did not
    assert (f"USR {sig['usr']:.3f}, below" in lines[0]) == (sig["usr"] < collapse.USR_MIN)
    assert (f"{sig['repetition']:.0%} of its texts repeat" in lines[0]) == (sig["repetition"] > collapse.REPETITION_MAX)
    assert "more data or more epochs" in lines[0]
    # the numbers are those of the model's own greedy texts on the same requests
    requests = collapse.sample_requests(ds.valid, m.config.training.seed)
    texts, _ = m.generate_text(requests, Decoding(max_new_tokens=m.config.max_words + 1))
    assert sig["distinct"] == len(set(texts))
    m.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "training.json").read_text())
    assert saved["collapse"]["collapsed"] and "answers every request alike" in saved["collapse"]["warning"]
    logged = json.loads((tmp_path / "m" / "training_log.jsonl").read_text().splitlines()[0])
    assert logged["collapse"]["usr"] == sig["usr"]
    with pytest.warns(CollapseWarning, match="answers every request alike"):
        load(tmp_path / "m")


def test_train_and_valid_losses_are_the_same_named_sums(fitted):
    for entry in fitted.training_log:
        assert entry["terms"]["loss"] == "1·nll_text + 1·nll_context + 0.1·mse_rating"
        for part in ("train", "valid"):
            x = entry[part]
            assert {"loss", "nll_text", "nll_context", "mse_rating"} <= set(x)
            assert x["loss"] == pytest.approx(x["nll_text"] + x["nll_context"] + 0.1 * x["mse_rating"], rel=1e-4)
        # early stopping's sum has its own name, on valid only
        assert entry["valid"]["criterion"] == pytest.approx(entry["valid"]["nll_text"] + entry["valid"]["mse_rating"])
        assert "criterion" not in entry["train"]
    best = [e for e in fitted.training_log if e["best"]]
    assert best[-1]["valid"]["criterion"] == min(e["valid"]["criterion"] for e in fitted.training_log)


def test_max_new_tokens_beyond_the_trained_length_warns_naming_the_limit(fitted, ds, recwarn):
    reqs = requests_of(ds.test.head(4))
    limit = fitted.config.max_words + 1
    with pytest.warns(DecodingWarning, match=rf"at most {fitted.config.max_words} words and <eos> \({limit} "
                                             r"tokens, max_words\): max_new_tokens=100") as caught:
        out = fitted.generate(reqs, {"max_new_tokens": 100, "batch_size": 2})
    assert len([w for w in caught if w.category is DecodingWarning]) == 1  # once per call, not per batch
    assert len(out) == len(reqs)  # warned, not refused
    recwarn.clear()
    fitted.generate(reqs, {"max_new_tokens": limit})
    fitted.generate(reqs)  # the decoding's own default is not the caller's ask
    assert not [w for w in recwarn if w.category is DecodingWarning]


def test_the_command_line_warns_only_when_asked_for_more_tokens_in_one_line(fitted, ds, tmp_path):
    """`generate` without --max-new-tokens passes the decoding default, not an ask: no warning; with
    one beyond the trained length, one `feedbackgen: warning:` line, without Python's source location."""
    import subprocess
    import sys

    fitted.save(tmp_path / "m")
    with open(tmp_path / "req.jsonl", "w") as f:
        for u, i in ds.test.head(3).select("user_id", "item_id").iter_rows():
            f.write(json.dumps({"user_id": u, "item_id": i}) + "\n")

    def stderr(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "feedbackgen.cli", "generate", str(tmp_path / "m"),
                               "--requests", str(tmp_path / "req.jsonl"), "--out", str(tmp_path / f"{len(extra)}.jsonl"),
                               *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "max_new_tokens" not in stderr()
    warned = [x for x in stderr("--max-new-tokens", "100").splitlines() if "max_new_tokens=100" in x]
    assert len(warned) == 1 and "feedbackgen: warning: peter learnt texts of at most" in warned[0]
    assert "DecodingWarning" not in warned[0] and ".py:" not in warned[0]


# -- resuming ------------------------------------------------------------------------------------

def test_interrupted_fit_resumes_to_the_same_result(ds, tmp_path, monkeypatch):
    cfg = {**TINY, "max_epochs": 3, "checkpoint_dir": str(tmp_path / "ckpt")}
    straight = create("peter", {**cfg, "checkpoint_dir": None}).fit(ds)
    fit_interrupted_after_first_checkpoint(cfg, ds, monkeypatch)
    meta, _ = trainer_mod.read_checkpoint(tmp_path / "ckpt" / trainer_mod.CHECKPOINT_FILE)
    assert meta["epoch"] == 1 and not meta["done"]

    resumed = create("peter", cfg).fit(ds)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [e["epoch"] for e in resumed.training_log] == [1, 2, 3]
    assert [e["valid"] for e in resumed.training_log] == [e["valid"] for e in straight.training_log]
    # a finished run is not trained again
    again = create("peter", cfg).fit(ds)
    assert all(torch.equal(a[k], weights(again)[k]) for k in a)
    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="other settings"):
        create("peter", {**cfg, "lr": 1e-3}).fit(ds)


def train_recording_batches(lengths: list[int], batch_size: int, epochs: int, seed: int = 1,
                            checkpoint_dir: Path | None = None) -> list[list[list[int]]]:
    """The rows of every batch a `Trainer` with `lengths` draws, per epoch (a one-weight module)."""
    weight = torch.nn.Linear(1, 1)
    seen: list[list[int]] = []

    def make_batch(idx, train):
        if train:  # the validation batches are not the shuffled ones
            seen.append(idx.tolist())
        return idx

    settings = trainer_mod.TrainingArguments(batch_size=batch_size, max_epochs=epochs, patience=epochs, seed=seed,
                                             progress=False,
                                             checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None)
    t = trainer_mod.Trainer(weight, settings, n_train=len(lengths), n_valid=1, make_batch=make_batch,
                            loss_fn=lambda idx: {"loss": (weight.weight ** 2).sum()}, lengths=lengths)
    t.fit()
    per_epoch = t.steps_per_epoch
    return [seen[e:e + per_epoch] for e in range(0, len(seen), per_epoch)]


def test_length_grouped_batches_cover_every_row_sorted_reproducible_and_resumable(tmp_path, monkeypatch):
    n, bs = 1030, 4  # 5 mega-batches of 50 × 4 rows and a short one of 30
    lengths = torch.randint(1, 60, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    epochs = train_recording_batches(lengths, bs, 2)
    spec = torch.Generator().manual_seed(1)  # the trainer's shuffle generator
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(n))  # every row once per epoch
        assert len(batches) == math.ceil(n / bs) and sum(len(b) < bs for b in batches) == 1
        # the seeded shuffle, cut into mega-batches, each sorted longest first and cut into batches
        order = torch.randperm(n, generator=spec).tolist()
        expected = []
        for m in range(0, n, 50 * bs):
            ranked = sorted(order[m:m + 50 * bs], key=lambda i: -lengths[i])
            expected += [tuple(ranked[j:j + bs]) for j in range(0, len(ranked), bs)]
        torch.randperm(len(expected), generator=spec)  # the batches' shuffle draws from the same generator
        assert sorted(map(tuple, batches)) == sorted(expected)
        assert list(map(tuple, batches)) != expected  # ... and the batches come in a shuffled order
    assert epochs[0] != epochs[1]
    assert train_recording_batches(lengths, bs, 2) == epochs  # same seed, same batches
    assert train_recording_batches(lengths, bs, 1, seed=2)[0] != epochs[0]

    # killed after the first epoch's checkpoint, the resumed run draws the second epoch's batches
    run_until_first_checkpoint(lambda: train_recording_batches(lengths, bs, 2, checkpoint_dir=tmp_path), monkeypatch)
    assert train_recording_batches(lengths, bs, 2, checkpoint_dir=tmp_path) == [epochs[1]]


def test_length_grouped_batches_are_refused_under_differential_privacy():
    from feedbackgen.models.privacy import PrivacySettings

    weight = torch.nn.Linear(1, 1)
    settings = trainer_mod.TrainingArguments(batch_size=2, progress=False)
    with pytest.raises(ConfigError, match="group_by_length.*Poisson"):
        trainer_mod.Trainer(weight, settings, n_train=4, n_valid=1, make_batch=lambda idx, _t: idx,
                            loss_fn=lambda idx: {"loss": weight.weight.sum()}, lengths=[1, 2, 3, 4],
                            privacy=PrivacySettings(epsilon=1.0, delta=1e-5))


def test_models_command_shows_the_presets_effective_values():
    from typer.testing import CliRunner

    from feedbackgen.cli import app
    from feedbackgen.models.peter.model import PRESETS

    res = CliRunner().invoke(app, ["models"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    peter = text.split(" peter ", 1)[1].split(" popular ", 1)[0]
    for key, value in PRESETS["default"].items():  # what the default preset decides, never unset
        assert f"{key}={value if isinstance(value, str) else json.dumps(value)}" in peter, key
    assert "max_words=20" in peter and "None" not in text and "=null, " not in peter.split("dp_epsilon")[0]
