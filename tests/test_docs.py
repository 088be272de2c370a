"""The documentation site builds strictly (what `make docs` runs), and the README stays a landing page.

A strict MkDocs build fails on a broken link between pages, a nav entry whose page is gone, and an
API page (mkdocstrings) naming a module or member that no longer exists, so CI catches docs that
drift from the code. The build needs nothing from the network (mkdocs.yml: no fonts, no plugins
that fetch)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "benchmarks" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert "feedbackgen.models.base.Generator" in api  # the API reference is generated, not empty


def test_readme_is_a_landing_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"
    assert "make demo" in "\n".join(lines[:5]) and "make test" in "\n".join(lines[:5])
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):  # links into the docs exist
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_benchmark_table_says_when_where_and_how():
    """Each table of docs/benchmarks.md sits under a line giving its date, machine, commit and the
    command that reproduces it (the `*Measured ...*` / `*Reproduce:*` lines, or their words)."""
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    sections = re.split(r"\n(?=#{2,3} )", text)
    for section in sections:
        if "\n|---" not in section and "\n| ---" not in section:
            continue
        heading = section.splitlines()[0]
        assert re.search(r"20\d\d-\d\d-\d\d", section), f"{heading}: a table without a date"
        assert re.search(r"(?i)commit[:\s]*`?[0-9a-f]{7,40}", section), f"{heading}: a table without a commit"
        assert re.search(r"(?i)VM|machine|H100|H200|core", section), f"{heading}: a table without a machine"
        assert re.search(r"python bench/|feedbackgen |make |Reproduce", section), f"{heading}: a table without a command"
