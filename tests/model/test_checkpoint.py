"""Checkpoints and inference-model folders: one loader, weights_only, clear errors, round trips."""

import pickle

import numpy as np
import pytest
import torch
from predict_helpers import make_checkpoint

from ptxseg.model.checkpoint import (
    CheckpointError,
    export_inference_model,
    is_model_folder,
    load_model,
    read_info,
    read_operating_point,
    store_operating_point,
)
from ptxseg.model.operating_point import OperatingPoint


def _write_ckpt(path):
    ckpt = {
        "state_dict": {"w": torch.ones(2)},
        "ptxseg": {"config": {"encoder": "resnet50"}, "operating_point": None},
    }
    torch.save(ckpt, path)


def test_store_and_read_operating_point(tmp_path):
    path = tmp_path / "model.ckpt"
    _write_ckpt(path)
    assert read_operating_point(path) is None
    op = OperatingPoint(top=0.8, bottom=0.35, min_area=64)
    store_operating_point(path, op, metrics={"dice_per_image": np.float64(0.81), "split": "val"})
    assert read_operating_point(path) == op
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["ptxseg"]["validation"] == {"dice_per_image": 0.81, "split": "val"}
    assert ckpt["ptxseg"]["config"] == {"encoder": "resnet50"}
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # no temporary left


def test_store_operating_point_errors_leave_file_untouched(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    before = other.read_bytes()
    with pytest.raises(ValueError, match="no 'ptxseg' entry"):
        store_operating_point(other, OperatingPoint())
    assert other.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        read_operating_point(tmp_path / "missing.ckpt")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_checkpoint_that_would_run_code_is_refused_without_torch_advice(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"ptxseg": {}, "state_dict": {}, "x": _RunsCode()}, f)
    with pytest.raises(CheckpointError) as error:
        read_info(path)
    assert "evil.ckpt" in str(error.value) and "weights_only" not in str(error.value)
    assert "ran code" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken"])
def test_unreadable_files_get_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.ckpt"):
        load_model(path)


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="without ptxseg.json"):
        load_model(tmp_path)
    (tmp_path / "ptxseg.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a ptxseg model description"):
        load_model(tmp_path)


def test_inference_model_folder_round_trip(tmp_path):
    op = {"top": 0.6, "bottom": 0.3, "min_area": 2, "tta": "hflip", "input_size": 64}
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64, op)
    folder = export_inference_model(ckpt, tmp_path / "model")
    assert is_model_folder(folder) and not is_model_folder(tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "ptxseg.json"]
    a, b = load_model(ckpt), load_model(folder)
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    assert b.operating_point == OperatingPoint.from_dict(op) == read_operating_point(folder)
    assert read_info(folder)["source"]["checkpoint"] == "m.ckpt"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < ckpt.stat().st_size * 1.1
    # smp's own loader reads the bare U-Net from the same folder
    import segmentation_models_pytorch as smp

    net = smp.from_pretrained(str(folder))
    with torch.inference_mode():
        assert torch.equal(net((x - b.mean) / b.std), b(x))
    # the operating point is stored into the folder like into a checkpoint
    store_operating_point(folder, OperatingPoint.plain(0.4), metrics={"d": np.float32(0.5)})
    assert read_operating_point(folder) == OperatingPoint.plain(0.4)
    assert read_info(folder)["validation"] == {"d": 0.5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_folder_whose_weights_do_not_fit_is_named(tmp_path):
    folder = export_inference_model(
        make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64), tmp_path / "f"
    )
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(folder)


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt not found"):
        load_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="cannot read checkpoint .*bad.ckpt"):
        load_model(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.ckpt has no 'ptxseg' entry"):
        load_model(foreign)


def test_checkpoint_errors_do_not_advise_an_unsafe_load(tmp_path):
    """torch advises `weights_only=False` (which runs the file's code); ptxseg does not."""
    import numpy as np

    with_object = tmp_path / "object.ckpt"
    torch.save({"state_dict": {}, "ptxseg": {}, "extra": np.zeros(3)}, with_object)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path, reason in ((with_object, "holds a Python object"), (garbage, "not a PyTorch")):
        with pytest.raises(ValueError) as info:
            load_model(path)
        text = str(info.value)
        assert path.name in text and reason in text, text
        assert "weights_only" not in text and "\n" not in text


@pytest.mark.parametrize("encoder", ["resnet50", "efficientnet-b0", "xception"])
def test_models_load_without_initialising_and_give_the_saved_outputs(tmp_path, encoder):
    """load_model builds the network on the meta device and takes the file's tensors: nothing
    is left uninitialised, and the outputs are those of the model that was saved."""
    from ptxseg.config import TrainConfig
    from ptxseg.model.unet import build_model

    ckpt = make_checkpoint(tmp_path / "m.ckpt", encoder, 64)
    loaded = load_model(ckpt)
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    reference = build_model(TrainConfig.from_dict(loaded.config), load_weights=False)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    reference.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference.eval()(x))
