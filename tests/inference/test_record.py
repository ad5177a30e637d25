"""A predict folder records what made it: a rerun with another model or setting is refused in
one line, a replaced input is predicted again, and results without a record are not trusted."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil

import pytest
import torch
from predict_helpers import make_checkpoint

from ptxseg.cli import main
from ptxseg.inference import record
from ptxseg.util.path_guard import MADE_BY


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from ptxseg.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("record")
    generate_dataset(root / "siim", n_images=4, size=64, seed=1, positive_fraction=0.5)
    dicoms = sorted((root / "siim").rglob("*.dcm"))
    (root / "scans").mkdir()
    for path in dicoms[:3]:
        shutil.copy(path, root / "scans" / path.name)
    make_checkpoint(root / "m.ckpt", "resnet18", 64)
    other = torch.load(root / "m.ckpt", weights_only=True)
    first = next(iter(other["state_dict"]))
    other["state_dict"][first] = other["state_dict"][first] + 0.01
    torch.save(other, root / "other.ckpt")
    return {"root": root, "scans": root / "scans", "spare": dicoms[3]}


def predict(inputs, out, *extra) -> tuple[int, str]:
    argv = [str(inputs["scans"]), "-c", str(inputs["root"] / "m.ckpt"), "-o", str(out)]
    try:
        main(["predict", *argv, "--workers", "0", *map(str, extra)])
    except SystemExit as done:
        return int(done.code or 0), ""
    return 0, ""


def rows(out) -> list[dict]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def files(out) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


def refused(inputs, out, capsys, *extra) -> str:
    before = files(out)
    capsys.readouterr()
    assert predict(inputs, out, *extra)[0] == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert files(out) == before  # nothing rewritten, the record kept
    return err


def test_a_rerun_with_another_model_or_setting_is_refused_naming_it(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(inputs, out)[0] == 0
    made = json.loads((out / MADE_BY).read_text())
    assert made["command"] == "predict" and made["holds"] == "results"
    assert made["asked"]["tta"] is None and made["resolved"]["tta"] == "none"  # asked, resolved
    assert made["asked"]["threshold"] is None
    assert made["resolved"]["operating_point"]["top"] == 0.5

    err = refused(inputs, out, capsys, "--threshold", "0.9")
    assert "top 0.5 -> 0.9" in err and "--threshold None -> 0.9" in err and "--overwrite" in err
    err = refused(inputs, out, capsys, "-c", inputs["root"] / "other.ckpt")
    assert "model sha256" in err and "new --out" in err
    assert "tta none -> hflip" in refused(inputs, out, capsys, "--tta", "hflip")
    assert "outputs" in refused(inputs, out, capsys, "--seg")
    assert "batch size 4 -> 2" in refused(inputs, out, capsys, "--batch-size", "2")

    # the same settings resume; --overwrite predicts everything again and records the new ones
    capsys.readouterr()
    assert predict(inputs, out, "--workers", "0")[0] == 0
    assert "predicted 0, skipped (already done) 3" in capsys.readouterr().err
    assert predict(inputs, out, "--threshold", "0.9", "--overwrite")[0] == 0
    assert "predicted 3, skipped (already done) 0" in capsys.readouterr().err
    made = json.loads((out / MADE_BY).read_text())
    assert made["asked"]["threshold"] == 0.9 and made["resolved"]["operating_point"]["top"] == 0.9
    assert predict(inputs, out, "--threshold", "0.9")[0] == 0


def test_a_replaced_input_is_predicted_again_a_touched_one_is_not(inputs, tmp_path, capsys):
    scans = tmp_path / "scans"
    shutil.copytree(inputs["scans"], scans)
    local = {**inputs, "scans": scans}
    out = tmp_path / "out"
    assert predict(local, out)[0] == 0
    replaced = sorted(scans.glob("*.dcm"))[0]
    findings = out / "findings" / f"{replaced.stem}.json"
    old = json.loads(findings.read_text())["input"]
    assert old["sha256"] == hashlib.sha256(replaced.read_bytes()).hexdigest()

    os.utime(sorted(scans.glob("*.dcm"))[1], ns=(1, 1))  # touched: same bytes, another mtime
    capsys.readouterr()
    assert predict(local, out)[0] == 0
    assert "predicted 0, skipped (already done) 3" in capsys.readouterr().err

    shutil.copy(inputs["spare"], replaced)  # another image under the same name
    assert predict(local, out)[0] == 0
    err = capsys.readouterr().err
    assert "1 inputs changed since they were predicted" in err
    assert "predicted 1, skipped (already done) 2" in err
    new = json.loads(findings.read_text())["input"]
    assert new["sha256"] == hashlib.sha256(replaced.read_bytes()).hexdigest() != old["sha256"]
    assert [r["status"] for r in rows(out)] == ["ok"] * 3


def test_results_without_a_record_are_not_trusted(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(inputs, out)[0] == 0
    (out / MADE_BY).unlink()  # as a folder that an older ptxseg wrote
    assert "without a record of their settings" in refused(inputs, out, capsys)
    assert predict(inputs, out, "--overwrite")[0] == 0
    assert (out / MADE_BY).is_file()


def test_predict_into_a_folder_inside_its_inputs_twice(inputs, tmp_path, capsys):
    """`predict SCANS -o SCANS/out`, run twice: its masks, overlays, SEGs and SRs are not read
    as chest X-rays the second time."""
    scans = tmp_path / "scans"
    shutil.copytree(inputs["scans"], scans)
    local = {**inputs, "scans": scans}
    out = scans / "out"
    args = ("--outputs", "mask,findings,overlay,seg,sr", "--threshold", "0.2")
    assert predict(local, out, *args)[0] == 0
    first = rows(out)
    assert list((out / "sr").glob("*.dcm"))  # DICOM outputs beside the inputs
    capsys.readouterr()
    assert predict(local, out, *args)[0] == 0
    assert "predicted 0, skipped (already done) 3, errors 0" in capsys.readouterr().err
    assert rows(out) == first and all(r["status"] == "ok" for r in first)
    # another predict into a second folder beside it does not read the first one's results
    assert predict(local, scans / "again", *args)[0] == 0
    assert len(rows(scans / "again")) == 3


def test_differences_name_each_setting_with_what_was_asked():
    old = {
        "asked": {"runtime": "auto", "threshold": None},
        "resolved": {"runtime": "onnxruntime", "model_sha256": "a" * 64, "tta": "none"},
    }
    new = {
        "asked": {"runtime": "auto", "threshold": None},
        "resolved": {"runtime": "openvino", "model_sha256": "b" * 64, "tta": "none"},
    }
    assert record.differences(old, new) == [
        f"model sha256 {'a' * 12} -> {'b' * 12}",
        "runtime onnxruntime -> openvino",
    ]
    new["asked"]["runtime"] = "torch"
    new["resolved"]["runtime"] = "torch"
    assert record.differences(old, new)[1] == "runtime onnxruntime -> torch (asked auto -> torch)"
    assert record.differences(old, old) == []
