"""Batch generation as a resumable job.

`run_generation` cuts the requests into shards and writes each shard atomically into
`OUT.parts/` beside a `job.json` that identifies the job (model, requests, decoding). A rerun of
the same job after a kill skips the finished shards; the final file is assembled in request
order, so an interrupted-and-resumed run gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import Dataset
from feedbackgen.data.problems import Problems
from feedbackgen.errors import DataError, FeedbackgenError
from feedbackgen.io import atomic_write, atomic_write_json, atomic_write_jsonl
from feedbackgen.models.base import Generator
from feedbackgen.types import FeedbackRequest


def requests_from_split(dataset: Dataset, split: str = "test", with_aspect: bool = False) -> list[FeedbackRequest]:
    """One request per row of `split`; with `with_aspect`, the row's aspect goes into the request."""
    df = dataset.split(split)
    aspects = df["aspect"].to_list() if with_aspect and "aspect" in df.columns else [None] * len(df)
    return [FeedbackRequest(u, i, a) for u, i, a in zip(df["user_id"], df["item_id"], aspects)]


def _request_records(path: Path, problems: Problems):
    """(line number, record) pairs in file order; unparsable JSON lines are reported as met."""
    if path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8", errors="strict") as f:
            try:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as e:
                        problems.report(str(path), n, None, f"not valid JSON ({e.msg})")
            except UnicodeDecodeError as e:
                raise DataError(f"not UTF-8 text ({e.reason})", source=str(path)) from None
    elif path.suffix == ".csv":
        yield from enumerate(pl.read_csv(path, infer_schema=False).iter_rows(named=True), 2)
    elif path.suffix == ".parquet":
        yield from enumerate(pl.read_parquet(path).iter_rows(named=True), 1)
    else:
        raise DataError("expected a .jsonl, .csv or .parquet requests file", source=str(path))


def read_requests(path: str | Path, problems: Problems | None = None) -> list[FeedbackRequest]:
    """Requests from JSONL, CSV or Parquet (columns user_id, item_id, optional aspect, rating).

    Bad records are reported to `problems` (default: strict, so the first one raises)."""
    path = Path(path)
    problems = problems or Problems(strict=True)
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    out = []
    for n, rec in _request_records(path, problems):
        try:
            if isinstance(rec, dict):
                if isinstance(rec.get("rating"), str):
                    rec = {**rec, "rating": float(rec["rating"]) if rec["rating"] else None}
                if rec.get("aspect") == "":
                    rec = {**rec, "aspect": None}
            out.append(FeedbackRequest.from_dict(rec))
        except ValueError as e:
            problems.report(str(path), n, None, str(e))
    return out


def _job_identity(model_id: str, requests: Sequence[FeedbackRequest], decoding: Decoding,
                  shard_size: int) -> dict[str, Any]:
    h = hashlib.sha256()
    for r in requests:
        h.update(f"{r.user_id}\t{r.item_id}\t{r.aspect}\t{r.rating}\n".encode())
    return {"model": model_id, "requests": len(requests), "requests_sha256": h.hexdigest(),
            "decoding": decoding.model_dump(), "shard_size": shard_size}


def feedback_rows(model: Generator, requests: Sequence[FeedbackRequest], decoding: Decoding) -> list[dict]:
    target = getattr(model.config, "target", None)
    rows = []
    for req, fb in zip(requests, model.generate(requests, decoding)):
        row = fb.to_dict()
        row["aspect"] = req.aspect
        if target:
            row["target"] = target
        row["decoding"] = decoding.model_dump() if model.produces_text else None
        rows.append(row)
    return rows


def run_generation(model: Generator, requests: Sequence[FeedbackRequest], out: str | Path,
                   decoding: Decoding | dict | None = None, *, model_id: str = "",
                   shard_size: int = 1024, progress: bool = True) -> Path:
    """Generate feedback for `requests` into `out` (JSONL), resumably. Returns `out`."""
    decoding = validate(Decoding, decoding, "decoding settings")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    identity = _job_identity(model_id or model.name, requests, decoding, shard_size)
    job_file = parts / "job.json"
    if job_file.exists():
        if json.loads(job_file.read_text()) != identity:
            raise FeedbackgenError(f"{parts} holds the parts of a different generation job; "
                                   "remove it or choose another --out")
    else:
        atomic_write_json(job_file, identity)
    n_shards = max(1, -(-len(requests) // shard_size))
    shard_paths = [parts / f"shard-{k:05d}.jsonl" for k in range(n_shards)]
    todo = [k for k, p in enumerate(shard_paths) if not p.exists()]
    bar = tqdm(total=len(requests), desc=f"generate [{model.name}]", unit="sample", disable=not progress,
               initial=len(requests) - sum(len(requests[k * shard_size:(k + 1) * shard_size]) for k in todo))
    for k in todo:
        chunk = list(requests[k * shard_size:(k + 1) * shard_size])
        atomic_write_jsonl(shard_paths[k], feedback_rows(model, chunk, decoding))
        bar.update(len(chunk))
    bar.close()

    def assemble(tmp: Path):
        with open(tmp, "wb") as f:
            for p in shard_paths:
                f.write(p.read_bytes())

    atomic_write(out, assemble)
    shutil.rmtree(parts)
    return out
