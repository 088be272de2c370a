"""`prepare` as a list of steps (`feedbackgen.data.prepare_steps`): each says what it records, and
the runner takes any prefix of the list."""

from __future__ import annotations

from feedbackgen.config import validate
from feedbackgen.data.parts import StepLog
from feedbackgen.data.prepare_config import PrepareConfig
from feedbackgen.data.prepare_steps import STEPS, Run, run_steps
from feedbackgen.data.problems import Problems


def test_each_step_records_what_it_says_in_the_order_of_the_list(mi_dataset):
    logged = [s["step"] for s in mi_dataset.manifest["steps"]]
    declared = [record for step in STEPS for record in step.records]
    assert set(logged) <= set(declared)
    assert logged == [r for r in declared if r in logged]  # the manifest's order is the list's
    assert {"load", "drop_duplicates", "k_core", "split", "keep_referenced"} <= set(logged)


def test_the_runner_takes_a_prefix_of_the_steps(data_root, tmp_path):
    source = data_root / "amazon_gift_cards_5core_2018" / "Gift_Cards_5.json.gz"
    run = Run([source], "amazon2018", tmp_path, validate(PrepareConfig, {}, "prepare config"), "random", 1,
              Problems(), StepLog(False), False, 100_000)
    first = STEPS[:2]  # load, then find_drops: no table is written past the loaded one
    run_steps(run, first)
    assert [s["step"] for s in run.log.steps] == [r for step in first for r in step.records]
    assert run.has_text and run.has_ratings and run.loaded.rows == run.info["rows"]
    assert run.filtered is None and run.dropped  # Gift Cards holds duplicate reviews
