"""The Typer application, its consoles and `main`, which turns every error into one line.

The commands live beside this module, one per command group (data, train, generate, evaluate,
recommend, serve, annotate); importing `feedbackgen.cli` registers them all.
"""

from __future__ import annotations

import os
import sys
import warnings

import click
import typer
from rich.console import Console

from feedbackgen.errors import FeedbackgenError, FeedbackgenWarning

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Learn how users write and rate; generate the feedback they would give.")
err = Console(stderr=True)
out = Console()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """feedbackgen's own warnings as one `feedbackgen: warning: ...` line on stderr, without the
    source location Python prints (it names our code, not the user's command); others as usual."""
    if issubclass(category, FeedbackgenWarning):
        text = str(message)
        err.print(f"feedbackgen: {text if 'warning:' in text else 'warning: ' + text}", highlight=False,
                  markup=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main() -> None:
    warnings.showwarning = _one_line_warning
    try:
        app(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except FeedbackgenError as e:
        # soft_wrap: one line however narrow the terminal (rich wraps at 80 columns when piped)
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume where a resumable step stopped")
        sys.exit(130)
    except Exception as e:  # anything unforeseen still ends in one line, unless asked for more
        if os.environ.get("FEEDBACKGEN_DEBUG"):
            raise
        err.print(f"[red]error:[/red] {type(e).__name__}: {e} (set FEEDBACKGEN_DEBUG=1 for the traceback)",
                  highlight=False, soft_wrap=True)
        sys.exit(1)
