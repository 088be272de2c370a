"""Naturalness: perplexity under the bundled SmolLM2-135M, checked against a hand computation."""

import json
import math

import pytest

from feedbackgen.data.text import detokenize
from feedbackgen.evaluation.naturalness import PerplexityScorer, naturalness
from feedbackgen.pretrained import DEFAULT_MODEL, load_causal_lm

# two texts of different token lengths, so a batch of both is padded
SENTENCES = ["the sound is great and the cable feels solid .",
             "i bought this tuner for my son , and after three months of daily practice it still works fine ."]


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm(DEFAULT_MODEL)


def _by_hand(text, lm):
    """exp(mean NLL) of the text's tokens given BOS, one text alone: no batching, no padding."""
    import torch

    model, tok = lm
    ids = [tok.bos_token_id] + tok(detokenize(text), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    nll = [-logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    return math.exp(sum(nll) / len(nll))


def test_perplexity_equals_a_hand_computation(lm):
    expected = [_by_hand(s, lm) for s in SENTENCES]
    assert expected[0] != pytest.approx(expected[1], rel=0.05)  # the fixture tells the two apart
    scorer = PerplexityScorer(DEFAULT_MODEL, batch_size=2)  # both in one padded batch
    got = scorer.perplexities(SENTENCES + [""])
    assert got[:2].tolist() == pytest.approx(expected, rel=1e-4)
    assert math.isnan(got[2])  # an empty text has no perplexity
    summary = naturalness(SENTENCES)
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(sum(expected) / 2, rel=1e-4)
    assert summary["median"] == pytest.approx(sum(expected) / 2, rel=1e-4)


def test_evaluate_reports_naturalness_beside_the_references(tmp_path, mi_small):
    from feedbackgen.evaluation.report import evaluate

    test = mi_small.test.head(12).to_dicts()
    rows = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 4, "text": r["text"], "model": "copy"}
            for r in test]
    rows += [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 4, "text": "good good good the the",
              "model": "word-salad"} for r in test]
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate([pred], mi_small, tmp_path / "out", target="review", embeddings=False, allow_partial=True,
                      naturalness=True, naturalness_sample=len(mi_small.test))
    copy, salad = result["models"]["copy"]["naturalness"], result["models"]["word-salad"]["naturalness"]
    assert copy["model"] == DEFAULT_MODEL and copy["generated"]["n"] == 12
    # copying the references gives exactly their perplexity; word salad is far less natural
    assert copy["generated"] == copy["references"] and copy["generated"] == salad["references"]
    assert salad["generated"]["median"] > 2 * copy["references"]["median"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Naturalness" in md and f"{salad['generated']['median']:.1f}" in md
