"""Config layers (defaults, presets, overrides), type checks, unknown keys and the saved YAML."""

import pytest
import yaml

from ptxseg.config import (
    TrainConfig,
    apply_overrides,
    load_config,
    preset_names,
    save_config,
    valid_keys,
)


def test_shipped_presets_load():
    assert {"study", "demo"} <= set(preset_names())
    study = load_config("study")
    assert (study.data.size, study.data.aug, study.model.encoder) == (256, "full", "resnet50")
    assert (study.loss.dice_weight, study.loss.bce_weight) == (1.0, 1.0)
    assert study.optim.scheduler == "plateau"
    demo = load_config("demo")
    assert demo.data.size == 64 and demo.model.encoder_weights == "none"


def test_overrides_win_over_preset_and_strings_are_typed():
    config = load_config(
        "study",
        {
            "model.encoder": "xception",
            "optim.lr": "3e-4",
            "trainer.epochs": "7",
            "model.aux_head": "true",
            "model.decoder_attention": "scse",
            "data.positive_fraction": "none",
        },
    )
    assert config.model.encoder == "xception"
    assert config.optim.lr == 3e-4 and isinstance(config.optim.lr, float)
    assert config.trainer.epochs == 7 and config.model.aux_head is True
    assert config.model.decoder_attention == "scse" and config.data.positive_fraction is None
    assert config.data.size == 256  # untouched preset value


def test_overrides_do_not_mutate_the_input():
    base = TrainConfig()
    apply_overrides(base, {"optim.lr": 0.5})
    assert base.optim.lr == TrainConfig().optim.lr


def test_encoder_weights_none_stays_a_string():
    assert load_config(overrides={"model.encoder_weights": "none"}).model.encoder_weights == "none"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("optim.lrr", "valid keys in section 'optim' are lr, weight_decay"),
        ("optimiser.lr", "section among data, model, loss, optim, trainer"),
        ("lr", "expected 'section.key'"),
    ],
)
def test_unknown_keys_name_the_key_and_the_valid_ones(key, message):
    with pytest.raises(ValueError, match=f"unknown config key '{key}'") as info:
        load_config(overrides={key: 1})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optim.scheduler", "step", "expected plateau or cosine"),
        ("data.size", 100, "multiple of 32"),
        ("trainer.precision", "64", "expected auto, 32, bf16-mixed, 16-mixed"),
        ("trainer.epochs", "many", "expects int"),
        ("data.positive_fraction", 1.5, "between 0 and 1"),
        ("model.decoder_attention", "cbam", "null or scse"),
    ],
)
def test_bad_values_are_rejected(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides={key: value})


def test_yaml_file_errors_name_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lr: 0.01\n  momentum: 0.9\n")
    with pytest.raises(ValueError, match=r"mine\.yaml.*'optim\.momentum'"):
        load_config(path)
    with pytest.raises(ValueError, match="neither a file nor a shipped preset"):
        load_config(tmp_path / "absent.yaml")


def test_saved_config_round_trips(tmp_path):
    config = load_config("demo", {"optim.lr": 0.02, "model.mean": [0.5, 0.5, 0.5]})
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == 0.02
    assert load_config(path) == config
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_valid_keys_lists_every_section():
    keys = valid_keys()
    assert "data.work" in keys and "trainer.resume" in keys and "loss.focal_weight" in keys


def test_cli_reports_unknown_set_key(capsys):
    from ptxseg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "w", "--out", "r", "--set", "optim.lrr=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "lr_patience" in err
