"""The error hierarchy: every exception the project defines or raises is a FeedbackgenError; DataError
and ConfigError are ValueErrors too; the command line exits non-zero on every failure."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from feedbackgen.cli.app import _run
from feedbackgen.errors import ConfigError, DataError, FeedbackgenError, RecordProblem
from feedbackgen.types import FeedbackRequest

SRC = Path(__file__).resolve().parents[1] / "src" / "feedbackgen"
BUILTIN_ERRORS = {name for name in dir(builtins)
                  if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), BaseException)}
# Raised on purpose: the module __getattr__ protocol, code that cannot run, an abstract method.
RAISED_BUILTINS_ALLOWED = {"AttributeError", "AssertionError", "NotImplementedError"}


def _trees():
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC.parent), ast.parse(path.read_text())


def _name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def test_every_exception_class_derives_from_feedbackgen_error():
    classes = [(where, node) for where, tree in _trees() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    ours = {"FeedbackgenError"}  # and, to a fixed point, every class with one of ours as a base
    while True:
        more = {node.name for _, node in classes if any(_name(b) in ours for b in node.bases)} - ours
        if not more:
            break
        ours |= more
    outside = [f"{where}:{node.lineno} {node.name}({', '.join(_name(b) for b in node.bases)})"
               for where, node in classes if node.name != "FeedbackgenError"
               and any(_name(b) in BUILTIN_ERRORS and not _name(b).endswith("Warning") for b in node.bases)
               and not any(_name(b) in ours for b in node.bases)]
    assert outside == []


def _in_pydantic_validators(tree: ast.AST) -> set[int]:
    """Lines of the raises inside pydantic validators: pydantic turns their ValueError into its own
    ValidationError, which names the field (and `config.validate` into a ConfigError)."""
    return {node.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and any(_name(d.func if isinstance(d, ast.Call) else d).endswith("validator") for d in f.decorator_list)
            for node in ast.walk(f) if isinstance(node, ast.Raise)}


def test_no_builtin_exception_is_raised_for_what_a_user_can_get_wrong():
    raised = []
    for where, tree in _trees():
        exempt = _in_pydantic_validators(tree)
        raised += [f"{where}:{node.lineno} raise {_name(node.exc.func)}" for node in ast.walk(tree)
                   if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.lineno not in exempt
                   and _name(node.exc.func) in BUILTIN_ERRORS - RAISED_BUILTINS_ALLOWED]
    assert raised == []


def test_data_and_config_errors_are_value_errors_and_record_problems_are_not():
    # a caller's `except ValueError` around a value it handed over keeps catching them ...
    with pytest.raises(ValueError, match="non-empty string"):
        FeedbackRequest("", "item")
    with pytest.raises(DataError):
        FeedbackRequest.from_dict({"user_id": "u"})
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, FeedbackgenError)
    # ... but a reader's per-record signal passes through a parser's `except ValueError`
    with pytest.raises(RecordProblem):
        try:
            raise RecordProblem("rating", "missing")
        except ValueError:
            pass


@pytest.mark.parametrize("args", [
    ["generate", "--model", "/nonexistent/model", "--dataset", "/nonexistent/data", "--out", "/tmp/x.jsonl"],
    ["evaluate", "--no-such-option"],
    ["no-such-command"],
])
def test_every_failure_exits_non_zero(args, capsys):
    assert _run(args) != 0
