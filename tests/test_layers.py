"""The packages are layers that import one way: no module imports a higher layer, not even inside a
function (docs/layout.md). Every module under src/feedbackgen is parsed with `ast`; each import of
`feedbackgen.*` (top-level, inside functions, under TYPE_CHECKING, relative) is mapped to its
package and checked against the order below."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "feedbackgen"

# Bottom to top. Modules of one layer may import each other; a package not named here fails the
# test, so a new package has to be given its place.
LAYERS: list[tuple[str, ...]] = [
    # shared vocabulary, settings, atomic files, tables and numbers, what "collapsed" means
    ("types", "errors", "config", "io", "tables", "collapse"),
    ("pretrained", "embeddings"),          # pretrained resources (downloads, sentence vectors)
    ("data",),
    ("features",),
    ("decoding",),                         # knows nothing of generators
    ("models",),
    ("evaluation",),                       # scores texts; never imports models (below)
    ("recommend",),
    ("env",),
    ("batch",),
    ("serve",),
    ("cli",),
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# Pairs that the order alone would allow but that stay apart.
FORBIDDEN = {("evaluation", "models")}
# The root package is the facade (`feedbackgen.load` loads whatever a folder holds, so it may import
# any layer); the rest of the code may take only its version string from it.
ROOT_NAMES_ALLOWED = {"__version__"}


def _unit(path: Path, src: Path) -> str:
    """The layer unit of a source file: its top-level package, or its top-level module's name."""
    rel = path.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module_name(path: Path, src: Path) -> list[str]:
    rel = path.relative_to(src).with_suffix("")
    parts = ["feedbackgen", *rel.parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(path: Path, src: Path = SRC) -> list[tuple[int, str, list[str]]]:
    """(line, imported feedbackgen module, names taken from it) for every import in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, src)
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "feedbackgen"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "feedbackgen":
                out.append((node.lineno, module, [a.name for a in node.names]))
    return out


def _target_units(module: str, names: list[str], src: Path) -> list[str | None]:
    """The layer units an import reaches: `feedbackgen.X...` reaches X; `from feedbackgen import X`
    reaches each X; None stands for the root package itself."""
    parts = module.split(".")
    if len(parts) > 1:
        return [parts[1]]
    if not names:
        return [None]
    return [None if n in ROOT_NAMES_ALLOWED or not ((src / n).is_dir() or (src / f"{n}.py").exists()) else n
            for n in names]


def violations(src: Path = SRC) -> list[str]:
    """One line per import of a higher layer (or of a forbidden one) under `src`."""
    found = []
    for path in sorted(src.rglob("*.py")):
        if path == src / "__init__.py":
            continue  # the facade
        unit = _unit(path, src)
        where = path.relative_to(src.parent)
        if unit not in RANK:
            found.append(f"{where}: package {unit!r} has no layer in tests/test_layers.py LAYERS")
            continue
        for line, module, names in imports_of(path, src):
            for target in _target_units(module, names, src):
                if target is None:
                    if not set(names) <= ROOT_NAMES_ALLOWED:
                        found.append(f"{where}:{line}: imports the root package ({module}: {names})")
                    continue
                if target not in RANK:
                    found.append(f"{where}:{line}: imports {module}, which has no layer")
                elif RANK[target] > RANK[unit] or (unit, target) in FORBIDDEN:
                    found.append(f"{where}:{line}: {unit} imports {module} ({target} may not be imported "
                                 f"from {unit})")
    return found


def test_no_module_imports_a_higher_layer():
    assert violations() == []


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    # a fake tree with one violation of each kind the checker must catch
    root = tmp_path / "feedbackgen"
    (root / "models").mkdir(parents=True)
    (root / "evaluation").mkdir()
    (root / "__init__.py").write_text("")
    (root / "types.py").write_text("def f():\n    from feedbackgen.cli import app\n")
    (root / "models" / "__init__.py").write_text("from ..batch import jobs\n")
    (root / "evaluation" / "__init__.py").write_text("import feedbackgen.models.base\n")
    (root / "evaluation" / "ok.py").write_text("from . import __init__\nfrom feedbackgen import __version__\n")
    found = violations(root)
    assert len(found) == 3, found
    assert any("types.py:2" in f and "feedbackgen.cli" in f for f in found)
    assert any("models/__init__.py:1" in f and "feedbackgen.batch" in f for f in found)
    assert any("evaluation/__init__.py:1" in f and "feedbackgen.models.base" in f for f in found)
