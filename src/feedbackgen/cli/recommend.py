"""`feedbackgen recommend`, `simulate` and `fidelity`: rank items and simulate users."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from feedbackgen.cli.app import app, err
from feedbackgen.errors import FeedbackgenError


@app.command()
def recommend(
    model: Annotated[Path, typer.Argument(help="a saved model folder: a generator or a choice model")],
    dataset: Annotated[Path, typer.Option(help="the prepared dataset the model was trained on")],
    choice: Annotated[Optional[Path], typer.Option(
        help="a choice-model folder that ranks, while MODEL (a generator) explains each item")] = None,
    user: Annotated[Optional[str], typer.Option(help="recommend for this user")] = None,
    k: Annotated[int, typer.Option(help="items per user")] = 10,
    candidates: Annotated[Optional[Path], typer.Option(
        help="items to rank (default: all the user has not interacted with): one id a line, or "
             "CSV/Parquet with item_id [and user_id for per-user lists]")] = None,
    users: Annotated[Optional[Path], typer.Option(
        help="batch mode: users to recommend for, one id a line or CSV/Parquet with user_id")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Parquet file to write (needed with --users); with --evaluate, a folder for ranking.md/json")] = None,
    explain: Annotated[bool, typer.Option(help="attach the generated feedback to each item")] = True,
    evaluate: Annotated[bool, typer.Option(
        help="instead: HR@K / NDCG@K / Recall@K on the test split (full and sampled protocols) beside "
             "popularity and MF baselines")] = False,
    max_users: Annotated[Optional[int], typer.Option(help="--evaluate on a seeded sample of test users")] = None,
):
    """Rank items for a user, each with the feedback the user would give: by a choice model's score
    (MODEL a choice folder, or `--choice`), else by the generator's predicted rating.

    Example: `feedbackgen recommend models/peter --choice models/ease --dataset data/mi --user A2IBPI20UZIR0U --k 5`

    Batch: `feedbackgen recommend models/retrieval --dataset data/mi --users users.txt --out recs.parquet`
    (the terminal shows the first 240 characters of each text; `--out` keeps them whole).
    Evaluate: `feedbackgen recommend models/ease --dataset data/mi --evaluate --out runs/ranking`
    """
    from feedbackgen.data.dataset import Dataset
    from feedbackgen.data.problems import Problems
    from feedbackgen.models import load
    from feedbackgen.recommend import read_id_list, write_recommendations
    from feedbackgen.recommend import recommend as rank_for_users
    from feedbackgen.recommend.choice import is_choice_folder, load_choice
    from feedbackgen.recommend.ranking import simulator_name

    if is_choice_folder(model):
        if choice is not None:
            raise FeedbackgenError(f"{model} is a choice model; with --choice, MODEL is the generator that explains")
        generator, ranker, ranker_path = None, load_choice(model), model
    else:
        generator = load(model)
        ranker, ranker_path = (load_choice(choice), choice) if choice is not None else (generator, model)
    ds = Dataset.load(dataset)
    ranks_by_choice = ranker is not generator
    if evaluate:
        from feedbackgen.models import create
        from feedbackgen.recommend import Popularity, evaluate_ranking, markdown_table
        from feedbackgen.recommend.ranking import RANKING_FORMATS, write_ranking

        t0 = time.time()
        baselines = {"popularity": Popularity().fit(ds)}
        if ds.has_ratings:  # MF learns ratings: without any there is nothing for it to rank by
            baselines["mf"] = create("mf").fit(ds)
        table = evaluate_ranking({**baselines, simulator_name(ranker, None, ranker_path): ranker}, ds,
                                 max_users=max_users)
        print(markdown_table(table, formats=RANKING_FORMATS))
        if out is not None:
            write_ranking(table, out, dataset.name)
            err.print(f"[green]wrote[/green] {out}/ranking.md and ranking.json")
        err.print(f"[green]evaluated[/green] ranking in {time.time() - t0:.1f}s (higher is better; "
                  "full: all unseen items, sampled: 1 positive + 99 negatives)")
        return
    if (user is None) == (users is None):
        raise FeedbackgenError("give exactly one of --user (one user) or --users FILE (batch, with --out)")
    if users is not None and out is None:
        raise FeedbackgenError("--users writes a Parquet file: give --out recs.parquet")
    user_ids = [user] if user is not None else read_id_list(users, "user_id")
    if isinstance(user_ids, dict):
        user_ids = list(user_ids)
    # one user the model knows nothing about is an error, with or without --candidates; a batch
    # reports and skips such users (below), unless none is left to recommend for
    known = set(ds.train["user_id"].unique().to_list())
    if user is not None and user not in known:
        raise FeedbackgenError(f"unknown user {user!r}: not in the training split of {dataset} "
                               "(the model knows nothing about them)")
    if users is not None and not any(u in known for u in user_ids):
        shown = ", ".join(repr(u) for u in user_ids[:5]) + (" ..." if len(user_ids) > 5 else "")
        raise FeedbackgenError(f"{users}: none of its {len(user_ids)} user(s) is in the training split of "
                               f"{dataset}" + (f" ({shown}): nothing to recommend" if user_ids else ""))
    candidate_ids = read_id_list(candidates, "item_id") if candidates is not None else None
    problems = Problems() if users is not None or candidates is not None else None
    t0 = time.time()
    recs = rank_for_users(generator, ds, user_ids, k=k, candidates=candidate_ids, explain=explain,
                          problems=problems, choice=ranker if ranks_by_choice else None)
    if problems is not None and problems.count:
        err.print(f"[yellow]{problems.describe()}[/yellow]")
    if out is not None:
        write_recommendations(recs, out)
        err.print(f"[green]wrote[/green] {len(recs)} recommendations for {recs['user_id'].n_unique()} user(s) "
                  f"to {out} in {time.time() - t0:.1f}s")
    if user is not None:
        label = simulator_name(generator, ranker if ranks_by_choice else None,
                               model if generator is not None else None, ranker_path if ranks_by_choice else None)
        Console().print(_recommendation_table(recs, f"top {len(recs)} for {user} ({label})"))


def _recommendation_table(recs, title: str):
    """One user's recommendations as a rich Table: rank, item, predicted rating, the feedback and
    where it came from (its `source`, and "repeated" when the same text explains several items)."""
    from rich.table import Table
    from rich.text import Text

    from feedbackgen.data.text import detokenize

    with_source = recs["provenance"].null_count() < len(recs)
    table = Table(title=title, show_lines=False, caption=(
        "source: generated by the model, copied from a training review (whose), a fallback, or none; "
        "repeated: the same text for several items of this list" if with_source else None))
    for name, justify in (("rank", "right"), ("item", "left"), ("predicted", "right"), ("feedback", "left"),
                          *((("source", "left"),) if with_source else ())):
        table.add_column(name, justify=justify)
    for r in recs.iter_rows(named=True):
        item = r["item_id"] + (f"\n{r['title'][:40]}" if r["title"] else "")
        text = detokenize(r["text"])  # for reading; the Parquet keeps the tokens the metrics use
        text = text if len(text) <= 240 else text[:240].rsplit(" ", 1)[0] + " …"
        # Text, not str: a review's "[...]" is not rich markup
        feedback = Text(text) if text or r["provenance"] is None else Text(f"({r['source']})", style="italic")
        rating = "–" if r["predicted_rating"] is None else f"{r['predicted_rating']:.2f}"
        source = Text((r["source"] or "–") + ("\nREPEATED in this list" if r["repeated"] else ""))
        table.add_row(str(r["rank"]), item, rating, feedback, *((source,) if with_source else ()))
    return table


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


ENGAGE_HELP = ("engage threshold (default: fitted on valid): a rating without --choice, "
               "a probability in [0, 1] with it")


@app.command()
def simulate(
    recommendations: Annotated[list[Path], typer.Option(
        help="RECS file(s): CSV/Parquet/JSONL of user_id, item_id[, rank] from any recommender")],
    dataset: Annotated[Path, typer.Option(help="the prepared dataset the models were trained on")],
    model: Annotated[Optional[Path], typer.Argument(
        help="a saved generator folder: the simulated user's ratings and reviews (optional with --choice)")] = None,
    more_recommendations: Annotated[Optional[list[Path]], typer.Argument(
        hidden=True, help="further RECS files (`--recommendations A B` is read as A and B)")] = None,
    choice: Annotated[Optional[Path], typer.Option(
        help="a choice-model folder (`feedbackgen train D --model ease`): decides engage/skip")] = None,
    k: Annotated[int, typer.Option(help="judge each user's top k")] = 10,
    threshold: Annotated[Optional[float], typer.Option(help=ENGAGE_HELP)] = None,
    calibration: Annotated[str, typer.Option(help="with --choice: isotonic | logistic")] = "isotonic",
    reviews: Annotated[bool, typer.Option(help="also write each review (off: ratings and decisions only)")] = True,
    feedback_for: Annotated[Optional[str], typer.Option(
        help="engaged | all: which items get a rating and review (default: engaged with --choice, else all)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="folder for simulated items/users Parquet and the summary")] = None,
    calibration_pairs: Annotated[Optional[int], typer.Option(
        help="fit the engage rule on a seeded sample of this many validation pairs")] = None,
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
    names = [p.stem for p in files]
    if len(set(names)) < len(names):
        named = {f"{p.parent.name}/{p.stem}": p for p in files}
        if len(named) < len(files):
            raise FeedbackgenError("two RECS files have the same name; rename one")
    else:
        named = dict(zip(names, files))
    t0 = time.time()
    result = run_simulation(generator, ds, named, k=k, threshold=threshold, write=reviews,
                            calibration_pairs=calibration_pairs, choice=choice_model, method=calibration,
                            feedback_for=feedback_for, name=simulator_name(generator, choice_model, model, choice))
    print(result.markdown())
    if out is not None:
        result.save(out)
        err.print(f"[green]wrote[/green] {out}/summary.md, summary.json, simulated_items.parquet, "
                  f"simulated_users.parquet in {time.time() - t0:.1f}s")


@app.command()
def fidelity(
    dataset: Annotated[Path, typer.Option(help="the prepared dataset the models were trained on")],
    model: Annotated[Optional[Path], typer.Argument(
        help="a saved generator folder: ratings and reviews (optional with --choice)")] = None,
    choice: Annotated[Optional[Path], typer.Option(help="a choice-model folder: decides engage/skip")] = None,
    protocol: Annotated[str, typer.Option(
        help="pooled (test pairs vs 1, 3, 9x never-seen items) | agent4rec (Agent4Rec's per-user lists, "
             "ratios 1, 2, 3, 9)")] = "pooled",
    out: Annotated[Optional[Path], typer.Option(help="folder for fidelity.json, fidelity.md and the plot")] = None,
    max_users: Annotated[Optional[int], typer.Option(help="a seeded sample of test users (faster)")] = None,
    threshold: Annotated[Optional[float], typer.Option(help=ENGAGE_HELP)] = None,
    calibration: Annotated[str, typer.Option(help="with --choice: isotonic | logistic")] = "isotonic",
    reviews: Annotated[bool, typer.Option(
        help="generate reviews and score them (AgentSociety review score); as in `simulate`")] = True,
    seed: Annotated[int, typer.Option(help="seed of the negative items and user sample")] = 1,
    calibration_pairs: Annotated[Optional[int], typer.Option(
        help="fit the engage rule on a seeded sample of this many validation pairs")] = None,
):
    """How far the simulated user matches real held-out behaviour: discrimination, ratings, reviews.

    Example: `feedbackgen fidelity --choice models/ease --dataset data/a4r --protocol agent4rec --no-reviews --out runs/fid`
    """
    from feedbackgen.recommend import fidelity as measure, fidelity_markdown, write_fidelity
    from feedbackgen.recommend.fidelity import is_agent4rec_ml1m
    from feedbackgen.recommend.ranking import simulator_name

    generator, choice_model, ds = _simulator(model, dataset, choice)
    label = simulator_name(generator, choice_model, model, choice)  # as `simulate` and `recommend` name it
    t0 = time.time()
    result = measure(generator, ds, max_users=max_users, threshold=threshold, review=reviews, seed=seed,
                     name=label, calibration_pairs=calibration_pairs, choice=choice_model, method=calibration,
                     protocol=protocol)
    same = is_agent4rec_ml1m(ds)
    print(fidelity_markdown([result], dataset.name, same_data=same))
    if out is not None:
        write_fidelity([result], out, dataset.name, same_data=same)
        err.print(f"[green]wrote[/green] {out}/fidelity.md, fidelity.json"
                  + (", rating_distribution.png" if result.get("rating") else "") + f" in {time.time() - t0:.1f}s")

