"""The `feedbackgen` command: one sub-command per arrow of the flow in DESIGN.md.

`app.py` holds the Typer app and `main`; each other module is one command group. Importing them
here, in the order of the flow, registers their commands and sets the order `--help` lists them.

The one place where imports stay inside functions on purpose: a command imports what it runs when
it runs. At the top of these modules, `models`, `recommend`, `batch` and `serve` would load torch
(5-10 s) and `data`/`evaluation` polars and numpy (`feedbackgen --help` 1.1 s -> 2.1 s on the
2-core VM) for every command, `--help` included. The rest of the package imports at the top.
"""

from feedbackgen.cli import data, train, generate, evaluate, recommend, simulate, serve, annotate  # noqa: F401, I001
from feedbackgen.cli.app import app, main

__all__ = ["app", "main"]
