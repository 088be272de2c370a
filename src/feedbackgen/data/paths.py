"""Where the shared (research-use-only) data lives. Never copied into the repository."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FEEDBACKGEN_DATA"
FIXTURES_ENV = "FEEDBACKGEN_FIXTURES"
FIELD_CASES_ENV = "FEEDBACKGEN_FIELD_CASES"


def data_dir() -> Path:
    """`$FEEDBACKGEN_DATA`, default `../shared/data` (relative to the working directory)."""
    return Path(os.environ.get(DATA_ENV, "../shared/data"))


def fixtures_dir() -> Path:
    """`$FEEDBACKGEN_FIXTURES`, default `../shared/fixtures`."""
    return Path(os.environ.get(FIXTURES_ENV, "../shared/fixtures"))


def field_cases_dir() -> Path:
    """`$FEEDBACKGEN_FIELD_CASES`, default `../shared/field-cases`."""
    return Path(os.environ.get(FIELD_CASES_ENV, "../shared/field-cases"))
