"""The command line as a person at an 80-column terminal meets it."""

import pytest
from typer.testing import CliRunner

from feedbackgen.cli import app

COMMANDS = [["prepare"], ["train"], ["generate"], ["evaluate"], ["metrics"], ["report"], ["models"],
            ["recommend"], ["simulate"], ["fidelity"], ["serve"], ["api-key"], ["annotate", "create"],
            ["annotate", "serve"], ["annotate", "report"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_fits_80_columns_and_cuts_no_option_name(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output  # rich's help table cut option names ("--naturalness-m…")
    for param in next(c for c in _commands(command)).params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("--"):
                assert opt in result.output, opt


def _commands(path: list[str]):
    import typer.main

    group = typer.main.get_command(app)
    for name in path:
        group = group.commands[name]
    yield group
