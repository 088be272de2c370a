"""`feedbackgen prepare`: review files in, a prepared dataset folder out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from feedbackgen.cli.app import app, err
from feedbackgen.config import column_mapping, load_config_file, parse_set_options
from feedbackgen.data.prepare_config import prepare_settings_help

FORMATS = ("amazon2014 | amazon2018 | amazon2023 | yelp | peter | recbole | movielens (ML-100K/1M/10M/20M+ folder "
           "or files; ratings only) | lightgcn (train.txt/valid.txt/test.txt, one line per user; interactions "
           "only) | csv | jsonl | parquet")


# every PrepareConfig field, rendered from the model so that the help never falls behind it
# (one paragraph each: click rewraps a paragraph to the terminal's width, keeping settings apart)
SETTINGS_HELP = ("Preprocessing settings (--set key=value, or a JSON object in --config FILE):\n\n"
                 + "\n\n".join(prepare_settings_help().splitlines()))


@app.command(epilog=SETTINGS_HELP)
def prepare(
    sources: Annotated[list[Path], typer.Argument(help="review file(s) or folder (peter format)")],
    format: Annotated[str, typer.Option("--format", "-f", help=FORMATS)],
    out: Annotated[Path, typer.Option(help="dataset folder to write")],
    meta: Annotated[Optional[Path], typer.Option(
        help="item metadata file (amazon2018/2023, yelp business.json, lightgcn: any CSV/JSONL, see --map)")] = None,
    split: Annotated[Optional[str], typer.Option(
        help="random | temporal | peter | files (default: files for lightgcn, whose files hold the split; "
             "random otherwise)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random split")] = 1,
    strict: Annotated[bool, typer.Option(help="stop at the first bad record instead of skipping it")] = False,
    map: Annotated[list[str], typer.Option(
        "--map", help="column mapping ours=theirs (csv/jsonl/parquet/recbole; lightgcn: the --meta file's "
                      "columns, e.g. item_id=movie_id)")] = [],
    config: Annotated[Optional[Path], typer.Option(help="JSON file of preprocessing settings")] = None,
    set: Annotated[list[str], typer.Option("--set", help="preprocessing setting key=value")] = [],
    chunk_rows: Annotated[int, typer.Option(help="rows held in memory at a time (peak memory, not the result)")] = 100_000,
    workdir: Annotated[Optional[Path], typer.Option(help="folder for temporary parts (default: the system's temp)")] = None,
    encoding: Annotated[str, typer.Option(help="text encoding of the files (utf-8, cp1252, latin-1, utf-16, ...); "
                                          "auto: a BOM, else UTF-8, else windows-1252 for CSV/RecBole")] = "auto",
):
    """Load a public review file, clean it, extract explanations, split it, and save a Dataset.

    Example: `feedbackgen prepare reviews_Musical_Instruments_5.json.gz --format amazon2014 --out data/mi`

    Ratings only: `feedbackgen prepare path/to/ml-100k --format movielens --out data/ml100k`;
    interactions only: `feedbackgen prepare agent4rec/ --format lightgcn --meta agent4rec/movie_detail.csv
    --map item_id=movie_id --out data/a4r`. Text-only steps skip such data and say so.
    """
    from feedbackgen.data.prepare import prepare_to

    settings = {**load_config_file(config), **parse_set_options(set)}
    t0 = time.time()
    manifest = prepare_to(sources, format, out, meta=meta, mapping=column_mapping(map), split=split, seed=seed,
                          strict=strict, config=settings, chunk_rows=chunk_rows, workdir=workdir,
                          encoding=encoding)
    summary = manifest["summary"]
    skipped = manifest.get("problems", {}).get("skipped", 0)
    err.print(f"[green]wrote[/green] {out}: {summary} — skipped {skipped} bad record(s) "
              f"(details in {out / 'manifest.json'}) in {time.time() - t0:.1f}s")
    skipped_steps = [s["step"] for s in manifest["steps"] if "skipped_because" in s]
    if skipped_steps:
        kind = " and ".join(k for k, missing in (("no review text", not manifest.get("has_text", True)),
                                                 ("no ratings (implicit feedback)",
                                                  not manifest.get("has_ratings", True))) if missing)
        err.print(f"{kind}: skipped {', '.join(skipped_steps)}; text generators will refuse this "
                  "dataset, choice models" + (" and rating models" if manifest.get("has_ratings", True) else "")
                  + " train on it", highlight=False)

