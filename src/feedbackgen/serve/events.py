"""The event store: what users did after training (took, rated, reviewed an item), applied at once.

    store = EventStore("runs/events.sqlite")          # created if missing; WAL journal
    store.add([Event("u1", "i9", rating=5.0)])        # durable when it returns (fsync'd commit)
    store.items_of("u1")                              # ["i9", ...]: masked and folded into u1's scoring
    store.export("events.jsonl")                      # one JSON object a line, for `prepare --format jsonl`

Why SQLite in WAL mode with `synchronous=FULL`: a commit is on disk before `POST /v1/events`
answers, so a server killed right after (SIGKILL, power loss) loses no acknowledged event, and
readers (an export while the server runs) never block the writer. An event repeated with the same
(user_id, item_id, timestamp) is a client's retry: stored once, counted as a duplicate.

Each user's items are also kept in memory (loaded at start, appended on every commit), so the
next recommendation reads them without touching the disk.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from feedbackgen.errors import FeedbackgenError
from feedbackgen.io import atomic_write_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rating REAL,
    text TEXT,
    timestamp INTEGER NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (user_id, item_id, timestamp)
)
"""


@dataclass(frozen=True)
class Event:
    """One thing a user did: took `item_id` (with a star `rating` and a review `text` when given)
    at `timestamp` (Unix seconds; default: when the server received it)."""

    user_id: str
    item_id: str
    rating: float | None = None
    text: str | None = None
    timestamp: int | None = None


class EventStore:
    """Events in one SQLite file; thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise FeedbackgenError(f"--events {self.path} is a folder; give a file such as runs/events.sqlite")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise FeedbackgenError(f"{self.path} is not an event store (SQLite said: {e})") from None
        self.lock = threading.Lock()
        self.by_user: dict[str, list[str]] = {}
        for user, item in self.db.execute("SELECT user_id, item_id FROM events ORDER BY seq"):
            self._remember(user, item)

    def _remember(self, user: str, item: str) -> None:
        items = self.by_user.setdefault(user, [])
        if item not in items:
            items.append(item)

    def add(self, events: Sequence[Event]) -> tuple[int, int]:
        """Store `events` in one transaction, committed to disk before returning.
        Returns (stored, duplicates)."""
        now = time.time()
        rows = [(e.user_id, e.item_id, e.rating, e.text, int(now) if e.timestamp is None else e.timestamp, now)
                for e in events]
        with self.lock:
            before = self.db.total_changes
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("INSERT OR IGNORE INTO events (user_id, item_id, rating, text, timestamp, "
                                    "received_at) VALUES (?, ?, ?, ?, ?, ?)", rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            stored = self.db.total_changes - before
            for e in events:
                self._remember(e.user_id, e.item_id)
        return stored, len(rows) - stored

    def items_of(self, user_id: str) -> list[str]:
        """The items `user_id` took in stored events, first event first (each once)."""
        return list(self.by_user.get(user_id, ()))

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def rows(self) -> Iterator[dict]:
        """Every stored event in arrival order, as the JSON objects `export` writes."""
        with self.lock:
            found = self.db.execute("SELECT user_id, item_id, rating, text, timestamp FROM events ORDER BY seq"
                                    ).fetchall()
        for user, item, rating, text, ts in found:
            yield {k: v for k, v in asdict(Event(user, item, rating, text, ts)).items() if v is not None}

    def export(self, out: str | Path) -> int:
        """Write every event to `out` as JSONL (user_id, item_id, rating?, text?, timestamp), atomically.
        Returns the number of events written."""
        lines = [json.dumps(row, ensure_ascii=False) for row in self.rows()]
        atomic_write_text(Path(out), "".join(line + "\n" for line in lines))
        return len(lines)

    def close(self) -> None:
        with self.lock:
            self.db.close()


def open_existing(path: str | Path) -> EventStore:
    """An event store that must exist already (export never creates one)."""
    if not Path(path).is_file():
        raise FeedbackgenError(f"no event store at {path} (it is created by `feedbackgen serve ... --events {path}`)")
    return EventStore(path)
