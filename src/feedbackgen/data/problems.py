"""Bad records are reported, counted and skipped (or, when strict, stop the run) — never lost silently.

Reasons are counted by kind: "rating: expected a number" however many values were wrong, so a
file with one fault on every record reads "30× template: missing", not thirty reasons. The kind
is the reason up to its first detail (", got ...", ": ...", " (...)"); the full reason of the
first few records is kept in `examples`, and the lines (record numbers) of each kind are listed
apart, at most `MAX_LINES_PER_KIND` of them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedbackgen.errors import DataError

MAX_EXAMPLES = 20
MAX_LINES_PER_KIND = 10
_DETAIL = re.compile(r", got |: | \(")


def kind_of(reason: str) -> str:
    """`reason` without its record-specific detail: "expected a number, got str 'x'" → "expected a number"."""
    m = _DETAIL.search(reason)
    return reason[:m.start()] if m and m.start() > 0 else reason


@dataclass
class Problems:
    """Collects skipped records: where each was (file, line), which field, and what was expected."""

    strict: bool = False
    count: int = 0
    by_reason: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    lines: dict[str, list] = field(default_factory=dict)

    def report(self, source: str, line: int | None, field_name: str | None, reason: str) -> None:
        """Record a skipped record, or raise `DataError` when strict."""
        if self.strict:
            raise DataError(reason + " (run without --strict to skip such records)",
                            source=source, line=line, field=field_name)
        self.count += 1
        kind = f"{field_name or 'record'}: {kind_of(reason)}"
        self.by_reason[kind] += 1
        where = self.lines.setdefault(kind, [])
        if line is not None and len(where) < MAX_LINES_PER_KIND:
            where.append([Path(source).name, line])
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"source": source, "line": line, "field": field_name, "reason": reason})

    def to_manifest(self) -> dict[str, Any]:
        return {"skipped": self.count, "by_reason": dict(self.by_reason.most_common()),
                "lines_by_reason": {k: {"first": v, "more": self.by_reason[k] - len(v)}
                                    for k, v in self.lines.items()},
                "examples": self.examples}

    def mark(self) -> Counter:
        """The reasons so far, to `describe(since=...)` what came after."""
        return Counter(self.by_reason)

    def _where(self, kind: str) -> str:
        where = self.lines.get(kind) or []
        if not where:
            return ""
        files = {name for name, _ in where}
        shown = ", ".join(str(line) if len(files) == 1 else f"{name}:{line}" for name, line in where)
        more = self.by_reason[kind] - len(where)
        return f" (line {shown}" + (f" and {more:,} more)" if more > 0 else ")")

    def describe(self, since: Counter | None = None) -> str:
        reasons = self.by_reason - since if since is not None else self.by_reason
        count = sum(reasons.values())
        if not count:
            return "no bad records"
        top = "; ".join(f"{n}× {r}" + (self._where(r) if since is None else "") for r, n in reasons.most_common(3))
        return f"skipped {count} bad record(s): {top}"
