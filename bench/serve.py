"""Load test of `feedbackgen serve`: requests/s and latency with and without micro-batching.

    python bench/serve.py --model-dir models/peter --dataset data/mi
    python bench/serve.py --model-dir models/popular --dataset data/mi --seconds 4    # a quick look
    python bench/serve.py --choice models/ease --model-dir models/peter --dataset data/mi   # /v1/recommend

For each way of serving — batch size 1 (`--max-batch 1`) and micro-batching (`--max-batch 32
--max-wait-ms 5` unless told otherwise) — the bench starts `feedbackgen serve MODEL` as its own
process on a free port of 127.0.0.1 and waits for /readyz. Then, from this process, it keeps C
clients busy (C = 1, 8, 32), each on its own keep-alive connection sending `POST /v1/feedback`
with one (user, item) request of the test split at a time, for a warm-up second and then
`--seconds`; only the timed part counts. It prints one Markdown table: requests/s, p50/p95/p99
latency, errors (anything but 200, which must be 0: the queue limit is far above 32) and the mean
model batch size read from the server's /metrics, then the speed-up of micro-batching over batch
size 1 at the highest concurrency.

The numbers depend on the machine and on what else runs on it; the bench never asserts them.
Every run stays on 127.0.0.1 and ends by itself (about 2 × (start-up + 3 × (1 + seconds)) s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from feedbackgen.tables import number, table_lines
from machine import cpu_model  # bench/machine.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pairs(dataset: Path, split: str, n: int, seed: int) -> list[tuple[str, str]]:
    import polars as pl

    df = pl.read_parquet(dataset / "interactions.parquet", columns=["user_id", "item_id", "split"])
    pairs = list(df.filter(pl.col("split") == split).select("user_id", "item_id").iter_rows())
    random.Random(seed).shuffle(pairs)
    return pairs[:n]


class Server:
    """`feedbackgen serve` in a child process, stopped with SIGTERM (gracefully) at the end."""

    def __init__(self, model_dir: Path | None, dataset: Path, max_batch: int, max_wait_ms: float,
                 extra: list[str] = (), port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="feedbackgen-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from feedbackgen.cli import main; main()", "serve",
             *([str(model_dir)] if model_dir else []),
             "--dataset", str(dataset), "--port", str(self.port), "--max-batch", str(max_batch),
             "--max-wait-ms", str(max_wait_ms), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; log: {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready after {timeout:.0f} s; log: {self.log.name}")

    def batch_totals(self, model: str) -> tuple[float, float]:
        count = total = 0.0
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(f'feedbackgen_batch_size_count{{model="{model}"}}'):
                count = float(line.rsplit(" ", 1)[1])
            elif line.startswith(f'feedbackgen_batch_size_sum{{model="{model}"}}'):
                total = float(line.rsplit(" ", 1)[1])
        return count, total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        os.unlink(self.log.name)


async def post_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes) -> int:
    """One HTTP/1.1 keep-alive request; returns the status. A bare client: a full HTTP library costs
    more CPU per request than the server spends on a popular-model request, on the same 2 cores."""
    writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(x.split(b":", 1)[1]) for x in lines if x.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def load(port: int, pairs: list[tuple[str, str]], concurrency: int, warmup: float, seconds: float,
               decoding: dict, make_call=None, path: str = "/v1/feedback") -> dict:
    """C clients, each on its own connection with one request in flight; the timed part only counts.
    `make_call(n)` gives the n-th call's JSON (default: one feedback request of `pairs`)."""
    latencies: list[float] = []
    errors = 0
    next_pair = 0
    start = time.perf_counter()
    timed_from, stop_at = start + warmup, start + warmup + seconds

    async def client():
        nonlocal errors, next_pair
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (t0 := time.perf_counter()) < stop_at:
            user, item = pairs[next_pair % len(pairs)]
            call = (make_call(next_pair) if make_call else
                    {"requests": [{"user_id": user, "item_id": item}], "decoding": decoding})
            next_pair += 1
            body = json.dumps(call).encode()
            try:
                ok = await post_json(reader, writer, path, body) == 200
            except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t1 = time.perf_counter()
            if t0 >= timed_from and t1 <= stop_at:
                latencies.append(t1 - t0)
                errors += not ok
        writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    return {"requests": len(lat), "rps": len(lat) / seconds, "p50_ms": pct(0.50), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, help="a saved generator folder (peter for the README); with "
                                                   "--choice, the one that explains (optional)")
    ap.add_argument("--choice", type=Path, help="instead: bench /v1/recommend ranked by this choice model "
                                                "(bench/serve_recommend.py)")
    ap.add_argument("--quality-users", type=int, default=2000, help="with --choice: test users for HR@10")
    ap.add_argument("--dataset", type=Path, required=True, help="the prepared dataset (requests come from it)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per concurrency level")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--max-batch", type=int, default=32, help="batch limit of the micro-batching server")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="batch window of the micro-batching server")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.choice is not None:
        from serve_recommend import bench_recommend  # bench/serve_recommend.py

        return bench_recommend(args)
    if args.model_dir is None:
        ap.error("give --model-dir (feedback) or --choice (recommend)")

    config = json.loads((args.model_dir / "config.json").read_text())
    name = args.model_dir.resolve().name
    pairs = test_pairs(args.dataset, args.split, 5000, args.seed)
    decoding = {"max_new_tokens": args.max_new_tokens}
    modes = {"batch size 1": (1, 0.0), f"micro-batching (≤{args.max_batch}, {args.max_wait_ms:g} ms)":
             (args.max_batch, args.max_wait_ms)}
    rows = []
    t_start = time.time()
    for mode, (max_batch, max_wait_ms) in modes.items():
        server = Server(args.model_dir, args.dataset, max_batch, max_wait_ms)
        try:
            server.wait_ready()
            for c in args.concurrency:
                before = server.batch_totals(name)
                result = asyncio.run(load(server.port, pairs, c, args.warmup, args.seconds, decoding))
                after = server.batch_totals(name)
                batches = after[0] - before[0]
                result.update(mode=mode, concurrency=c,
                              mean_batch=(after[1] - before[1]) / batches if batches else float("nan"))
                rows.append(result)
                print(f"  {mode}, concurrency {c}: {result['rps']:.1f} req/s", file=sys.stderr)
        finally:
            server.stop()

    print(f"\n`feedbackgen serve` load test: model `{config['model']}` ({args.model_dir}), one (user, item) "
          f"request per call, max_new_tokens={args.max_new_tokens}, {args.seconds:g} s per row after "
          f"{args.warmup:g} s warm-up; {cpu_model()}, {os.cpu_count()} cores; client in a second process.\n")
    head = ["serving", "concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "mean batch"]
    print("\n".join(table_lines(head, ([r["mode"], r["concurrency"], r["requests"],
                                       *(number(r[k], ".1f") for k in ("rps", "p50_ms", "p95_ms", "p99_ms")),
                                       r["errors"], number(r["mean_batch"], ".1f")] for r in rows),
                                 align="l" + "r" * 8)))
    top = max(args.concurrency)
    single = next(r for r in rows if r["mode"] == "batch size 1" and r["concurrency"] == top)
    batched = next(r for r in rows if r["mode"] != "batch size 1" and r["concurrency"] == top)
    if single["rps"] > 0:
        print(f"\nAt concurrency {top}, micro-batching serves {batched['rps'] / single['rps']:.1f}× the "
              f"requests/s of batch-size-1 serving (target: ≥ 4× with peter). Total {time.time() - t_start:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
