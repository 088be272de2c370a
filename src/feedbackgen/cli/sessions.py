"""`feedbackgen simulate --session`: simulated users browse recommenders page by page and leave.

The options live on `simulate` (cli/simulate.py); this module runs them. Heavy imports stay inside
the function, as in the other command modules, so `feedbackgen --help` stays quick.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from feedbackgen.cli.app import err
from feedbackgen.errors import FeedbackgenError


def run_sessions(generator: Any, choice: Any, dataset: Any, named: dict[str, Path], live: list[Path],
                 settings: dict[str, Any], out: Path | None, *, write: bool = True,
                 calibration_pairs: int | None = None, name: str | None = None,
                 mapping: dict[str, str] | None = None, check_ids: bool = True) -> None:
    """Run the sessions of every RECS file and live recommender, print summary.md, write `out`."""
    from feedbackgen.recommend.choice import load_choice
    from feedbackgen.recommend.sessions import sessions

    if choice is None:
        raise FeedbackgenError("--session needs a choice model (--choice DIR): P(engage) comes from it")
    live_models = {}
    for folder in live:
        label = folder.name if folder.name not in named and folder.name not in live_models else str(folder)
        live_models[label] = load_choice(folder)
    t0 = time.time()
    result = sessions(generator, dataset, named, live=live_models, choice=choice, config=settings, write=write,
                      calibration_pairs=calibration_pairs, name=name, mapping=mapping, check_ids=check_ids,
                      progress=lambda line: err.print(f"[dim]{line}[/dim]"))
    print(result.markdown())
    if out is not None:
        result.save(out)
        err.print(f"[green]wrote[/green] {out}/summary.md, summary.json, sessions.parquet, sessions_users.parquet "
                  f"in {time.time() - t0:.1f}s")
