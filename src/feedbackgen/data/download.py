"""Fetch the public Amazon Musical Instruments 5-core file when it is not already on disk.

The only place feedbackgen reaches the network for data, and only when asked. We know no
official sha256 for the SNAP file (the shared copy was rebuilt from a CSV dump, so its hash is
not the original's), so a download is checked by content instead: 10,261 records, each a JSON
object with the review fields. The computed sha256 is printed so it can be pinned later.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from feedbackgen.errors import DataError
from feedbackgen.io import atomic_write, sha256_file

MUSICAL_INSTRUMENTS_URL = (
    "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Musical_Instruments_5.json.gz"
)
MUSICAL_INSTRUMENTS_FILE = "reviews_Musical_Instruments_5.json.gz"
MUSICAL_INSTRUMENTS_FOLDER = "amazon_musical_instruments_5core"
MUSICAL_INSTRUMENTS_RECORDS = 10_261
MUSICAL_INSTRUMENTS_SHA256: str | None = None  # unknown: pin it once an official copy is seen
REVIEW_FIELDS = ("reviewerID", "asin", "overall", "reviewText", "summary", "unixReviewTime")


def cache_dir() -> Path:
    """`$FEEDBACKGEN_CACHE`, else `$XDG_CACHE_HOME/feedbackgen`, else `~/.cache/feedbackgen`."""
    if "FEEDBACKGEN_CACHE" in os.environ:
        return Path(os.environ["FEEDBACKGEN_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "feedbackgen"


def verify_reviews_file(path: str | Path, expected_records: int = MUSICAL_INSTRUMENTS_RECORDS,
                        fields: tuple[str, ...] = REVIEW_FIELDS) -> dict[str, Any]:
    """Check that `path` (gzip JSON lines) holds `expected_records` objects with `fields`.
    Returns {"records", "sha256"}; raises DataError naming the first bad line."""
    path = Path(path)
    records = 0
    try:
        with gzip.open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError as e:
                    raise DataError(f"not valid JSON ({e})", source=str(path), line=line_no) from None
                if not isinstance(record, dict):
                    raise DataError("expected a JSON object", source=str(path), line=line_no)
                missing = [k for k in fields if k not in record]
                if missing:
                    raise DataError(f"missing field(s) {', '.join(missing)}", source=str(path), line=line_no)
                records += 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"truncated or corrupt gzip after {records} records ({e})", source=str(path)) from None
    if records != expected_records:
        raise DataError(f"expected {expected_records:,} records, found {records:,}", source=str(path))
    return {"records": records, "sha256": sha256_file(path)}


def _download(url: str, target: Path, timeout: float = 60.0) -> None:
    def write(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if total:
                    print(f"\r  {done / 1e6:.1f} / {total / 1e6:.1f} MB", end="", file=sys.stderr)
        print(file=sys.stderr)
        verify_reviews_file(tmp)  # a bad download never gets the real name

    atomic_write(target, write)


def ensure_musical_instruments(data_dir: str | Path | None = None) -> Path:
    """The path of `reviews_Musical_Instruments_5.json.gz`: from `data_dir` when it is there,
    else from the cache, else downloaded from SNAP into the cache (and verified)."""
    if data_dir is not None:
        local = Path(data_dir) / MUSICAL_INSTRUMENTS_FOLDER / MUSICAL_INSTRUMENTS_FILE
        if local.exists():
            return local
    cached = cache_dir() / "data" / MUSICAL_INSTRUMENTS_FOLDER / MUSICAL_INSTRUMENTS_FILE
    if cached.exists():
        print(f"using the cached copy {cached}", file=sys.stderr)
        return cached
    print(f"downloading {MUSICAL_INSTRUMENTS_URL}\n  to {cached}", file=sys.stderr)
    try:
        _download(MUSICAL_INSTRUMENTS_URL, cached)
    except OSError as e:  # urllib's URLError and socket timeouts are OSErrors
        raise DataError(f"could not download {MUSICAL_INSTRUMENTS_URL}: {e}") from None
    sha = sha256_file(cached)
    if MUSICAL_INSTRUMENTS_SHA256 is not None and sha != MUSICAL_INSTRUMENTS_SHA256:
        cached.unlink()
        raise DataError(f"sha256 {sha} does not match the pinned {MUSICAL_INSTRUMENTS_SHA256}", source=str(cached))
    print(f"verified {MUSICAL_INSTRUMENTS_RECORDS:,} records with the expected fields; sha256 {sha}\n"
          "  (not checked against a pinned value: no official sha256 is known for this file)", file=sys.stderr)
    return cached


if __name__ == "__main__":  # `python -m feedbackgen.data.download`: print the file's path
    from feedbackgen.data.paths import data_dir

    try:
        print(ensure_musical_instruments(data_dir()))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
