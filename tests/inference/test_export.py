"""ONNX export: parity with PyTorch, dynamic batch, metadata that lets the file serve alone."""

import numpy as np
import onnx
import pytest
from predict_helpers import RegionModel, TinyUnet, make_checkpoint

from ptxseg.cli import main
from ptxseg.inference.export import ParityError, export_onnx, parity
from ptxseg.inference.onnx import read_metadata
from ptxseg.inference.predictor import Predictor
from ptxseg.inference.runtimes import onnxruntime_runner
from ptxseg.model.checkpoint import load_model
from ptxseg.model.operating_point import OperatingPoint


def test_export_parity_dynamic_batch_and_metadata(tmp_path):
    model = TinyUnet(operating_point=OperatingPoint(0.7, 0.4, 12, "hflip", 64))
    info = export_onnx(model, tmp_path / "m.onnx")
    assert info["max_probability_difference"] < 1e-4
    assert parity(model, tmp_path / "m.onnx", batch_sizes=(3,)) < 1e-4
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["operating_point"] == {
        "top": 0.7,
        "bottom": 0.4,
        "min_area": 12,
        "tta": "hflip",
        "input_size": 64,
    }
    assert Predictor(tmp_path / "m.onnx", runtime="onnxruntime").tta == "hflip"
    assert meta["input_size"] == 64 and meta["encoder"] == "resnet18"
    run = onnxruntime_runner(tmp_path / "m.onnx")
    assert run(np.zeros((5, 1, 64, 64), np.float32)).shape == (5, 1, 64, 64)
    graph_input = onnx.load(str(tmp_path / "m.onnx")).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_onnx_file_alone_serves_with_the_stored_operating_point(tmp_path):
    model = RegionModel(operating_point=OperatingPoint(0.5, 0.5, 10_000))  # gate never opens
    export_onnx(model, tmp_path / "r.onnx")
    p = Predictor(tmp_path / "r.onnx", runtime="onnxruntime")
    assert p.operating_point.min_area == 10_000
    assert not p.predict(np.zeros((64, 64), np.float32)).mask.any()
    with pytest.raises(ValueError, match="ONNX file"):
        Predictor(tmp_path / "r.onnx", runtime="torch")


def test_parity_failure_is_loud_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr("ptxseg.inference.export.parity", lambda *a, **k: 0.5)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_onnx(TinyUnet(), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_command_on_a_checkpoint(tmp_path):
    ckpt = make_checkpoint(
        tmp_path / "m.ckpt", "efficientnet-b0", 64, {"top": 0.6, "bottom": 0.3, "min_area": 2}
    )
    with pytest.raises(SystemExit) as done:
        main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert done.value.code in (0, None)
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["encoder"] == "efficientnet-b0" and meta["config"]["data"]["size"] == 64


def test_export_safetensors_folder_predicts_like_the_checkpoint(tmp_path):
    ckpt = make_checkpoint(
        tmp_path / "m.ckpt", "resnet18", 64, {"top": 0.6, "bottom": 0.3, "min_area": 2}
    )
    with pytest.raises(SystemExit) as done:
        main(["export", "-c", str(ckpt), "--format", "safetensors", "--out", str(tmp_path / "f")])
    assert done.value.code in (0, None)
    image = np.random.default_rng(0).random((80, 70), np.float32)
    a = Predictor(ckpt).predict(image)
    b = Predictor(tmp_path / "f").predict(image)
    assert np.array_equal(a.probability, b.probability) and np.array_equal(a.mask, b.mask)
    assert load_model(tmp_path / "f").operating_point == OperatingPoint(0.6, 0.3, 2)
    with pytest.raises(SystemExit) as done:
        main(["export", "-c", str(ckpt), "--format", "tflite"])
    assert done.value.code == 2
