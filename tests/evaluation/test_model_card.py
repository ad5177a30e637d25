"""evaluate --model-card: README.md in the hub layout and the same facts in /v1/model."""

import json

import pytest
import yaml
from evaluation.test_evaluate_split import SIZE, make_work
from predict_helpers import make_checkpoint

from ptxseg.cli import main
from ptxseg.model.checkpoint import export_inference_model, read_info
from ptxseg.serving.card import build_model_card


@pytest.fixture(scope="module")
def carded(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    work = make_work(root / "work", n=12)
    folder = export_inference_model(
        make_checkpoint(root / "m.ckpt", "resnet18", SIZE), root / "model"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "evaluate",
                "--checkpoint",
                str(folder),
                "--data",
                str(work),
                "--out",
                str(root / "eval"),
                "--search",
                "--operating-points",
                "triage:sensitivity=0.9",
                "--bootstrap",
                "200",
                "--model-card",
            ]
        )
    assert exit_info.value.code == 0
    return folder, root / "eval"


def test_readme_has_the_model_index_and_every_section(carded):
    folder, eval_dir = carded
    text = (folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    index = front["model-index"][0]
    metrics = {m["name"].split(" (")[0]: m["value"] for m in index["results"][0]["metrics"]}
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert metrics["Competition Dice"] == pytest.approx(
        summary["metrics"]["dice_per_image"]["value"], abs=1e-4
    )
    assert index["results"][0]["dataset"]["split"] == "test"
    for heading in (
        "Intended use",
        "Training data",
        "Metrics",
        "Subgroups",
        "Calibration",
        "Operating points",
        "Limitations",
    ):
        assert f"## {heading}" in text
    assert "| triage |" in text and "[" in text  # intervals in the tables
    assert summary["model_card"] == str(folder / "README.md")


def test_serve_card_shows_the_same_facts(carded):
    folder, eval_dir = carded
    stored = read_info(folder)["evaluation"]
    card = build_model_card(folder)
    assert card["evaluation"] == stored
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert stored["metrics"]["sensitivity"]["ci_low"] == summary["metrics"]["sensitivity"]["ci_low"]
    assert "triage" in card["operating_points"] and card["calibrator"]
