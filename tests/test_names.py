"""No two modules and no two public functions or classes of the package share a name.

A name that says what it holds is one a reader can grep for: two `runtimes.py` force
`import ... as rb`, two `build_model`s make a traceback ambiguous. Packages (`__init__.py`) and
the entry points that repeat by protocol are the only exceptions.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ptxseg"
REPEAT_BY_PROTOCOL = {"__init__.py", "__main__.py"}  # module basenames
SHARED_NAMES = {"main"}  # public names every entry point may use


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def duplicated_module_names(paths: list[Path], root: Path = PACKAGE) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        if path.name not in REPEAT_BY_PROTOCOL:
            seen[path.name].append(path.relative_to(root).as_posix())
    return {name: where for name, where in seen.items() if len(where) > 1}


def duplicated_public_names(paths: list[Path], root: Path = PACKAGE) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        for node in ast.parse(path.read_text()).body:
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            public = isinstance(node, kinds) and not node.name.startswith("_")
            if public and node.name not in SHARED_NAMES:
                seen[node.name].append(path.relative_to(root).as_posix())
    return {name: where for name, where in seen.items() if len(where) > 1}


def test_no_two_modules_share_a_name():
    assert duplicated_module_names(_modules()) == {}


def test_no_two_public_functions_or_classes_share_a_name():
    assert duplicated_public_names(_modules()) == {}


def test_the_checks_find_a_repeated_name(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "runtimes.py").write_text("def build_model():\n    pass\n")
    paths = sorted(tmp_path.rglob("*.py"))
    expected = {"runtimes.py": ["a/runtimes.py", "b/runtimes.py"]}
    assert duplicated_module_names(paths, tmp_path) == expected
    assert list(duplicated_public_names(paths, tmp_path)) == ["build_model"]
