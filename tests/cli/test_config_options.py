"""`train` and `cv` options come from the config dataclasses: every option-field key is a flag
with its help, and the given flags become exactly their config keys."""

from pathlib import Path

import pytest
import typer

from ptxseg.cli import app, main
from ptxseg.cli.config_options import config_options, config_overrides, parse_set
from ptxseg.config import TrainConfig, valid_keys


def _command(name):
    return typer.main.get_command(app).commands[name]


def test_every_option_field_is_a_train_flag_with_its_help():
    params = {p.name: p for p in _command("train").params}
    options = config_options()
    assert len(options) == 35 and {o.key for o in options} <= set(valid_keys(TrainConfig()))
    for option in options:
        param = params[option.name]
        assert option.flag in param.opts and param.help == option.help and param.default is None
    assert params["progress"].secondary_opts == ["--no-progress"]


def test_field_checks_hold_on_the_command_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "work", "--batch-size", "0", "--out", "runs/x"])
    assert exit_info.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_cv_sets_data_out_fold_and_resume_itself():
    names = {p.name for p in _command("cv").params}
    assert {"encoder", "average_top", "set_", "config", "folds_to_run"} <= names
    assert "fold" not in names and "resume" not in names


def test_given_options_and_set_items_become_config_keys():
    params = {o.name: None for o in config_options()}
    params.update(data=Path("work"), lr=0.01, progress=False, aux_head=True)
    assert config_overrides(params, ["optim.lr_factor=0.3"]) == {
        "data.work": "work",
        "model.aux_head": True,
        "optim.lr": 0.01,
        "trainer.progress_bar": False,
        "optim.lr_factor": "0.3",
    }


def test_a_set_item_without_a_value_is_a_usage_error():
    with pytest.raises(typer.Exit):
        parse_set(["optim.lr"])
