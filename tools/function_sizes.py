"""Function sizes of the package: the functions over 60 lines and those with more than 8
parameters, and the figures the architecture keeps an eye on (lines of `cli/`, the largest file,
the longest function, the most parameters).

Lines are `end_lineno - lineno + 1` (decorators not counted); parameters are every argument,
keyword-only and `*args`/`**kwargs` included, `self`/`cls` not. The typer commands in `cli/`
are exempt: their parameters are the command's option list. A command is a function under
`cli/` decorated with `app.command`/`guarded(...)`, or registered as
`app.command(...)(guarded(...)(function))`.

    python tools/function_sizes.py [src/ptxseg] [--check]

With `--check` it exits 1 when a function is past a limit.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 60
MAX_PARAMS = 8


@dataclass(frozen=True)
class Function:
    file: str
    line: int
    name: str
    lines: int
    params: int
    command: bool

    def where(self) -> str:
        return f"{self.file}:{self.line} {self.name}"


def _call_name(node: ast.AST) -> str:
    """`app.command` for `app.command(...)` or `app.command`; `guarded` for `guarded(...)`."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr if not isinstance(node.value, ast.Name) else f"{node.value.id}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _is_command_decorator(node: ast.AST) -> bool:
    name = _call_name(node)
    return name == "guarded" or name.endswith(".command") or name == "command"


def registered_commands(tree: ast.AST) -> set[str]:
    """Names passed to `guarded(...)(name)` or `app.command(...)(name)`."""
    names = set()
    for node in ast.walk(tree):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Call)
        if call and _is_command_decorator(node.func):
            names |= {a.id for a in node.args if isinstance(a, ast.Name)}
    return names


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    count = len(positional) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    if positional and positional[0].arg in ("self", "cls"):
        count -= 1
    return count


def functions(root: Path) -> list[Function]:
    """Every function and method under `root`, with its size and whether it is a command."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(), filename=str(path))
        in_cli = rel.parts[0] == "cli"
        registered = registered_commands(tree) if in_cli else set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            command = in_cli and (
                node.name in registered or any(map(_is_command_decorator, node.decorator_list))
            )
            lines = node.end_lineno - node.lineno + 1
            found.append(Function(str(rel), node.lineno, node.name, lines, _params(node), command))
    return found


def report(root: Path) -> tuple[list[str], int]:
    """The printed lines and the number of functions past a limit."""
    every = functions(root)
    library = [f for f in every if not f.command]
    long = sorted((f for f in library if f.lines > MAX_LINES), key=lambda f: -f.lines)
    wide = sorted((f for f in library if f.params > MAX_PARAMS), key=lambda f: -f.params)
    out = [f"Functions over {MAX_LINES} lines ({len(long)}):"]
    out += [f"  {f.lines:4d} lines  {f.where()}" for f in long]
    out += [f"Functions with more than {MAX_PARAMS} parameters ({len(wide)}):"]
    out += [f"  {f.params:4d} params {f.where()}" for f in wide]
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    cli = sum(n for name, n in sizes.items() if Path(name).parts[0] == "cli")
    largest = max(sizes.items(), key=lambda item: item[1], default=("-", 0))
    out.append(f"cli/ lines: {cli}")
    out.append(f"largest file: {largest[0]} ({largest[1]} lines)")
    if library:
        longest = max(library, key=lambda f: f.lines)
        widest = max(library, key=lambda f: f.params)
        out.append(f"longest function: {longest.where()} ({longest.lines} lines)")
        out.append(f"most parameters: {widest.where()} ({widest.params})")
    out.append(f"commands exempt: {sum(f.command for f in every)}")
    return out, len({f.where() for f in [*long, *wide]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="src/ptxseg", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 past the limits")
    args = parser.parse_args(argv)
    lines, over = report(args.root)
    print("\n".join(lines))
    if args.check and over:
        print(f"{over} function(s) past the limits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
