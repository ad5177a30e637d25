"""The model card of an ensemble: its members, their folds and weight hashes, one path served."""

import hashlib

from serve_helpers import local_client
from siim_folders import fold_member

from ptxseg.inference.ensemble import write_ensemble
from ptxseg.model.operating_point import OperatingPoint
from ptxseg.serving.card import build_model_card
from ptxseg.serving.webapp import load_app


def test_ensemble_card_lists_members_and_serves_from_one_path(tmp_path):
    members = [fold_member(tmp_path / f"fold{k}" / "model", seed=k, fold=k) for k in range(2)]
    op = OperatingPoint.plain(0.35, tta="hflip", input_size=64)
    path = write_ensemble(tmp_path / "ensemble.json", members, [0, 1], op)
    card = build_model_card(path)
    listed = card["ensemble"]["members"]
    assert [m["fold"] for m in listed] == [0, 1]
    assert [m["name"] for m in listed] == ["fold0/model", "fold1/model"]
    weights = (members[1] / "model.safetensors").read_bytes()
    assert listed[1]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert card["encoder"] == "resnet18" and card["input_size"] == [64, 64]
    assert card["operating_point"] == op.to_dict()  # the ensemble's, not a member's
    app = load_app(tmp_path)  # the folder holding ensemble.json
    served = local_client(app).get("/v1/model").json()
    assert served["operating_point"] == op.to_dict() and served["tta"] == "hflip"
    assert len(served["ensemble"]["members"]) == 2
    listed_card = build_model_card([members[0], members[1]])
    assert listed_card["ensemble"]["file"] is None and len(listed_card["ensemble"]["members"]) == 2
