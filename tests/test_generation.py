import json

import pytest

from feedbackgen.batch import read_requests, requests_from_split, run_generation
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.models import create


@pytest.fixture(scope="module")
def popular(mi_small):
    return create("popular").fit(mi_small)


class KilledAfter:
    """`model`, killed (KeyboardInterrupt, as Ctrl-C) when asked for more than `calls` batches."""

    def __init__(self, model, calls: int):
        self.model, self.calls = model, calls

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, requests, decoding=None):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.model.generate(requests, decoding)


def test_generation_resumes_without_redoing_finished_shards(mi_small, popular, tmp_path):
    reqs = requests_from_split(mi_small, "test")
    full = run_generation(popular, reqs, tmp_path / "full.jsonl", shard_size=16, progress=False)
    lines = full.read_text().splitlines()
    assert [(json.loads(x)["user_id"], json.loads(x)["item_id"]) for x in lines] == \
        [(r.user_id, r.item_id) for r in reqs]
    # a run killed after its first shard leaves its parts behind: job.json and shard 0 (marked, so
    # we can see it is reused rather than regenerated)
    with pytest.raises(KeyboardInterrupt):
        run_generation(KilledAfter(popular, 1), reqs, tmp_path / "resumed.jsonl", shard_size=16, progress=False)
    parts = tmp_path / "resumed.jsonl.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["job.json", "shard-00000.jsonl"]
    shard = parts / "shard-00000.jsonl"
    first = [json.loads(x) for x in shard.read_text().splitlines()]
    assert [json.dumps(r) for r in first] == [json.dumps(json.loads(x)) for x in lines[:16]]
    first[0]["meta"]["marker"] = "from the killed run"
    shard.write_text("".join(json.dumps(r) + "\n" for r in first))
    resumed = run_generation(popular, reqs, tmp_path / "resumed.jsonl", model_id="popular",
                             shard_size=16, progress=False)
    got = resumed.read_text().splitlines()
    assert json.loads(got[0])["meta"]["marker"] == "from the killed run"
    assert got[1:] == lines[1:]
    assert not parts.exists()


def test_a_different_job_in_the_parts_folder_is_refused(mi_small, popular, tmp_path):
    reqs = requests_from_split(mi_small, "test")
    parts = tmp_path / "x.jsonl.parts"
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps({"model": "other"}))
    with pytest.raises(FeedbackgenError, match="different generation job"):
        run_generation(popular, reqs, tmp_path / "x.jsonl", progress=False)


def test_read_requests_reports_bad_lines(tmp_path):
    f = tmp_path / "req.jsonl"
    f.write_text('{"user_id": "u1", "item_id": "i1"}\n{"user_id": "u2"}\nnot json\n'
                 '{"user_id": "u3", "item_id": "i3", "aspect": "sound", "rating": 4}\n')
    problems = Problems()
    reqs = read_requests(f, problems)
    assert [(r.user_id, r.item_id, r.aspect) for r in reqs] == [("u1", "i1", None), ("u3", "i3", "sound")]
    assert problems.count == 2
    assert {e["line"] for e in problems.examples} == {2, 3}
    with pytest.raises(DataError, match="line 2"):
        read_requests(f, Problems(strict=True))


def test_read_requests_csv(tmp_path):
    f = tmp_path / "req.csv"
    f.write_text("user_id,item_id,aspect\nu1,i1,\nu2,i2,strings\n")
    reqs = read_requests(f)
    assert [(r.user_id, r.aspect) for r in reqs] == [("u1", None), ("u2", "strings")]


def test_requests_files_carry_each_request_seed(tmp_path):
    (tmp_path / "req.csv").write_text("user_id,item_id,seed\nu1,i1,\nu2,i2,7\nu3,i3,seven\n")
    problems = Problems()
    assert [r.seed for r in read_requests(tmp_path / "req.csv", problems)] == [None, 7]
    assert problems.count == 1 and problems.examples[0]["line"] == 4
    (tmp_path / "req.jsonl").write_text('{"user_id": "u", "item_id": "i", "seed": 3}\n'
                                        '{"user_id": "u", "item_id": "i", "seed": -1}\n')
    problems = Problems()
    assert [r.seed for r in read_requests(tmp_path / "req.jsonl", problems)] == [3]
    assert problems.count == 1 and "seed" in problems.examples[0]["reason"]
