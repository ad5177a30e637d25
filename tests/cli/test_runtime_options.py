"""`--runtime` / `--precision` as users meet them: auto by default on a CPU, the chosen path in
one line and in run.json and the findings, int8 refused with its numbers, int8 exported only
with a check, and services that take int8 only as such a file. Measurements are faked."""

import json

import cv2
import numpy as np
import pytest
from predict_helpers import make_checkpoint

from ptxseg.cli import main
from ptxseg.inference import choice, int8, runtimes
from ptxseg.inference.choice import Measurement
from ptxseg.inference.onnx import read_metadata
from ptxseg.util.system import CpuInfo

AVX2 = CpuInfo("AMD EPYC (AVX2)", 2, frozenset({"avx2", "fma"}))


@pytest.fixture
def auto_on_avx2(monkeypatch, tmp_path):
    """The commands' own default (auto) on a faked AVX2 CPU, with faked measurements in which
    onnxruntime fp32 is twice as fast as torch fp32."""
    monkeypatch.delenv("PTXSEG_RUNTIME", raising=False)
    monkeypatch.delenv("PTXSEG_PRECISION", raising=False)
    monkeypatch.setenv("PTXSEG_CACHE_DIR", str(tmp_path / "cache"))
    for module in (choice, runtimes, int8):
        monkeypatch.setattr(module, "cpu_info", lambda: AVX2)
    speeds = {("torch", "fp32"): 10.0, ("onnxruntime", "fp32"): 20.0, ("openvino", "fp32"): 15.0,
              ("onnxruntime", "int8"): 25.0, ("openvino", "int8"): 22.0}  # fmt: skip
    calls = []

    def fake(model, paths, reference, check, **kwargs):
        calls.append(check.source)
        return [
            Measurement(
                *p,
                images_per_s=speeds[p],
                dice_vs_fp32=None if p == reference else 1.0,
                memory_mb=50.0,
                reference=p == reference,
            )  # fmt: skip
            for p in ([reference] if reference else []) + [q for q in paths if q != reference]
        ], {}

    monkeypatch.setattr(choice, "measure_paths", fake)
    return calls


def images_in(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i}.png"), (rng.random((80, 80)) * 255).astype(np.uint8))
    return folder


def everything_is_mask(tmp_path):
    """A checkpoint whose operating point keeps every pixel: int8 agrees with fp32 exactly."""
    return make_checkpoint(
        tmp_path / "m.ckpt", "resnet18", 64, {"top": 0.0, "bottom": 0.0, "min_area": 0}
    )


def run(argv):
    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code or 0


def test_predict_chooses_auto_on_a_cpu_and_records_why(auto_on_avx2, tmp_path, capsys):
    ckpt = everything_is_mask(tmp_path)
    inputs = images_in(tmp_path / "in")
    assert run(["predict", str(inputs), "-c", str(ckpt), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "path: onnxruntime fp32: 2.00x torch fp32" in err.replace("\n", " ")
    assert auto_on_avx2 == ["the inputs"]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert (record["runtime"], record["precision"]) == ("auto", "auto")  # as asked
    path = record["inference_path"]
    assert (path["runtime"], path["precision"], path["chosen_by"]) == (
        "onnxruntime",
        "fp32",
        "auto",
    )
    findings = json.loads((tmp_path / "out" / "findings" / "img0.json").read_text())
    assert findings["runtime"] == "onnxruntime" and findings["path_choice"] == path["line"]


def test_an_explicit_path_wins(auto_on_avx2, tmp_path):
    ckpt = everything_is_mask(tmp_path)
    inputs = images_in(tmp_path / "in")
    argv = ["predict", str(inputs), "-c", str(ckpt), "-o", str(tmp_path / "out")]
    assert run([*argv, "--runtime", "torch", "--precision", "fp32"]) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["inference_path"]["line"] == "torch fp32 as asked" and auto_on_avx2 == []


def test_predict_int8_is_checked_or_refused_with_the_measured_number(
    auto_on_avx2, tmp_path, capsys, monkeypatch
):
    ckpt = everything_is_mask(tmp_path)
    inputs = images_in(tmp_path / "in")
    argv = ["predict", str(inputs), "-c", str(ckpt), "--runtime", "onnxruntime"]
    assert run([*argv, "--precision", "int8", "-o", str(tmp_path / "ok")]) == 0
    record = json.loads((tmp_path / "ok" / "run.json").read_text())
    assert (
        "int8 masks at Dice 1.000 vs fp32 on 3 images of the inputs"
        in (record["inference_path"]["line"])
    )
    capsys.readouterr()
    monkeypatch.setattr(int8, "FAITHFUL_DICE", 1.01)  # now no recipe is good enough
    monkeypatch.setattr(int8, "ladder", lambda images: [int8.Recipe("plain int8", images=images)])
    assert run([*argv, "--precision", "int8", "-o", str(tmp_path / "no")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: int8 (7 bits: no VNNI on this CPU) keeps 1.000 of fp32's mask here" in err
    assert "Faithful on this CPU: onnxruntime fp32 keeps 1.000 at 2.00x torch fp32" in err
    masks = tmp_path / "no" / "masks"
    assert not masks.exists() or not any(masks.iterdir())


def test_export_int8_needs_real_images_and_stores_its_check(auto_on_avx2, tmp_path, capsys):
    ckpt = everything_is_mask(tmp_path)
    out = tmp_path / "m.onnx"
    assert run(["export", "-c", str(ckpt), "--out", str(out), "--int8"]) == 1
    assert "give --data WORK" in capsys.readouterr().err
    assert out.is_file() and not (tmp_path / "m.int8.onnx").exists()  # fp32 kept, no int8
    inputs = images_in(tmp_path / "in")
    argv = ["export", "-c", str(ckpt), "--out", str(out), "--int8"]
    assert run([*argv, "--images", str(inputs)]) == 0
    stored = read_metadata(tmp_path / "m.int8.onnx")["int8_check"]
    assert stored["dice_vs_fp32"] == 1.0 and stored["source"] == "the inputs"
    assert "masks at Dice 1.000 vs fp32 on 3 images of the inputs" in capsys.readouterr().out


def test_services_take_int8_only_as_a_checked_file(auto_on_avx2, tmp_path):
    from ptxseg.serving.webapp import ServeSettings, load_app

    ckpt = everything_is_mask(tmp_path)
    with pytest.raises(ValueError, match="take int8 only as a file made by `ptxseg export"):
        load_app(ckpt, runtime="onnxruntime", precision="int8")
    settings = ServeSettings()
    load_app(ckpt, settings, runtime="auto", precision="auto")
    card = settings.model_card["runtime"]
    assert (card["runtime"], card["precision"]) == ("onnxruntime", "fp32")
    assert card["chosen_by"] == "auto"
    assert card["choice"].startswith("onnxruntime fp32: 2.00x torch fp32")
    inputs = images_in(tmp_path / "in")
    assert run(["export", "-c", str(ckpt), "--int8", "--images", str(inputs)]) == 0
    load_app(tmp_path / "m.int8.onnx", settings, runtime="auto", precision="auto")
    card = settings.model_card["runtime"]
    assert (card["runtime"], card["precision"]) == ("onnxruntime", "int8")
    assert "an int8 file (masks at Dice 1.000 vs fp32 when it was made)" in card["choice"]
