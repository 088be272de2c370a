"""`feedbackgen recommend`: rank items for users, explained, or evaluate the ranking."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from feedbackgen.cli.app import app, err
from feedbackgen.cli.options import DatasetOption
from feedbackgen.errors import FeedbackgenError
from feedbackgen.tables import markdown_table


@app.command()
def recommend(
    model: Annotated[Path, typer.Argument(help="a saved model folder: a generator or a choice model")],
    dataset: DatasetOption,
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
    exclude: Annotated[str, typer.Option(
        help="which of each user's own items are never recommended, by split: train+valid (the default: "
             "lists for offline evaluation on test, as --evaluate masks) | all (every item the user ever "
             "had: lists to show) | train | none; written in the output's exclude column")] = "train+valid",
):
    """Rank items for a user, each with the feedback the user would give: by a choice model's score
    (MODEL a choice folder, or `--choice`), else by the generator's predicted rating.

    Example: `feedbackgen recommend models/peter --choice models/ease --dataset data/mi --user A2IBPI20UZIR0U --k 5`

    The ranking is the one `feedbackgen serve`'s /v1/recommend and the Python API give
    (`feedbackgen.recommend.top_k`): the same list for the same user and --exclude.

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
    from feedbackgen.recommend.ranking import check_exclude, simulator_name

    check_exclude(exclude)
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
        return _evaluate(ranker, ranker_path, ds, dataset, out, max_users)
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
                          problems=problems, choice=ranker if ranks_by_choice else None, exclude=exclude)
    if problems is not None and problems.count:
        err.print(f"[yellow]{problems.describe()}[/yellow]")
    if out is not None:
        write_recommendations(recs, out)
        err.print(f"[green]wrote[/green] {len(recs)} recommendations for {recs['user_id'].n_unique()} user(s) "
                  f"to {out} in {time.time() - t0:.1f}s (exclude={exclude}: each user's {exclude} items masked)")
    if user is not None:
        label = simulator_name(generator, ranker if ranks_by_choice else None,
                               model if generator is not None else None, ranker_path if ranks_by_choice else None)
        Console().print(_recommendation_table(recs, f"top {len(recs)} for {user} ({label}; exclude={exclude})"))


def _evaluate(ranker, ranker_path: Path, ds, dataset: Path, out: Optional[Path], max_users: Optional[int]) -> None:
    """`recommend --evaluate`: HR@K / NDCG@K / Recall@K of the ranker beside popularity and MF."""
    from feedbackgen.models import create
    from feedbackgen.recommend import Popularity, evaluate_ranking
    from feedbackgen.recommend.ranking import RANKING_FORMATS, simulator_name, write_ranking

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
