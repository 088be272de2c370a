"""Batch generation as a resumable job.

`run_generation` cuts the requests into shards and writes each shard atomically into
`OUT.parts/` beside a `job.json` that identifies the job (model, requests, decoding). A rerun of
the same job after a kill skips the finished shards; the final file is assembled in request
order, so an interrupted-and-resumed run gives the same bytes as an uninterrupted one.

Requests may be a list, or a `RequestStream` (a requests file or a dataset split read in batches):
then memory holds one shard of requests and feedback at a time, whatever the number of requests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from tqdm.auto import tqdm

from feedbackgen.config import Decoding, validate
from feedbackgen.data.dataset import SPLITS, Dataset
from feedbackgen.data.encoding import LineDecoder, UndecodableLine
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError, DataError, FeedbackgenError
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

        # JSON is UTF-8 (a BOM allowed); lines decoded one by one, so a bad byte costs its request only
        decoder = LineDecoder(lambda: open(path, "rb"), "auto", detect=False)
        with open(path, "rb") as f:
            for n, raw in enumerate(decoder.lines(f), 1):
                if not raw.strip():
                    continue
                try:
                    yield n, json.loads(decoder.decode(raw))
                except UndecodableLine as e:
                    problems.report(str(path), n, None, e.reason)
                except json.JSONDecodeError as e:
                    problems.report(str(path), n, None, f"not valid JSON ({e.msg})")
                except (RecursionError, ValueError):  # 10,000 nested brackets; an int of 5,000 digits
                    problems.report(str(path), n, None, "not valid JSON (nested too deeply or a number too long)")
    elif path.suffix == ".csv":
        try:
            batches = pl.scan_csv(path, infer_schema=False).collect_batches(chunk_size=BATCH_ROWS)
            yield from enumerate((row for batch in batches for row in batch.iter_rows(named=True)), 2)
        except Exception as e:  # polars: NoDataError, ComputeError (bad UTF-8, ragged rows), ...
            raise DataError(f"not a readable CSV file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                            source=str(path)) from None
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
            yield from enumerate((row for batch in batches for row in batch.to_pylist()), 1)
        except Exception as e:  # pyarrow raises several unrelated types for a non-Parquet or corrupt file
            raise DataError(f"not a readable Parquet file ({type(e).__name__}: {e})", source=str(path)) from None
    else:
        raise DataError("expected a .jsonl, .csv or .parquet requests file", source=str(path))


BATCH_ROWS = 65_536


def read_requests(path: str | Path, problems: Problems | None = None) -> list[FeedbackRequest]:
    """Requests from JSONL, CSV or Parquet (columns user_id, item_id, optional aspect, rating, seed).

    Bad records are reported to `problems` (default: strict, so the first one raises)."""
    return list(_iter_requests(Path(path), problems or Problems(strict=True)))


def _iter_requests(path: Path, problems: Problems) -> Iterator[FeedbackRequest]:
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    for n, rec in _request_records(path, problems):
        try:
            request = request_from_record(rec)
        except ValueError as e:
            problems.report(str(path), n, None, str(e))
            continue
        yield request


def request_from_record(rec: Any) -> FeedbackRequest:
    """One record of a requests file as a request (CSV gives strings: "" means absent).
    Raises ValueError naming the field. The Ray engine parses with this too, to read alike."""
    if isinstance(rec, dict):
        if isinstance(rec.get("rating"), str):
            rec = {**rec, "rating": float(rec["rating"]) if rec["rating"] else None}
        if isinstance(rec.get("seed"), str):
            rec = {**rec, "seed": int(rec["seed"]) if rec["seed"] else None}
        if rec.get("aspect") == "":
            rec = {**rec, "aspect": None}
    return FeedbackRequest.from_dict(rec)


class RequestStream:
    """Requests read in order, a batch at a time, as often as needed: a job reads them once to
    identify itself and once to generate. `requests_file` and `requests_from_dataset` make one."""

    def __init__(self, read: Any, description: str):
        self._read, self.description = read, description
        self.count: int | None = None  # known after the first full read

    def __iter__(self) -> Iterator[FeedbackRequest]:
        count = 0
        for request in self._read(first=self.count is None):
            count += 1
            yield request
        self.count = count

    def batches(self, size: int) -> Iterator[list[FeedbackRequest]]:
        requests = iter(self)
        while batch := list(itertools.islice(requests, size)):
            yield batch


def requests_file(path: str | Path, problems: Problems | None = None) -> RequestStream:
    """`read_requests` as a stream. Bad records go to `problems` on the first read only (later
    reads skip the same records again without counting them twice)."""
    path = Path(path)
    problems = problems or Problems(strict=True)
    if not path.exists():
        raise DataError("file does not exist", source=str(path))
    return RequestStream(lambda first: _iter_requests(path, problems if first else Problems()), str(path))


def requests_from_dataset(folder: str | Path, split: str = "test", with_aspect: bool = False) -> RequestStream:
    """`requests_from_split` read from a dataset folder in batches, without loading the dataset."""
    import pyarrow.parquet as pq

    path = Path(folder) / "interactions.parquet"
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not path.exists():
        raise DataError(f"{folder} is not a feedbackgen dataset (no interactions.parquet); "
                        "make one with `feedbackgen prepare`")
    names = pq.ParquetFile(path).schema_arrow.names
    if "split" not in names or pl.scan_parquet(path).select(pl.col("split").is_not_null().any()).collect().item() is False:
        raise DataError("this dataset has no split column yet; run `feedbackgen prepare` with --split")
    aspect = with_aspect and "aspect" in names
    columns = ["user_id", "item_id", "split", *(["aspect"] if aspect else [])]

    def read(first: bool) -> Iterator[FeedbackRequest]:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            part = pl.from_arrow(batch).filter(pl.col("split") == split)
            aspects = part["aspect"].to_list() if aspect else [None] * part.height
            for u, i, a in zip(part["user_id"], part["item_id"], aspects):
                yield FeedbackRequest(u, i, a)

    return RequestStream(read, f"{folder} ({split})")


def _job_identity(model_id: str, requests: Iterable[FeedbackRequest], decoding: Decoding,
                  shard_size: int) -> dict[str, Any]:
    h = hashlib.sha256()
    n = 0
    for r in requests:
        seed = "" if r.seed is None else f"\t{r.seed}"  # jobs from before per-request seeds keep their identity
        h.update(f"{r.user_id}\t{r.item_id}\t{r.aspect}\t{r.rating}{seed}\n".encode())
        n += 1
    return {"model": model_id, "requests": n, "requests_sha256": h.hexdigest(),
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


def run_generation(model: Generator, requests: Sequence[FeedbackRequest] | RequestStream, out: str | Path,
                   decoding: Decoding | dict | None = None, *, model_id: str = "",
                   shard_size: int = 1024, progress: bool = True) -> Path:
    """Generate feedback for `requests` into `out` (JSONL), resumably. Returns `out`."""
    decoding = validate(Decoding, decoding, "decoding settings")
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    identity = _job_identity(model_id or model.name, requests, decoding, shard_size)
    n_requests = identity["requests"]
    open_job(parts, identity)
    n_shards = max(1, -(-n_requests // shard_size))
    shard_paths = [parts / f"shard-{k:05d}.jsonl" for k in range(n_shards)]
    todo = [k for k, p in enumerate(shard_paths) if not p.exists()]
    bar = tqdm(total=n_requests, desc=f"generate [{model.name}]", unit="sample", disable=not progress,
               initial=n_requests - sum(min(shard_size, n_requests - k * shard_size) for k in todo))
    if isinstance(requests, RequestStream):
        # one shard of requests in memory; finished shards are read past, not regenerated
        chunks: Iterable[list[FeedbackRequest]] = requests.batches(shard_size)
    else:
        chunks = (list(requests[k * shard_size:(k + 1) * shard_size]) for k in range(n_shards))
    pending = set(todo)
    for k, chunk in enumerate(chunks):
        if k in pending:
            atomic_write_jsonl(shard_paths[k], feedback_rows(model, chunk, decoding))
            bar.update(len(chunk))
    if not shard_paths[0].exists():  # no requests at all: still one (empty) shard
        atomic_write_jsonl(shard_paths[0], [])
    bar.close()

    def assemble(tmp: Path):
        with open(tmp, "wb") as f:
            for p in shard_paths:
                with open(p, "rb") as shard:
                    shutil.copyfileobj(shard, f, 1 << 20)

    atomic_write(out, assemble)
    remove_parts(parts)
    return out


def open_job(parts: Path, identity: dict[str, Any]) -> None:
    """Claim `parts` for the job `identity`: new, or the same job resumed (else refuse)."""
    job_file = parts / "job.json"
    if job_file.exists():
        if json.loads(job_file.read_text()) != identity:
            raise FeedbackgenError(f"{parts} holds the parts of a different generation job; "
                                   "remove it or choose another --out")
    else:
        atomic_write_json(job_file, identity)


def remove_parts(parts: Path) -> None:
    """Delete a finished job's parts. Renamed away first: a kill half-way through rmtree must not
    leave shards without their job.json, which a changed command would then take as its own."""
    trash = parts.with_name(parts.name + ".trash")
    shutil.rmtree(trash, ignore_errors=True)
    parts.rename(trash)
    shutil.rmtree(trash)
