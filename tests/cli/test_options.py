"""Options shared by several commands refuse the same bad values everywhere, naming the option:
a batch size of 0, a maximum image size that is not a positive finite number."""

from __future__ import annotations

import pytest
import typer

from ptxseg.cli import app, main


def options_named(suffix: str) -> list[tuple]:
    """(command, click command, option) for every option of the app whose name ends so."""
    group = typer.main.get_command(app)
    return [
        (name, command, param)
        for name, command in group.commands.items()
        for param in command.params
        if param.name.endswith(suffix)
    ]


def test_every_batch_size_refuses_zero():
    found = options_named("batch_size")
    assert {"predict", "evaluate", "train", "dicomweb", "listen"} <= {n for n, _, _ in found}
    for name, command, param in found:
        with pytest.raises(typer.BadParameter):
            param.process_value(command.context_class(command), "0")
        assert param.process_value(command.context_class(command), "1") == 1, name


@pytest.mark.parametrize("value", ["nan", "-1", "0"])
def test_every_max_megapixels_refuses_what_is_not_a_positive_number(value):
    found = options_named("max_megapixels")
    assert {"predict", "prepare", "serve"} <= {n for n, _, _ in found}
    for name, command, param in found:
        with pytest.raises(typer.BadParameter) as err:
            param.process_value(command.context_class(command), value)
        assert "--max-megapixels" in err.value.format_message(), name


@pytest.mark.parametrize(
    "argv, option",
    [
        (["predict", "x.dcm", "-c", "m.ckpt", "-o", "out", "--batch-size", "0"], "--batch-size"),
        (["predict", "x.dcm", "-c", "m.ckpt", "-o", "out", "--max-megapixels", "nan"], "mega"),
        (["prepare", "--images", "i", "--annotations", "a", "--out", "o"], None),
    ],
)
def test_the_command_line_names_the_option(tmp_path, capsys, monkeypatch, argv, option):
    monkeypatch.chdir(tmp_path)
    if option is None:
        argv, option = [*argv, "--max-megapixels", "nan"], "--max-megapixels"
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
