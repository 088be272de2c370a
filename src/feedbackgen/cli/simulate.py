"""`feedbackgen simulate` and `fidelity`: a simulated user judges recommenders, and how far to trust it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err
from feedbackgen.cli.options import DatasetOption, EngageChoiceOption, RecsMapOption
from feedbackgen.cli.sessions import run_sessions
from feedbackgen.config import column_mapping
from feedbackgen.errors import FeedbackgenError


def _simulator(model: Optional[Path], dataset: Path, choice: Optional[Path]):
    """(generator or None, choice model or None, dataset) for `simulate` and `fidelity`."""
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.models import load

    if model is None and choice is None:
        raise FeedbackgenError("give a generator folder (MODEL), a choice model (--choice DIR), or both")
    choice_model = None
    if choice is not None:
        from feedbackgen.recommend.choice import load_choice

        choice_model = load_choice(choice)
    return load(model) if model is not None else None, choice_model, Dataset.load(dataset)


def _named(files: list[Path]) -> dict[str, Path]:
    """RECS files by recommender name: the file stem, or parent/stem when two stems clash."""
    names = [p.stem for p in files]
    if len(set(names)) == len(names):
        return dict(zip(names, files))
    named = {f"{p.parent.name}/{p.stem}": p for p in files}
    if len(named) < len(files):
        raise FeedbackgenError("two RECS files have the same name; rename one")
    return named


ENGAGE_HELP = ("engage threshold (default: fitted on valid): a rating without --choice, "
               "a probability in [0, 1] with it")


@app.command()
def simulate(
    dataset: DatasetOption,
    recommendations: Annotated[list[Path], typer.Option(
        help="RECS file(s): CSV/Parquet/JSONL of user_id, item_id[, rank] from any recommender")] = [],
    model: Annotated[Optional[Path], typer.Argument(
        help="a saved generator folder: the simulated user's ratings and reviews (optional with --choice)")] = None,
    more_recommendations: Annotated[Optional[list[Path]], typer.Argument(
        hidden=True, help="further RECS files (`--recommendations A B` is read as A and B)")] = None,
    choice: EngageChoiceOption = None,
    k: Annotated[int, typer.Option(help="judge each user's top k")] = 10,
    threshold: Annotated[Optional[float], typer.Option(help=ENGAGE_HELP)] = None,
    reviews: Annotated[bool, typer.Option(help="also write each review (off: ratings and decisions only)")] = True,
    feedback_for: Annotated[Optional[str], typer.Option(
        help="engaged | all: which items get a rating and review (default: engaged with --choice, else all)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder for simulated items/users Parquet and the summary")] = None,
    calibration_pairs: Annotated[Optional[int], typer.Option(
        help="fit the engage rule on a seeded sample of this many validation pairs")] = None,
    map: RecsMapOption = [],
    id_check: Annotated[bool, typer.Option(
        help="refuse a RECS file whose ids mostly miss or look like another id space (--no-id-check: "
             "judge it anyway, e.g. a random baseline)")] = True,
    session: Annotated[bool, typer.Option(
        help="users browse page by page and leave by the exit rule (feedbackgen.recommend.sessions)")] = False,
    page_size: Annotated[int, typer.Option(help="with --session: items per page")] = 10,
    max_pages: Annotated[int, typer.Option(help="with --session: most pages a user views")] = 5,
    exit_base: Annotated[float, typer.Option(help="with --session: P(leave) after any page")] = 0.2,
    boredom: Annotated[float, typer.Option(
        help="with --session: extra share of the rest of P(leave) after a page with nothing taken")] = 0.5,
    satiation: Annotated[float, typer.Option(
        help="with --session: P(engage) multiplied by this per item taken so far")] = 0.9,
    live_recommender: Annotated[list[Path], typer.Option(
        help="with --session: a choice-model folder that re-ranks before every page (repeatable)")] = [],
    seed: Annotated[int, typer.Option(help="with --session: seed of the per-user draws")] = 1,
):
    """A simulated user engages with or skips each recommended item, and rates and reviews it.

    Example: `feedbackgen simulate models/peter --choice models/ease --dataset data/mi --recommendations recs/a.parquet recs/b.csv --out runs/sim`
    """
    from feedbackgen.recommend import simulate as run_simulation
    from feedbackgen.recommend.ranking import simulator_name

    # `MODEL --recommendations A B`: click gives B to MODEL's slot when MODEL comes last; put it back
    files = [*recommendations, *(more_recommendations or [])]
    if model is not None and model.suffix in (".csv", ".tsv", ".parquet", ".jsonl", ".json"):
        files, model = [*files, model], None
    generator, choice_model, ds = _simulator(model, dataset, choice)
    named = _named(files)
    if session:  # feedbackgen.cli.sessions
        settings = {"page_size": page_size, "max_pages": max_pages, "exit_base": exit_base, "boredom": boredom,
                    "satiation": satiation, "seed": seed}
        return run_sessions(generator, choice_model, ds, named, live_recommender, settings, out, write=reviews,
                            calibration_pairs=calibration_pairs, name=simulator_name(generator, choice_model, model,
                                                                                     choice),
                            mapping=column_mapping(map), check_ids=id_check)
    if not named:
        raise FeedbackgenError("give the RECS file(s) to judge with --recommendations")
    t0 = time.time()
    result = run_simulation(generator, ds, named, k=k, threshold=threshold, write=reviews,
                            calibration_pairs=calibration_pairs, choice=choice_model,
                            feedback_for=feedback_for, name=simulator_name(generator, choice_model, model, choice),
                            mapping=column_mapping(map), check_ids=id_check)
    print(result.markdown())
    if out is not None:
        result.save(out)
        err.print(f"[green]wrote[/green] {out}/summary.md, summary.json, simulated_items.parquet, "
                  f"simulated_users.parquet in {time.time() - t0:.1f}s")


@app.command()
def fidelity(
    dataset: DatasetOption,
    model: Annotated[Optional[Path], typer.Argument(
        help="a saved generator folder: ratings and reviews (optional with --choice)")] = None,
    choice: EngageChoiceOption = None,
    protocol: Annotated[str, typer.Option(
        help="pooled (test pairs vs 1, 3, 9x never-seen items) | agent4rec (Agent4Rec's per-user lists, "
             "ratios 1, 2, 3, 9) | recommenders (does the simulated user order a panel of recommenders as real "
             "test users do? needs --choice)")] = "pooled",
    recommendations: Annotated[Optional[list[Path]], typer.Option(
        help="with --protocol recommenders: RECS files judged beside the built-in panel")] = None,
    k: Annotated[int, typer.Option(help="with --protocol recommenders: the list length judged")] = 10,
    builtin_panel: Annotated[bool, typer.Option(
        help="with --protocol recommenders: include the built-in panel (random, popularity, itemknn, ease, als, "
             "bpr and weakened variants, fitted on train)")] = True,
    map: RecsMapOption = [],
    out: Annotated[Optional[Path], typer.Option(help="folder for fidelity.json, fidelity.md and the plot")] = None,
    max_users: Annotated[Optional[int], typer.Option(help="a seeded sample of test users (faster)")] = None,
    threshold: Annotated[Optional[float], typer.Option(help=ENGAGE_HELP)] = None,
    reviews: Annotated[bool, typer.Option(
        help="generate reviews and score them (AgentSociety review score); as in `simulate`")] = True,
    seed: Annotated[int, typer.Option(help="seed of the negative items and user sample")] = 1,
    calibration_pairs: Annotated[Optional[int], typer.Option(
        help="fit the engage rule on a seeded sample of this many validation pairs")] = None,
):
    """How far the simulated user matches real held-out behaviour: discrimination, ratings, reviews.

    Example: `feedbackgen fidelity --choice models/user --dataset data/mi --protocol recommenders --out runs/panel`
    """
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.recommend import fidelity as measure, fidelity_markdown, read_recommendations, write_fidelity
    from feedbackgen.recommend.fidelity import is_agent4rec_ml1m
    from feedbackgen.recommend.ranking import simulator_name

    lists = None
    if recommendations:
        if protocol != "recommenders":
            raise FeedbackgenError("--recommendations is for --protocol recommenders")
        ds = Dataset.load(dataset)  # the lists are read and checked before any model is loaded or fitted
        lists = {name: read_recommendations(path, ds, k, name, mapping=column_mapping(map))[0]
                 for name, path in _named(list(recommendations)).items()}
    generator, choice_model, ds = _simulator(model, dataset, choice)
    label = simulator_name(generator, choice_model, model, choice)  # as `simulate` and `recommend` name it
    t0 = time.time()
    result = measure(generator, ds, max_users=max_users, threshold=threshold, review=reviews, seed=seed,
                     name=label, calibration_pairs=calibration_pairs, choice=choice_model,
                     protocol=protocol, recommendations=lists, k=k, panel=builtin_panel)
    same = is_agent4rec_ml1m(ds)
    print(fidelity_markdown([result], dataset.name, same_data=same))
    if out is not None:
        write_fidelity([result], out, dataset.name, same_data=same)
        err.print(f"[green]wrote[/green] {out}/fidelity.md, fidelity.json"
                  + (", rating_distribution.png" if result.get("rating") else "")
                  + (", panel.png" if result.get("panel") else "") + f" in {time.time() - t0:.1f}s")

