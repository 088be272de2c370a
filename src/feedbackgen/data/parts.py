"""Tables `prepare` keeps on disk between its passes, and the bookkeeping of a chunked pass.

A pass reads one Parquet part (at most one chunk of rows), transforms it and appends it to the
next table, so memory holds one chunk whatever the size of the input (docs/scale.md).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl


class Parts:
    """A table kept on disk as Parquet parts of at most one chunk each, in source order: each pass
    of `prepare` reads one part, transforms it and writes it to the next table, so memory holds
    one chunk whatever the size of the input."""

    def __init__(self, folder: Path, name: str):
        self.folder = folder / name
        self.folder.mkdir(parents=True)
        self.paths: list[Path] = []
        self.rows = 0

    def append(self, df: pl.DataFrame) -> None:
        path = self.folder / f"part-{len(self.paths):06d}.parquet"
        df.write_parquet(path, compression="lz4", statistics=False)
        self.paths.append(path)
        self.rows += df.height

    def __iter__(self):
        for path in self.paths:
            yield pl.read_parquet(path)

    def scan(self, columns: list[str] | None = None) -> pl.LazyFrame:
        """All parts as one lazy table. Parts written before the schemas were aligned (the loaded
        table: chunks of different files may differ in their extra columns) are scanned each on
        its own, for `columns` only."""
        if columns is not None:
            return pl.concat([pl.scan_parquet(p).select(columns) for p in self.paths])
        return pl.scan_parquet(self.paths)

    def schema(self) -> pl.DataFrame:
        """An empty frame with every part's columns, types widened as `pl.concat` widens them."""
        return pl.concat([pl.read_parquet(p, n_rows=0) for p in self.paths], how="diagonal_relaxed")

    def remove(self) -> None:
        shutil.rmtree(self.folder)

    def write_parquet(self, path: Path) -> None:
        """All parts as one Parquet file at `path`, a part (one row group) at a time."""
        import pyarrow.parquet as pq

        writer = None
        try:
            for df in self:
                table = df.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema, compression="zstd", write_statistics=False)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


class Distinct:
    """The distinct values of a column met chunk by chunk (memory: one copy of each value)."""

    def __init__(self, name: str):
        self.parts: list[pl.Series] = [pl.Series(name, [], pl.Utf8)]
        self.size = 0

    def add(self, values: pl.Series) -> None:
        unique = values.unique()
        self.parts.append(unique)
        self.size += unique.len()
        if len(self.parts) > 64:
            self.parts = [pl.concat(self.parts).unique()]

    def count(self) -> int:
        return pl.concat(self.parts).n_unique()


def merge_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One step record from the records of its chunks: counts added up, the rest from the first."""
    out = dict(records[0])
    for record in records[1:]:
        for key, value in record.items():
            if isinstance(value, bool) or key in ("step", "params"):
                continue
            if isinstance(value, int):
                out[key] += value
            elif isinstance(value, dict):
                merged = dict(out[key])
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
                out[key] = merged
    return out


def count_rows(lf: pl.LazyFrame) -> int:
    """The rows of `lf`, counted by the streaming engine."""
    return lf.select(pl.len()).collect(engine="streaming").item()


class StepLog:
    """Collects step records; prints one line per step when `progress`."""

    def __init__(self, progress: bool):
        self.progress, self.steps, self.started = progress, [], time.perf_counter()

    def __call__(self, record: dict[str, Any]) -> None:
        self.steps.append(record)
        if self.progress:
            extra = {k: v for k, v in record.items()
                     if k not in ("step", "params", "rows_in", "rows_out", "aspects", "cold_before", "cold_after")}
            print(f"prepare: {record['step']:<18} {record['rows_in']:>9,} -> {record['rows_out']:>9,} rows  "
                  f"{_brief(extra)}  [{time.perf_counter() - self.started:.1f}s]", file=sys.stderr)


def _brief(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if v not in (None, {}, 0) or k == "touched")
