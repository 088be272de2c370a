"""Batch generation on Ray: the job of `jobs.run_generation`, answered by a pool of actors.

The driver (the process running `feedbackgen generate --engine ray`) reads the requests with Ray
Data, cuts them into the same shards as the local engine and hands each unfinished shard to one of
N actors. Each actor loads the model once and answers a shard with `jobs.feedback_rows`, the very
call the local engine makes on the same shard, so greedy (or seeded) decoding gives the same text.
The driver writes each answer as a Parquet shard (temporary name, then rename) into `OUT.parts/`
beside `job.json`, and at the end assembles OUT in request order: the same bytes as the local
engine's file. A rerun of the same command after a kill skips the finished shards.

Ray is imported only when this engine runs, so the rest of feedbackgen works without it.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from feedbackgen.batch.jobs import (BATCH_ROWS, RequestStream, _job_identity, feedback_rows, open_job,
                                    remove_parts, request_from_record, requests_from_dataset)
from feedbackgen.config import Decoding, validate
from feedbackgen.data.problems import Problems
from feedbackgen.errors import ConfigError, DataError, FeedbackgenError
from feedbackgen.io import atomic_write
from feedbackgen.models import load
from feedbackgen.models.base import read_model_config
from feedbackgen.types import FeedbackRequest

# set on the driver, these reach the actors too (a `ray start` node does not inherit them)
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
# shards queued per actor: enough to keep every actor busy while the driver writes a shard
IN_FLIGHT_PER_WORKER = 2


class ShardWorker:
    """A Ray actor: loads the model once, then answers shards of requests."""

    def __init__(self, model_dir: str):

        self.model = load(model_dir)

    def generate(self, k: int, requests: list[FeedbackRequest], decoding: Decoding) -> tuple[int, list[dict]]:
        return k, feedback_rows(self.model, requests, decoding)


def run_generation_ray(model_dir: str | Path, out: str | Path, decoding: Decoding | dict | None = None, *,
                       requests: str | Path | None = None, dataset: str | Path | None = None,
                       split: str = "test", with_aspect: bool = False, problems: Problems | None = None,
                       address: str | None = None, workers: int | None = None, shard_size: int = 1024,
                       progress: bool = True) -> tuple[Path, int]:
    """Generate feedback for a requests file, or a dataset's split, into `out` (JSONL) on Ray.

    `address`: a running cluster (`HOST:PORT`, `ray://HOST:PORT` or `auto`); None starts a local
    Ray in this process (or uses the one already started). `workers`: actors, one CPU each
    (default: every CPU of the cluster). Returns (`out`, number of requests)."""

    decoding = validate(Decoding, decoding, "decoding settings")
    if (dataset is None) == (requests is None):
        raise FeedbackgenError("give exactly one of a dataset (with a split) or a requests file")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {workers})")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1 (got {shard_size})")
    model_dir, out = Path(model_dir).resolve(), Path(out)
    model_name = read_model_config(model_dir)["model"]  # not a model folder: fail before starting Ray
    if dataset is not None:
        try:
            requests_from_dataset(dataset, split, with_aspect)  # the local engine's checks and messages
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif not Path(requests).exists():
        raise DataError("file does not exist", source=str(requests))

    with _ray_session(address, workers) as ray:
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        _check_cpus(ray, workers, address)
        stream = _request_stream(ray, requests, dataset, split, with_aspect, problems or Problems(strict=True))
        # the local engine's identity, marked so that neither engine takes the other's parts as its own
        identity = {**_job_identity(str(model_dir), stream, decoding, shard_size), "engine": "ray"}
        parts = out.with_name(out.name + ".parts")
        open_job(parts, identity)
        n = identity["requests"]
        shard_paths = [parts / f"shard-{k:05d}.parquet" for k in range(max(1, -(-n // shard_size)))]
        todo = {k for k, p in enumerate(shard_paths) if not p.exists()}
        with tqdm(total=n, desc=f"generate [{model_name}] on Ray", unit="sample", disable=not progress,
                  initial=n - sum(min(shard_size, n - k * shard_size) for k in todo)) as bar:
            if n == 0 and todo:
                _write_shard(shard_paths[0], [])
            elif todo:
                for k, rows in _generate_shards(ray, model_dir, stream, todo, decoding, shard_size,
                                                min(workers, len(todo))):
                    _write_shard(shard_paths[k], rows)
                    bar.update(len(rows))
    atomic_write(out, lambda tmp: _assemble(shard_paths, tmp))
    remove_parts(parts)
    return out, n


# -- Ray: the session, the requests, the actors ------------------------------------------------

def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data, which `ray[data]` brings)
    except ImportError:
        raise FeedbackgenError("--engine ray needs Ray: pip install 'ray[data]'") from None
    return ray


@contextmanager
def _ray_session(address: str | None, workers: int | None):
    """Connect to `address` (or start a local Ray), and disconnect afterwards; a session the caller
    opened (a notebook, a test) is used as it is and left open."""
    ray = _import_ray()
    if ray.is_initialized():
        if address:
            raise FeedbackgenError("this process is connected to Ray already; leave out the address to use "
                                   "that session, or call ray.shutdown() first")
        yield ray
        return
    if address:
        _check_reachable(address)
    # "local": a new Ray in this process, never a cluster some earlier `ray start` left registered here
    local = {} if address else {"num_cpus": max(workers or 0, os.cpu_count() or 1), "include_dashboard": False}
    try:
        ray.init(address=address or "local", log_to_driver=False, logging_level=logging.WARNING, **local)
    except Exception as e:  # refused, or ray:// without ray[client], ...: one line rather than Ray's traceback
        hint = (" (a cluster with token authentication needs RAY_AUTH_MODE=token and its token here too: "
                "docs/distributed.md)") if isinstance(e, ConnectionError) else ""
        raise FeedbackgenError(f"cannot connect to the Ray cluster at {address}: {_first_line(e)}{hint}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nobody listens at (ray.init would wait for minutes)."""
    if address == "auto":  # Ray finds the cluster started on this machine, or says there is none
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be HOST:PORT, ray://HOST:PORT or auto (got {address!r})")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise FeedbackgenError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                               "`ray start --head` there, or check --address") from None


def _check_cpus(ray, workers: int, address: str | None) -> None:
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if workers > cpus:  # the extra actors would wait for a CPU forever
        raise ConfigError(f"--workers {workers} needs {workers} CPUs, but the Ray cluster "
                          f"{'at ' + address if address else 'here'} has {cpus}; lower --workers or add nodes")


def _request_stream(ray, requests: str | Path | None, dataset: str | Path | None, split: str,
                    with_aspect: bool, problems: Problems) -> RequestStream:
    """The requests, read once with Ray Data into the object store (spilled to disk when large),
    then streamed to the driver in order as often as the job needs them."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # request order is output order
    ctx.enable_progress_bars = False  # our bar counts samples; Ray Data's would count blocks read
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    if dataset is not None:
        source, ds = str(dataset), _read_split(ray, Path(dataset), split, with_aspect)
        first_line = 1
    else:
        source, ds = str(requests), _read_file(ray, Path(requests))
        first_line = 2 if Path(requests).suffix == ".csv" else 1
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.CRITICAL)  # a bad file: our one line, not Ray's tracebacks
    try:
        ds = ds.materialize()
    except Exception as e:  # Ray wraps the reader's error; its first line says what was wrong
        raise DataError(f"Ray Data cannot read it ({_first_line(e)}); `--engine local` reports and skips "
                        "bad records one by one", source=source) from None
    finally:
        data_log.setLevel(level)

    def read(first: bool) -> Iterator[FeedbackRequest]:
        report = problems if first else Problems()  # count each bad record once, not once per read
        n = first_line - 1
        for batch in ds.iter_batches(batch_size=BATCH_ROWS, batch_format="pyarrow"):
            for rec in batch.to_pylist():
                n += 1
                if dataset is not None:
                    yield FeedbackRequest(rec["user_id"], rec["item_id"], rec.get("aspect"))
                    continue
                try:
                    request = request_from_record(rec)
                except ValueError as e:
                    report.report(source, n, None, str(e))
                    continue
                yield request

    return RequestStream(read, source)


def _read_file(ray, path: Path):
    if path.suffix == ".parquet":
        return ray.data.read_parquet(str(path))
    if path.suffix in (".jsonl", ".json"):
        return ray.data.read_json(str(path), lines=True)
    if path.suffix == ".csv":
        import pyarrow as pa
        import pyarrow.csv

        # every column as text, as the local engine reads CSV: ids like 007 keep their zeros
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        types = pyarrow.csv.ConvertOptions(column_types={name: pa.string() for name in header})
        return ray.data.read_csv(str(path), convert_options=types)
    raise DataError("expected a .jsonl, .csv or .parquet requests file", source=str(path))


def _read_split(ray, folder: Path, split: str, with_aspect: bool):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = folder / "interactions.parquet"
    aspect = with_aspect and "aspect" in pq.ParquetFile(path).schema_arrow.names
    columns = ["user_id", "item_id", "split", *(["aspect"] if aspect else [])]
    ds = ray.data.read_parquet(str(path), columns=columns)
    return ds.map_batches(lambda t: t.filter(pc.equal(t["split"], split)), batch_format="pyarrow",
                          batch_size=None)


def _generate_shards(ray, model_dir: Path, stream: RequestStream, todo: set[int], decoding: Decoding,
                     shard_size: int, workers: int) -> Iterator[tuple[int, list[dict]]]:
    """(shard number, feedback rows) for every shard in `todo`, in the order they finish.

    Requests are read a shard at a time and at most IN_FLIGHT_PER_WORKER shards per actor wait
    in Ray, so the driver's memory stays bounded whatever the number of requests."""
    from ray.util import ActorPool

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    # restarted on another node, and the shard retried, if a node dies: a shard is a pure function
    Worker = ray.remote(num_cpus=1, max_restarts=2, max_task_retries=2)(ShardWorker)
    actors = [Worker.options(runtime_env={"env_vars": env} if env else None).remote(str(model_dir))
              for _ in range(workers)]
    pool = ActorPool(actors)
    waiting = 0
    try:
        for k, chunk in enumerate(stream.batches(shard_size)):
            if k not in todo:
                continue
            pool.submit(lambda actor, job: actor.generate.remote(*job), (k, chunk, decoding))
            waiting += 1
            if waiting >= IN_FLIGHT_PER_WORKER * workers:
                yield pool.get_next_unordered()
                waiting -= 1
        while pool.has_next():
            yield pool.get_next_unordered()
    except ray.exceptions.RayTaskError as e:  # the model's own error, raised as the local engine raises it
        _quiet_other_failures()
        raise (e.cause or e) from None
    except ray.exceptions.RayActorError as e:
        _quiet_other_failures()
        if e.actor_init_failed:
            raise FeedbackgenError(f"a Ray worker could not load the model {model_dir} ({_last_line(e)}); "
                                   "it must be at the same path on every node (docs/distributed.md)") from None
        raise FeedbackgenError(f"a Ray worker died ({_last_line(e)}); finished shards are kept: rerun the "
                               "command to resume") from None
    finally:
        for actor in actors:
            ray.kill(actor)


# -- shards ------------------------------------------------------------------------------------

def _write_shard(path: Path, rows: list[dict]) -> None:
    """One shard as Parquet: the plain columns to query, and each row's JSON line to assemble
    the output from (nested fields such as meta vary by row, so columns could not keep them exactly)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "user_id": pa.array([r["user_id"] for r in rows], pa.string()),
        "item_id": pa.array([r["item_id"] for r in rows], pa.string()),
        "aspect": pa.array([r.get("aspect") for r in rows], pa.string()),
        "rating": pa.array([r["rating"] for r in rows], pa.float64()),
        "text": pa.array([r["text"] for r in rows], pa.string()),
        "model": pa.array([r["model"] for r in rows], pa.string()),
        # what atomic_write_jsonl writes for the local engine, so the outputs are the same bytes
        "line": pa.array([json.dumps(r, ensure_ascii=False) + "\n" for r in rows], pa.string()),
    })
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _assemble(shard_paths: list[Path], tmp: Path) -> None:
    import pyarrow.parquet as pq

    with open(tmp, "w", encoding="utf-8") as f:
        for p in shard_paths:  # one shard in memory at a time
            f.writelines(pq.read_table(p, columns=["line"])["line"].to_pylist())


def _quiet_other_failures() -> None:
    """The first failure is the one reported; Ray would also log every other actor's at exit."""
    os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"


def _last_line(e: BaseException) -> str:
    """The worker's own exception, which Ray puts last, after its traceback."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__


def _first_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e  # a RayTaskError carries the worker's exception
    lines = [x.strip() for x in str(cause).splitlines() if x.strip()]
    return lines[0] if lines else type(cause).__name__
