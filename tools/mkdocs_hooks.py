"""MkDocs hooks: the pages that are generated from the code at build time, so they cannot drift.

- `reference/commands.md`: every command of the typer app, panel by panel as `ptxseg --help`
  shows them, with its usage, help, arguments and options (from click's own help records, the
  same text `--help` prints).
- `reference/api/`: one page per subpackage of `ptxseg` (the command layer aside), each module
  rendered by mkdocstrings from its docstrings, bottom layer first as the import-linter contract
  in pyproject.toml orders them; `reference/api/index.md` lists them and the public API.

mkdocs.yml names this file under `hooks:`. The layer helpers are shared with the tests that hold
the docs' layer line against the contract.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "ptxseg"
COMMANDS_PAGE = "reference/commands.md"
COMMANDS_MARKER = "<!-- commands: generated from the typer app -->"
API_DIR = "reference/api"
API_INDEX = f"{API_DIR}/index.md"
API_MARKER = "<!-- api: generated from the package -->"
# Documented elsewhere: the commands in the command reference, `python -m ptxseg`.
NOT_IN_API = ("cli", "__main__")


# ------------------------------------------------------------------------------ layers


def contract_layers(pyproject: Path = ROOT / "pyproject.toml") -> list[list[str]]:
    """The layers of the import-linter contract, top to bottom, each a list of module names
    without the `ptxseg.` prefix (`|` separates independent neighbours)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c.get("type") == "layers"]
    prefix = f"{config['root_package']}."
    return [[name.strip().removeprefix(prefix) for name in row.split("|")] for row in layers]


def layer_line(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """`cli > demo > ... > atomic | progress | ...`: the contract as the docs write it."""
    return " > ".join(" | ".join(row) for row in contract_layers(pyproject))


# ------------------------------------------------------------------------------ commands


def _escaped(text: str) -> str:
    """Help text as Markdown that shows it as written: `code` spans kept, the rest escaped."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = re.sub(r"([*_\[\]|\\])", r"\\\1", html.escape(parts[i], quote=False))
    return "`".join(parts)


def _help_markdown(text: str) -> str:
    """A command's help: its paragraphs, what follows `Example: ` as a console block."""
    out = []
    for paragraph in text.split("\n\n"):
        example = re.search(r"Example( \([^)]*\))?: ", paragraph)
        prose = paragraph[: example.start()] if example else paragraph
        if prose.strip():
            out.append(_escaped(" ".join(prose.split())))
        if example:
            out.append(_escaped(example.group(0).strip()))
            out.append(f"```console\n$ {' '.join(paragraph[example.end() :].split())}\n```")
    return "\n\n".join(out)


def command_reference() -> str:
    """Markdown for every command of `ptxseg`, grouped by help panel in the order of `--help`."""
    import click
    import typer

    sys.path.insert(0, str(SRC))
    from ptxseg.cli import app

    group = typer.main.get_command(app)
    root = click.Context(group, info_name=PACKAGE)
    out = []
    panel = None
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        if command.rich_help_panel != panel:
            panel = command.rich_help_panel
            out.append(f"## {panel}\n")
        ctx = click.Context(command, info_name=name, parent=root)
        out.append(f"### `{PACKAGE} {name}`\n")
        usage = " ".join(command.collect_usage_pieces(ctx))
        out.append(f"```console\n$ {PACKAGE} {name} {usage}\n```\n")
        out.append(_help_markdown(command.help or "") + "\n")
        for kind, title in (("argument", "Arguments"), ("option", "Options")):
            records = [
                p.get_help_record(ctx) for p in command.get_params(ctx) if p.param_type_name == kind
            ]
            records = [r for r in records if r is not None and r[0] != "--help"]
            if records:
                out.append(f"**{title}**\n")
                out.extend(f"- `{names}`: {_escaped(help_)}" for names, help_ in records)
                out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------ API


def _modules(package_dir: Path, dotted: str) -> list[str]:
    """The modules of a package, the package first, then its modules in source-file order."""
    names = [dotted] if (package_dir / "__init__.py").is_file() else []
    for path in sorted(package_dir.glob("*.py")):
        if path.stem != "__init__":
            names.append(f"{dotted}.{path.stem}")
    for sub in sorted(p for p in package_dir.iterdir() if (p / "__init__.py").is_file()):
        names.extend(_modules(sub, f"{dotted}.{sub.name}"))
    return names


def api_sections() -> list[tuple[str, str, list[str]]]:
    """(page name, title, modules) per subpackage, bottom layer first (the data up to the
    reports), then one page for the modules at the package root; the command layer aside."""
    root = SRC / PACKAGE
    order = [name for row in reversed(contract_layers()) for name in row]

    def place(name: str) -> tuple[int, str]:
        return (order.index(name) if name in order else len(order), name)

    packages = sorted((p.name for p in root.iterdir() if (p / "__init__.py").is_file()), key=place)
    modules = sorted(
        (p.stem for p in root.glob("*.py") if p.stem not in ("__init__", "__main__")), key=place
    )
    sections = [
        (name, f"`{PACKAGE}.{name}`", _modules(root / name, f"{PACKAGE}.{name}"))
        for name in packages
        if name not in NOT_IN_API
    ]
    sections.append(("modules", "Modules at the package root", [f"{PACKAGE}.{m}" for m in modules]))
    return sections


def public_api() -> list[str]:
    """Dotted paths of the names `ptxseg` exports at its root (`ptxseg.__all__`)."""
    sys.path.insert(0, str(SRC))
    import ptxseg

    return [
        f"{getattr(ptxseg, name).__module__}.{name}"
        for name in ptxseg.__all__
        if not name.startswith("__")
    ]


def api_pages() -> dict[str, str]:
    """src_uri -> Markdown of each generated API page."""
    pages = {}
    for name, title, modules in api_sections():
        body = "\n\n".join(f"::: {module}" for module in modules)
        pages[f"{API_DIR}/{name}.md"] = f"# {title}\n\n{body}\n"
    return pages


def api_index() -> str:
    """The index's generated part: a link per page, bottom layer first, then the public API."""
    lines = ["## By layer, from the data up", ""]
    for name, title, modules in api_sections():
        shown = [m for m in modules if m != f"{PACKAGE}.{name}"]  # the package's modules
        names = ", ".join(f"`{m.removeprefix(PACKAGE + '.')}`" for m in shown)
        lines.append(f"- [{title}]({name}.md): {names}")
    lines += ["", "## The public API", ""]
    lines += ["Importable from the package root (`from ptxseg import Predictor`):", ""]
    lines += [f"::: {path}\n    options:\n      heading_level: 3\n" for path in public_api()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ MkDocs events


def on_files(files, config):
    """Add the generated API pages to the site, and to the nav section that holds the API index
    (MkDocs builds the nav from the config after this event)."""
    from mkdocs.structure.files import File

    pages = api_pages()
    for src_uri, content in pages.items():
        files.append(File.generated(config, src_uri, content=content))
    if not _add_to_section(config["nav"] or [], list(pages)):
        raise ValueError(f"mkdocs.yml: put {API_INDEX} first in a nav section of its own")
    return files


def _add_to_section(items: list, pages: list[str]) -> bool:
    """Append `pages` to the nav section (a list) whose entries include API_INDEX."""
    for item in items:
        children = next(iter(item.values())) if isinstance(item, dict) else None
        if not isinstance(children, list):
            continue
        entries = [next(iter(c.values())) if isinstance(c, dict) else c for c in children]
        if API_INDEX in entries:
            children.extend(page for page in pages if page not in entries)
            return True
        if _add_to_section(children, pages):
            return True
    return False


def on_page_markdown(markdown, page, config, files):
    """Fill the generated parts of the command reference and the API index."""
    if page.file.src_uri == COMMANDS_PAGE:
        return markdown.replace(COMMANDS_MARKER, command_reference())
    if page.file.src_uri == API_INDEX:
        return markdown.replace(API_MARKER, api_index())
    return markdown
