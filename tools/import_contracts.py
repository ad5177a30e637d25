"""An import-linter contract of ptxseg's own: no module imports another module's private names.

`from ptxseg.x import _helper` couples two modules through a name that its owner may change at
will; the owner should make it public or the caller should use what is public. Dunder names
(`__version__`) are public. Registered in pyproject's `[tool.importlinter]` as `private_names`.
"""

from __future__ import annotations

import ast
import importlib.util

import grimp
from importlinter.application import output
from importlinter.domain.contract import Contract, ContractCheck


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(importer: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module name of a (possibly relative) `from ... import` statement."""
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(module: str, root: str) -> list[tuple[int, str, str]]:
    """(line, imported module, name) of every private name `module` imports from another one."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return []
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=spec.origin)
    is_package = spec.origin.endswith("__init__.py")
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = _resolve(module, node, is_package)
        if source != root and not source.startswith(root + "."):
            continue
        if source == module:
            continue
        for alias in node.names:
            if _is_private(alias.name):
                found.append((node.lineno, source, alias.name))
    return found


class PrivateNamesContract(Contract):
    """No module of the root package imports a private name (`_x`) from another module."""

    type_name = "private_names"

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        roots = {m.split(".")[0] for m in graph.modules}
        found = []
        for module in sorted(graph.modules):
            for root in roots:
                if module == root or module.startswith(root + "."):
                    found += [(module, *item) for item in private_imports(module, root)]
        return ContractCheck(kept=not found, warnings=[], metadata={"imports": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        output.print_error("Private names imported from another module:", bold=False)
        output.new_line()
        for module, line, source, name in check.metadata["imports"]:
            output.print_error(f"- {module} (l.{line}) imports {source}.{name}", bold=False)
        output.new_line()
        output.print("Make the name public in its module, or use what that module offers.")
