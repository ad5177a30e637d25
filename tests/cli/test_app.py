"""Exit codes shared by every command: 0 done, 1 some inputs failed, 2 usage error, 3 a bug."""

import pytest

from ptxseg.cli import app, main
from ptxseg.cli.app import EXIT_INPUTS_FAILED, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE


def test_the_codes():
    assert (EXIT_OK, EXIT_INPUTS_FAILED, EXIT_USAGE, EXIT_INTERNAL) == (0, 1, 2, 3)


def test_an_unexpected_error_is_exit_code_3_with_its_traceback(tmp_path, monkeypatch, capsys):
    import ptxseg.reporting.html_report as html

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {encoder: resnet18}\n")
    (run / "metrics.csv").write_text("epoch\n0\n")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the report writer")

    monkeypatch.setattr(html, "write_html_report", broken)
    with pytest.raises(SystemExit) as done:
        main(["report", str(run)])
    assert done.value.code == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug in the report writer" in err


def test_a_usage_error_is_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path / "missing")])
    assert done.value.code == EXIT_USAGE
    assert capsys.readouterr().err.startswith("error: ")


def test_every_command_sits_in_a_panel_of_the_flow():
    import typer

    from ptxseg.cli.app import PANELS

    group = typer.main.get_command(app)
    panels = {name: command.rich_help_panel for name, command in group.commands.items()}
    assert len(panels) >= 23
    assert {name: p for name, p in panels.items() if p not in PANELS} == {}


def test_help_shows_the_panels_in_the_order_of_the_flow():
    from typer.testing import CliRunner

    from ptxseg.cli.app import PANELS

    out = CliRunner().invoke(app, ["--help"], terminal_width=100).output
    titles = [line.split("─ ", 1)[1].split(" ─")[0] for line in out.splitlines() if "╭─ " in line]
    assert titles == ["Options", *PANELS]
    assert (
        out.index(" synth ") < out.index(" prepare ") < out.index(" train ") < out.index(" demo ")
    )


def test_command_help_is_reflowed_for_rich_to_wrap():
    import typer

    from ptxseg.cli.app import reflow

    assert reflow("One line\n  and its rest.\n\nExample: ptxseg x\n  --y 1\n") == (
        "One line and its rest.\n\nExample: ptxseg x --y 1"
    )
    group = typer.main.get_command(app)
    helps = [command.help for command in group.commands.values()]
    assert all(help_ and "\n" not in help_.replace("\n\n", "") for help_ in helps)
