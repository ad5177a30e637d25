"""Named operating points: parsed, searched on val, stored, and used by predict and serve."""

import json

import cv2
import numpy as np
import pytest
from evaluation.test_evaluate_split import BrightnessModel, fake_checkpoint, make_work
from predict_helpers import make_checkpoint

from ptxseg.cli import main
from ptxseg.evaluation.evaluate_split import evaluate
from ptxseg.evaluation.named_points import parse_targets, search_named_points
from ptxseg.inference.predictor import Predictor
from ptxseg.model.checkpoint import read_info, store_operating_point
from ptxseg.model.operating_point import OperatingPoint
from ptxseg.stats.calibration import Calibrator

TRIAGE = OperatingPoint(top=0.3, bottom=0.2, min_area=1, tta="none", input_size=64)
CALIBRATOR = Calibrator("platt", a=1.0, b=-2.0)


def test_targets_parse_and_bad_ones_say_the_syntax():
    targets = parse_targets("triage:sensitivity=0.95,rule-in:specificity=0.9")
    assert [(t.name, t.metric, t.value) for t in targets] == [
        ("triage", "sensitivity", 0.95),
        ("rule-in", "specificity", 0.9),
    ]
    for bad, message in (
        ("triage=0.95", "NAME:METRIC=VALUE"),
        ("default:sensitivity=0.9", "not 'default'"),
        ("x:ppv=0.9", "metric must be"),
        ("x:sensitivity=1.5", "between 0 and 1"),
        ("x:sensitivity=0.9,x:specificity=0.9", "twice"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_targets(bad)


def test_search_moves_only_top_and_reaches_the_targets():
    rng = np.random.default_rng(0)
    n = 200
    truth = rng.random(n) < 0.4
    peak = np.clip(np.where(truth, 0.55, 0.35) + rng.normal(0, 0.15, n), 0.01, 0.99)
    probs = np.zeros((n, 8, 8), np.float32)
    probs[:, 2:4, 2:4] = peak[:, None, None]  # 4 pixels at the peak
    main_op = OperatingPoint(top=0.6, bottom=0.05, min_area=3, tta="none", input_size=8)
    targets = parse_targets("triage:sensitivity=0.95,rule-in:specificity=0.95")
    points = search_named_points(probs, truth, main_op, targets, "val")
    for name, cmp in (("triage", 0), ("rule-in", 1)):
        entry = points[name]
        op = OperatingPoint.from_dict(entry["operating_point"])
        assert (op.bottom, op.min_area, op.tta) == (0.05, 3, "none")  # only top moves
        positive = op.keep(probs) & (probs.reshape(n, -1).max(1) > op.bottom)
        sens = (positive & truth).sum() / truth.sum()
        spec = (~positive & ~truth).sum() / (~truth).sum()
        assert entry["validation"]["sensitivity"] == pytest.approx(sens)
        assert entry["validation"]["specificity"] == pytest.approx(spec)
        assert [sens, spec][cmp] >= 0.95 and entry["validation"]["target_met"]
    assert points["triage"]["operating_point"]["top"] < points["rule-in"]["operating_point"]["top"]


def test_a_plain_point_gates_on_one_pixel_and_an_unreachable_target_says_so():
    probs = np.zeros((4, 4, 4), np.float32)
    probs[:, 0, 0] = [0.9, 0.7, 0.3, 0.1]
    truth = np.array([True, True, True, False])
    plain = OperatingPoint.plain(0.5)
    points = search_named_points(probs, truth, plain, parse_targets("t:sensitivity=0.99"), "val")
    entry = points["t"]
    assert entry["operating_point"]["min_area"] == 1
    assert not entry["validation"]["target_met"]  # 0.3 is below bottom: no top can add it
    assert entry["validation"]["sensitivity"] == pytest.approx(2 / 3)


def test_evaluate_searches_stores_and_reports_the_named_points(tmp_path):
    work = make_work(tmp_path / "work", n=12)
    ckpt = fake_checkpoint(tmp_path / "model.ckpt")
    summary = evaluate(
        BrightnessModel(),
        work,
        tmp_path / "out",
        checkpoint=ckpt,
        progress=False,
        operating_points="triage:sensitivity=0.95,rule-in:specificity=0.95",
    )
    info = read_info(ckpt)
    assert set(info["operating_points"]) == {"triage", "rule-in"}
    assert Calibrator.from_dict(info["calibrator"]).fitted["split"] == "val"
    points = summary["operating_points"]
    assert set(points) == {"default", "triage", "rule-in"}
    for entry in points.values():
        test = entry["test"]
        assert {"value", "ci_low", "ci_high", "method", "n"} <= set(test["sensitivity"])
    with pytest.raises(ValueError, match="add --search"):
        evaluate(
            BrightnessModel(OperatingPoint.plain(0.5)),  # a stored point: no search by default
            work,
            tmp_path / "again",
            checkpoint=ckpt,
            progress=False,
            operating_points="x:sensitivity=0.9",
        )


@pytest.fixture
def named_checkpoint(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64, OperatingPoint.plain(0.5).to_dict())
    store_operating_point(
        ckpt,
        OperatingPoint.plain(0.5, tta="none", input_size=64),
        extra={
            "operating_points": {"triage": {"operating_point": TRIAGE.to_dict()}},
            "calibrator": CALIBRATOR.to_dict(),
        },
    )
    return ckpt


def test_predictor_uses_a_named_point_and_calibrates(named_checkpoint, tmp_path):
    predictor = Predictor(named_checkpoint, operating_point_name="triage")
    assert predictor.operating_point == TRIAGE
    findings = predictor.predict(
        np.random.default_rng(0).random((64, 64)).astype(np.float32)
    ).findings
    assert findings["operating_point_name"] == "triage"
    assert findings["calibrated_probability"] == pytest.approx(
        CALIBRATOR.apply(findings["probability"]), abs=1e-5
    )
    with pytest.raises(ValueError, match="default, triage"):
        Predictor(named_checkpoint, operating_point_name="rule-in")
    old = make_checkpoint(tmp_path / "old.ckpt", "resnet18", 64)
    plain = Predictor(old).predict(np.zeros((64, 64), np.float32)).findings
    assert plain["calibrated_probability"] is None and plain["calibration"].startswith("none")
    assert plain["operating_point_name"] == "default" and "probability" in plain


def test_predict_names_the_point_in_findings_and_run_json(named_checkpoint, tmp_path):
    image = (np.random.default_rng(1).random((80, 80)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image)
    out = tmp_path / "pred"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "predict",
                str(tmp_path / "x.png"),
                "-c",
                str(named_checkpoint),
                "-o",
                str(out),
                "--operating-point",
                "triage",
                "--workers",
                "0",
            ]
        )
    assert exit_info.value.code == 0
    findings = json.loads((out / "findings" / "x.json").read_text())
    assert findings["operating_point_name"] == "triage"
    assert findings["operating_point"]["top"] == TRIAGE.top
    run = json.loads((out / "run.json").read_text())
    assert run["operating_point_name"] == "triage" and run["calibrator"].startswith("Platt")


def test_serve_uses_the_named_point(named_checkpoint):
    from serve_helpers import local_client

    from ptxseg.serving.webapp import load_app

    app = load_app(named_checkpoint, operating_point_name="triage")
    client = local_client(app)
    card = client.get("/v1/model").json()
    assert card["operating_point_name"] == "triage" and card["operating_point"]["top"] == 0.3
    assert "triage" in card["operating_points"] and card["calibrator"].startswith("Platt")
    gradient = np.tile(np.linspace(40, 200, 64).astype(np.uint8), (64, 1))  # not a blank image
    ok, png = cv2.imencode(".png", gradient)
    answer = client.post("/v1/predict?include=none", files={"file": ("x.png", png.tobytes())})
    findings = answer.json()["findings"]
    assert findings["operating_point_name"] == "triage"
    assert findings["calibrated_probability"] is not None
