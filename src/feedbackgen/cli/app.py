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
from typer.exceptions import TyperException

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


def _did_you_mean(e: Exception) -> None:
    """Click's own wording for a mistyped option ("Did you mean --no-reviews?"), which the click
    Typer vendors words as "(Possible options: ...)". The closest option only: difflib lists the
    matches best first, and `--fromat` means `--format`, not `--map` or `--out`."""
    possibilities = getattr(e, "possibilities", None)
    if possibilities:
        e.message = f"{e.message}. Did you mean {possibilities[0]}?"
        e.possibilities = None


def main() -> None:
    """Run the command line; every failure exits non-zero with one line, success exits 0."""
    warnings.showwarning = _one_line_warning
    sys.exit(_run())


def _run(args: list[str] | None = None) -> int:
    """The exit status of one command (`args`, default the process's): 0 only when it finished;
    1 for an error, 2 for bad usage (click's convention), 130 when interrupted."""
    try:
        rv = app(args=args, prog_name="feedbackgen", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as e:  # raise typer.Exit(code) inside a command
        return e.exit_code
    except (click.exceptions.Abort, typer.Abort):
        err.print("aborted")
        return 130
    except (click.ClickException, TyperException) as e:  # Typer >= 0.22 vendors its own click
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare command group: its help
            e.show()
            return e.exit_code or 2
        _did_you_mean(e)
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err.print(f"error: {e.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        return e.exit_code or 1
    except FeedbackgenError as e:
        # soft_wrap: one line however narrow the terminal (rich wraps at 80 columns when piped)
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume where a resumable step stopped")
        return 130
    except Exception as e:  # anything unforeseen still ends in one line, unless asked for more
        if os.environ.get("FEEDBACKGEN_DEBUG"):
            raise
        err.print(f"[red]error:[/red] {type(e).__name__}: {e} (set FEEDBACKGEN_DEBUG=1 for the traceback)",
                  highlight=False, soft_wrap=True)
        return 1
    # standalone_mode=False hands back what the command returned, or the code of a ctx.exit(code)
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
