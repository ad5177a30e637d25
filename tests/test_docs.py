"""The docs say what the code does: the layer line is the import contract, the module map names
every module, the README lists the commands as `ptxseg --help` groups them, and the generated
pages (tools/mkdocs_hooks.py) cover every command and subpackage. `make test` also builds the site
with `mkdocs build --strict`, which fails on a broken link or a page left out."""

import re
from pathlib import Path

import typer

from ptxseg.cli import app
from tools import mkdocs_hooks

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "src" / "ptxseg"


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def _module_map() -> str:
    text = (DOCS / "design.md").read_text()
    return text[text.index("## Module map") : text.index("## Contracts")]


def _panels() -> dict[str, list[str]]:
    group = typer.main.get_command(app)
    panels: dict[str, list[str]] = {}
    for name in group.list_commands(None):
        panels.setdefault(group.commands[name].rich_help_panel, []).append(name)
    return panels


def test_the_layer_line_in_the_docs_is_the_import_contract():
    line = mkdocs_hooks.layer_line()
    assert line.startswith("cli > demo > ") and " | util.processes" in line
    assert f"```\n{line}\n```" in (DOCS / "design.md").read_text()
    written = {
        (path.name, text)
        for path in _markdown_files()
        for text in re.findall(r"^cli > .*$", path.read_text(), flags=re.M)
    }
    assert {text for _, text in written} == {line}, written


def test_the_contract_is_named_by_its_layer_line():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = [c["name"] for c in config["contracts"] if c["type"] == "layers"]
    assert names == [f"Layers: {mkdocs_hooks.layer_line()}"]


def test_the_module_map_names_every_module():
    table = _module_map()
    rows = {row.split("|")[1].strip(): row for row in table.splitlines() if row.startswith("| ")}
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py") or relative.parts[0] == "cli":
            continue
        if f"`{relative.as_posix()}`" in table:
            continue
        package_row = next((r for k, r in rows.items() if f"`{relative.parts[0]}/`" in k), "")
        if len(relative.parts) == 2 and f"`{path.name}`" in package_row:
            continue
        missing.append(relative.as_posix())
    assert missing == [], f"add these to the module map in docs/design.md: {missing}"


def test_readme_is_a_landing_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert len(local) > 15
    assert [t for t in local if not (ROOT / t).exists()] == []


def test_readme_lists_the_commands_as_help_groups_them():
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| ([A-Z][^|]+?) \| (`[^|]+`) \|$", text, flags=re.M)
    listed = {panel: re.findall(r"`([^`]+)`", names) for panel, names in rows}
    assert listed == _panels()


def test_the_command_reference_covers_every_command_panel_by_panel():
    page = mkdocs_hooks.command_reference()
    panels = _panels()
    assert re.findall(r"^## (.+)$", page, flags=re.M) == list(panels)
    headings = re.findall(r"^### `ptxseg ([a-z-]+)`$", page, flags=re.M)
    assert headings == [name for names in panels.values() for name in names]
    assert "- `--max-megapixels <float>`:" in page


def test_help_text_is_shown_as_written():
    assert mkdocs_hooks._escaped("OUT/fold<k>/ and *.ckpt, `a_b <c>`") == (
        r"OUT/fold&lt;k&gt;/ and \*.ckpt, `a_b <c>`"
    )
    assert mkdocs_hooks._help_markdown("Does a thing.\n\nExample: ptxseg x --y 1") == (
        "Does a thing.\n\nExample:\n\n```console\n$ ptxseg x --y 1\n```"
    )


def test_the_api_reference_has_a_page_for_every_subpackage():
    sections = mkdocs_hooks.api_sections()
    names = [name for name, _, _ in sections]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(names) == sorted([*(p for p in packages if p != "cli"), "modules"])
    assert names.index("data") < names.index("model") < names.index("inference")  # data up
    assert names.index("inference") < names.index("evaluation") and names[-1] == "modules"
    documented = {m for _, _, modules in sections for m in modules}
    assert "ptxseg.inference.predictor" in documented and "ptxseg.util.schedule" in documented
    assert not any(m.startswith("ptxseg.cli") for m in documented)


def test_generated_api_pages_join_the_section_of_the_api_index():
    nav = [
        {"Home": "index.md"},
        {"Reference": [{"Python API": [mkdocs_hooks.API_INDEX]}, {"Tests": "t.md"}]},
    ]
    assert mkdocs_hooks._add_to_section(nav, ["reference/api/data.md"])
    assert nav[1]["Reference"][0] == {
        "Python API": [mkdocs_hooks.API_INDEX, "reference/api/data.md"]
    }
    assert not mkdocs_hooks._add_to_section([{"Home": "index.md"}], ["x.md"])
