"""report.html: one self-contained page whose first screen says what was measured, with the texts'
provenance counted from each prediction's `meta.provenance` and the plots inline."""

import gzip
import itertools
import json
import re

import polars as pl
import pytest

from feedbackgen.data.dataset import Dataset
from feedbackgen.errors import DataError
from feedbackgen.evaluation.report import evaluate
from feedbackgen.evaluation.report_html import markdown_to_html

N_ROWS = 200


@pytest.fixture(scope="module")
def dataset(data_root):
    path = data_root / "amazon_musical_instruments_5core" / "reviews_Musical_Instruments_5.json.gz"
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(itertools.islice(f, N_ROWS)):
            r = json.loads(line)
            rows.append({"user_id": r["reviewerID"], "item_id": r["asin"], "rating": r["overall"],
                         "text": r["reviewText"], "summary": r["summary"], "timestamp": r["unixReviewTime"],
                         "split": ("test", "valid", "train", "train", "train")[i % 5]})
    return Dataset(pl.DataFrame(rows), manifest={"source": "test: first 200 Musical Instruments reviews"})


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def report_dir(dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    test = dataset.test.to_dicts()
    train_text = dataset.train["text"].to_list()
    # "writer": its own words for the first 30 rows, then falls back to an empty text; "copier": a
    # training review, saying whose; a review holding HTML must come out escaped.
    writer = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 4.0, "model": "writer",
               "text": f"<b>great</b> {r['item_id']} for the price" if i < 30 else "",
               "meta": {"provenance": "generated" if i < 30 else "none"}} for i, r in enumerate(test)]
    copier = [{"user_id": r["user_id"], "item_id": r["item_id"], "rating": 5.0, "model": "copier",
               "text": train_text[i % len(train_text)], "meta": {"provenance": "copied"}} for i, r in enumerate(test)]
    files = [_write(folder / "writer.jsonl", writer), _write(folder / "copier.jsonl", copier)]
    evaluate(files, dataset, folder / "report", embeddings=False)
    return folder / "report"


def test_report_html_is_self_contained_and_says_what_was_measured(report_dir, dataset):
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    n_test = len(dataset.test)
    lead = page[page.index('<div class="lead">'):page.index("</div>")]
    assert "What was measured" in lead and f"each of the {n_test}" in lead
    assert "writer (30 of" in lead and f"copier ({n_test})" in lead  # written vs copied, in words
    # provenance in the headline table: written / copied / other
    assert f"<td>writer</td><td>30 / 0 / {n_test - 30}</td>" in page
    assert f"<td>copier</td><td>0 / {n_test} / 0</td>" in page
    # plots inline; nothing fetched from anywhere
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 2
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<b>great</b>" not in page and "&lt;b&gt;great&lt;/b&gt;" in page


def test_provenance_is_checked_when_read(tmp_path, dataset):
    row = dataset.test.to_dicts()[0]
    bad = _write(tmp_path / "bad.jsonl", [{"user_id": row["user_id"], "item_id": row["item_id"], "rating": 4,
                                          "text": "x", "model": "m", "meta": {"provenance": "invented"}}])
    with pytest.raises(DataError, match="meta.provenance"):
        evaluate([bad], dataset, tmp_path / "r", embeddings=False)


def test_markdown_subset():
    md = "## Title\n\nSome `code` and **bold**.\n\n| a | b |\n|---|---|\n| 1 \\| 2 | x |\n\n- one\n- two\n"
    out = markdown_to_html(md, [])
    assert "<h3>Title</h3>" in out and "<code>code</code>" in out and "<strong>bold</strong>" in out
    assert "<td>1 | 2</td>" in out and "<li>one</li><li>two</li>" in out


def test_the_panel_verdict_is_said_in_words():
    """The first screen reads the agreement line `fidelity --protocol recommenders` writes."""
    from feedbackgen.evaluation.report_html import _panel_sentence
    from feedbackgen.recommend.panel import panel_markdown

    row = {"recommender": "ease", "precision@10": 0.02, "real_ci": (0.01, 0.03), "hr@10": 0.2, "ndcg@10": 0.09,
           "expected_engagement_at_k": 0.03, "expected_ci": (0.02, 0.04), "calibration_ratio": 1.5}
    result = {"k": 10, "users": 700, "rows": [row], "kendall_tau": 0.6, "kendall_tau_ci": (0.2, 0.9),
              "spearman_rho": 0.7, "spearman_rho_ci": (0.3, 0.9), "ordered_right": 9, "significant_pairs": 11,
              "share_ordered_right": 9 / 11, "self_preference": [], "simulator_family": []}
    said = _panel_sentence([{"markdown": panel_markdown(result)}])
    assert "much the same order (Kendall τ 0.600, 95% interval 0.200 to 0.900" in said
    assert "orders 9 of the 11 clearly different pairs right" in said
    assert _panel_sentence([{"markdown": "no panel here"}]) == ""


def test_what_it_means_weighs_the_writer_against_the_copier():
    from feedbackgen.evaluation.report_html import _meaning

    def row(rouge, memorisation, grounding):
        return {"metrics": {"rougeL_f": rouge, "memorisation": memorisation, "item_grounding": grounding}}

    off_item = _meaning({"peter": row(16.3, 0.0, 0.01)}, {"retrieval": row(12.8, 0.89, 0.99)})
    assert "ahead of the best copier, retrieval, on ROUGE-L (16.30 against 12.80)" in off_item
    assert "only 1 % of its texts are about the item they explain, against 99 %" in off_item
    on_item = _meaning({"sft": row(12.0, 0.1, 0.9)}, {"retrieval": row(12.8, 0.89, 0.99)})
    assert "behind the best copier" in on_item and "item grounding 0.90 against 0.99" in on_item
