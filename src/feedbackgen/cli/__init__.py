"""The `feedbackgen` command: one sub-command per arrow of the flow in DESIGN.md.

`app.py` holds the Typer app and `main`; each other module is one command group. Importing them
here, in the order of the flow, registers their commands and sets the order `--help` lists them.
"""

from feedbackgen.cli import data, train, generate, evaluate, recommend, simulate, serve, annotate  # noqa: F401, I001
from feedbackgen.cli.app import app, main

__all__ = ["app", "main"]
