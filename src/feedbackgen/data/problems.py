"""Bad records are reported, counted and skipped (or, when strict, stop the run) — never lost silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from feedbackgen.errors import DataError

MAX_EXAMPLES = 20


@dataclass
class Problems:
    """Collects skipped records: where each was (file, line), which field, and what was expected."""

    strict: bool = False
    count: int = 0
    by_reason: Counter = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def report(self, source: str, line: int | None, field_name: str | None, reason: str) -> None:
        """Record a skipped record, or raise `DataError` when strict."""
        if self.strict:
            raise DataError(reason + " (run without --strict to skip such records)",
                            source=source, line=line, field=field_name)
        self.count += 1
        self.by_reason[f"{field_name or 'record'}: {reason}"] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"source": source, "line": line, "field": field_name, "reason": reason})

    def to_manifest(self) -> dict[str, Any]:
        return {"skipped": self.count, "by_reason": dict(self.by_reason.most_common()),
                "examples": self.examples}

    def describe(self) -> str:
        if not self.count:
            return "no bad records"
        top = "; ".join(f"{n}× {r}" for r, n in self.by_reason.most_common(3))
        return f"skipped {self.count} bad record(s): {top}"
