"""Ensembles: probabilities are the members' mean, the ensemble file round trip, export, errors."""

import json
import shutil

import numpy as np
import pytest
from siim_folders import fold_member

from ptxseg.cli import main
from ptxseg.inference.ensemble import (
    EnsembleError,
    export_ensemble_folder,
    load_ensemble,
    read_ensemble,
    read_model_operating_point,
    store_model_operating_point,
    write_ensemble,
)
from ptxseg.inference.export import export_onnx
from ptxseg.inference.onnx import read_metadata
from ptxseg.inference.predictor import Predictor
from ptxseg.model.operating_point import OperatingPoint


def member(folder, seed, size=64, fold=None):
    return fold_member(folder, seed, fold, size)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [member(root / f"m{k}", seed=k, fold=k) for k in range(3)]


def inputs(n=3, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_ensemble_probabilities_are_the_mean_of_the_members(members, tta):
    x = inputs()
    alone = [Predictor(m, tta=tta).probabilities(x) for m in members]
    together = Predictor(members, tta=tta).probabilities(x)
    np.testing.assert_allclose(together, np.mean(alone, axis=0), atol=2e-6)
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # the members do differ


def test_ensemble_file_round_trip(members, tmp_path):
    folder = tmp_path / "cv"
    shutil.copytree(members[0].parent, folder)  # members beside the file: m0, m1, m2
    op = OperatingPoint(0.7, 0.4, 12, tta="hflip", input_size=64)
    path = write_ensemble(folder / "ensemble.json", [folder / "m0", folder / "m2"], [0, 2], op)
    data = json.loads(path.read_text())
    assert [m["path"] for m in data["members"]] == ["m0", "m2"]  # relative to the file
    assert data["input_size"] == 64 and data["operating_point"] == op.to_dict()
    moved = tmp_path / "moved"
    folder.rename(moved)  # relative paths: the folder travels as a whole
    spec = read_ensemble(moved)  # the folder holding ensemble.json reads too
    assert spec.members == [moved / "m0", moved / "m2"] and spec.folds == [0, 2]
    assert spec.operating_point == op and read_model_operating_point(moved / "ensemble.json") == op
    predictor = Predictor(moved / "ensemble.json")
    assert predictor.tta == "hflip" and predictor.operating_point == op  # from the file
    assert predictor.model.folds == [0, 2] and predictor.encoder == "resnet18"
    new = OperatingPoint.plain(0.3, tta="none", input_size=64)
    store_model_operating_point(moved, new, {"split": "oof", "competition_dice": 0.8})
    spec = read_ensemble(moved)
    assert spec.operating_point == new and spec.validation["competition_dice"] == 0.8


def test_bad_ensembles_are_clear_errors(members, tmp_path):
    other = member(tmp_path / "big", seed=5, size=96)
    with pytest.raises(EnsembleError, match=r"different input sizes: .*\(64 px\).*\(96 px\)"):
        write_ensemble(tmp_path / "e.json", [members[0], other])
    with pytest.raises(EnsembleError, match="not found"):
        write_ensemble(tmp_path / "e.json", [members[0], tmp_path / "missing"])
    with pytest.raises(EnsembleError, match="ONNX files and other ensembles cannot be members"):
        write_ensemble(tmp_path / "e.json", [members[0], tmp_path / "m.onnx"])
    with pytest.raises(EnsembleError, match="different input sizes"):
        Predictor([members[0], other])
    bad = tmp_path / "bad.json"
    bad.write_text('{"members": []}')
    with pytest.raises(EnsembleError, match="not a ptxseg ensemble file"):
        read_ensemble(bad)
    bad.write_text('{"format": "ptxseg-ensemble", "members": []}')
    with pytest.raises(EnsembleError, match="lists no members"):
        read_ensemble(bad)
    with pytest.raises(FileNotFoundError, match="ensemble.json"):
        read_ensemble(tmp_path / "nothing-here" / "ensemble.json")
    assert not (tmp_path / "e.json").exists()  # nothing half-written


def test_onnx_export_is_one_graph_that_averages_the_members(members, tmp_path):
    ens = write_ensemble(tmp_path / "ensemble.json", members[:2], [0, 1])
    info = export_onnx(load_ensemble(ens), tmp_path / "ens.onnx")
    assert info["max_probability_difference"] < 1e-4
    assert read_metadata(tmp_path / "ens.onnx")["ensemble"]["folds"] == [0, 1]
    x = inputs(2)
    mean = np.mean([Predictor(m, tta="none").probabilities(x) for m in members[:2]], axis=0)
    onnx = Predictor(tmp_path / "ens.onnx", runtime="onnxruntime", tta="none")
    np.testing.assert_allclose(onnx.probabilities(x), mean, atol=1e-4)


def test_safetensors_export_copies_members_and_file(members, tmp_path):
    op = OperatingPoint.plain(0.45, tta="none", input_size=64)
    ens = write_ensemble(tmp_path / "src" / "ensemble.json", members[:2], [0, 1], op)
    out = export_ensemble_folder(ens, tmp_path / "shipped")
    assert sorted(p.name for p in out.parent.iterdir()) == ["ensemble.json", "member0", "member1"]
    x = inputs(2)
    np.testing.assert_allclose(
        Predictor(out).probabilities(x), Predictor(ens).probabilities(x), atol=1e-6
    )
    assert read_model_operating_point(out) == op


def test_grad_cam_of_an_ensemble(members):
    heat = Predictor(members[:2], tta="none").explain(np.random.default_rng(0).random((80, 90)))
    assert heat.shape == (80, 90) and heat.min() >= 0 and heat.max() <= 1


def test_cli_ensemble_then_predict_with_one_path(members, tmp_path, capsys):
    out = tmp_path / "ens.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["ensemble", *map(str, members[:2]), "--out", str(out), "--threshold", "0.6"])
    assert exit_info.value.code == 0
    assert read_model_operating_point(out) == OperatingPoint.plain(0.6)
    image = (np.random.default_rng(1).random((70, 70)) * 255).astype(np.uint8)
    import cv2

    cv2.imwrite(str(tmp_path / "x.png"), image)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path / "x.png"), "-c", str(out), "-o", str(tmp_path / "pred")])
    assert exit_info.value.code == 0
    findings = json.loads((tmp_path / "pred" / "findings" / "x.json").read_text())
    assert findings["operating_point"]["top"] == 0.6
    # several --checkpoint options are an ensemble too
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                str(tmp_path / "x.png"),
                "-c",
                str(members[0]),
                "-c",
                str(members[1]),
                "-o",
                str(tmp_path / "pred2"),
            ]
        )
    assert exit_info.value.code == 0
    assert (tmp_path / "pred2" / "masks" / "x.png").is_file()
