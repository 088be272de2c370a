"""The one model folder (`feedbackgen.models.folder`): every kind saves and loads the same way,
`feedbackgen.load` returns whatever a folder holds, and folders of the previous layout still load.
(The LLM generators' round trips, which need the bundled LM, are in test_llm.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import feedbackgen
from feedbackgen.errors import FeedbackgenError
from feedbackgen.models import Generator, create
from feedbackgen.models.folder import IdIndex
from feedbackgen.recommend.choice import ChoiceModel, create_choice, load_choice
from feedbackgen.types import FeedbackRequest

pytestmark = pytest.mark.filterwarnings("ignore::feedbackgen.errors.CollapseWarning")  # a 1-epoch peter
GENERATORS = {"global_mean": {}, "bias": {}, "mf": {"max_epochs": 30}, "popular": {}, "retrieval": {},
              "peter": {"max_epochs": 1, "emsize": 16, "nhid": 16, "nlayers": 1, "progress": False}}
CHOICE = {"popularity": {}, "itemknn": {"search": False}, "ease": {"search": False},
          "als": {"search": False, "iterations": 2}, "bpr": {"search": False, "iterations": 2},
          "hybrid": {"search": False}}


def requests_of(dataset, n=40):
    rows = dataset.test.head(n)
    reqs = [FeedbackRequest(u, i) for u, i in zip(rows["user_id"], rows["item_id"])]
    return reqs + [FeedbackRequest("no-such-user", "no-such-item")]  # the unknown ids, too


def answers(model, reqs):
    return [(f.rating, f.text) for f in model.generate(reqs)]


def to_format_1(folder):
    """Rewrite a folder as the previous version wrote it: a generator's id lists inside state.json
    (no ids.json), no `format`, and no `kind` on a generator's config.json."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("format")
    if config.pop("kind") == "choice":
        config = {"kind": "choice", **config}
    else:
        state = json.loads((folder / "state.json").read_text())
        for dotted, ids in json.loads((folder / "ids.json").read_text()).items():
            *parents, key = dotted.split(".")
            node = state
            for p in parents:
                node = node[p]
            node[key] = ids
        (folder / "state.json").write_text(json.dumps(state))
        (folder / "ids.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def few(mi_small):
    """The rows of mi_small's 6 most-reviewed items: enough for every kind to fit, quick to embed."""
    import polars as pl

    from feedbackgen.data.dataset import Dataset

    top = (mi_small.interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
           .head(6)["item_id"])
    return Dataset(mi_small.interactions.filter(pl.col("item_id").is_in(top.implode())), mi_small.items,
                   manifest=mi_small.manifest)


@pytest.fixture(scope="module")
def generators(few, tmp_path_factory):
    """Each generator fitted once and saved: (model, folder)."""
    root = tmp_path_factory.mktemp("generators")
    return {name: (m := create(name, cfg).fit(few), m.save(root / name)) for name, cfg in GENERATORS.items()}


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_round_trip(generators, few, name):
    model, folder = generators[name]
    assert {"config.json", "model.safetensors", "state.json"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert (config["kind"], config["model"], config["format"]) == ("generator", name, 2)
    ids = json.loads((folder / "ids.json").read_text())
    assert all(v == sorted(v) for v in ids.values() if v is not None)
    assert "users" not in json.loads((folder / "state.json").read_text())  # id maps live in ids.json only
    again = feedbackgen.load(folder)
    assert type(again) is type(model) and isinstance(again, Generator)
    reqs = requests_of(few)
    assert answers(again, reqs) == answers(model, reqs)


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_folder_of_the_previous_layout_loads(generators, few, tmp_path, name):
    model, folder = generators[name]
    old = shutil.copytree(folder, tmp_path / name)
    to_format_1(old)
    assert not (old / "ids.json").exists() and "kind" not in json.loads((old / "config.json").read_text())
    reqs = requests_of(few)
    assert answers(feedbackgen.load(old), reqs) == answers(model, reqs)


@pytest.fixture(scope="module")
def choice_models(mi_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    return {name: (m := create_choice(name, cfg).fit(mi_small), m.save(root / name)) for name, cfg in CHOICE.items()}


@pytest.mark.parametrize("name", CHOICE)
@pytest.mark.parametrize("layout", ["current", "previous"])
def test_choice_round_trip(choice_models, mi_small, tmp_path, name, layout):
    model, folder = choice_models[name]
    if layout == "previous":
        folder = shutil.copytree(folder, tmp_path / name)
        to_format_1(folder)
    again = feedbackgen.load(folder)
    assert type(again) is type(model) and isinstance(again, ChoiceModel)
    assert again.search_record == model.search_record
    users = mi_small.test["user_id"].unique().sort().to_list()[:20] + ["no-such-user"]
    items = model.item_ids[:30] + ["no-such-item"]
    np.testing.assert_array_equal(again.score_items(users, items), model.score_items(users, items))
    assert again.recommend(users, k=5).equals(model.recommend(users, k=5))


def test_one_id_map_one_unknown_convention(choice_models, generators):
    index = IdIndex(["b", "a", "a"])
    assert index.ids == ["a", "b"] and list(index.lookup(["a", "b", "zz"])) == [1, 2, IdIndex.UNKNOWN]
    assert list(index.rows(["a", "b", "zz"])) == [0, 1, -1]
    ease, _ = choice_models["ease"]
    bias, _ = generators["bias"]
    assert isinstance(ease.users, IdIndex) and isinstance(bias.users, IdIndex)
    assert list(ease.user_rows([ease.user_ids[0], "no-such-user"])) == [0, -1]


def test_load_says_what_a_folder_holds(generators, choice_models, tmp_path):
    _, generator_folder = generators["bias"]
    _, choice_folder = choice_models["ease"]
    with pytest.raises(FeedbackgenError, match="holds a generator .*not a choice"):
        load_choice(generator_folder)
    with pytest.raises(FeedbackgenError, match="holds a choice .*not a generator"):
        Generator.load(choice_folder)
    with pytest.raises(FeedbackgenError, match="no config.json"):
        feedbackgen.load(tmp_path)
    broken = shutil.copytree(generator_folder, tmp_path / "broken")
    (broken / "state.json").unlink()
    with pytest.raises(FeedbackgenError, match="incomplete"):
        feedbackgen.load(broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model": "gpt9"}))
    with pytest.raises(FeedbackgenError, match="gpt9.*does not know"):
        feedbackgen.load(broken)
