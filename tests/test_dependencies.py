"""Every third-party package that ptxseg imports is declared in pyproject.toml, and nothing
declared goes unused: a fresh install must get what the code needs."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# Declared for what they do without being imported by name: Lightning's TensorBoard logger,
# pydicom's JPEG plugins, the browser test and FastAPI's upload parsing.
USED_INDIRECTLY = {
    "tensorboard",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "playwright",
    "python-multipart",
}
DEV_ONLY = {"pytest", "import-linter", "hypothesis", "ruff"}
# The documentation build (mkdocs.yml, tools/mkdocs_hooks.py), not the package.
DOCS_ONLY = {"mkdocs", "mkdocs-material", "mkdocstrings", "tomli"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return {_normalise(re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0]) for s in specs}


def _imported_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "src" / "ptxseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"ptxseg"}


def test_every_imported_package_is_declared():
    owners = packages_distributions()
    missing = {}
    for module in _imported_modules():
        dists = {_normalise(d) for d in owners.get(module, [])}
        if not dists:
            pytest.fail(f"{module} is imported but not installed")
        if not dists & _declared():
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_nothing_declared_goes_unused():
    owners = packages_distributions()
    imported = {_normalise(d) for m in _imported_modules() for d in owners.get(m, [])}
    unused = _declared() - imported - USED_INDIRECTLY - DEV_ONLY - DOCS_ONLY
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"
