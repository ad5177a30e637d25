"""`train --average-top N`, training on a fold, and `ptxseg average-checkpoints`."""

import json

import numpy as np
import pytest
import torch

from ptxseg.cli import main
from ptxseg.config import load_config
from ptxseg.data.folds import open_split, read_folds
from ptxseg.data.synthetic import generate_dataset
from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder
from ptxseg.model.checkpoint import load_model, read_info
from ptxseg.training.fit import fit


class Squares(torch.utils.data.Dataset):
    """Dark noise; every other image has a bright square that is its mask."""

    def __init__(self, n=8, size=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            image, mask = torch.rand(1, size, size, generator=g) * 0.3, torch.zeros(1, size, size)
            if i % 2 == 0:
                mask[:, 10:30, 20:40] = 1
                image[:, 10:30, 20:40] += 0.6
            self.items.append({"image": image.clamp(0, 1), "mask": mask, "image_id": f"s{i}"})
        self.has_pneumothorax = np.array([bool(it["mask"].any()) for it in self.items])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def config(out, **overrides):
    values = {
        "trainer.out": str(out),
        "trainer.epochs": 3,
        "trainer.progress_bar": False,
        "trainer.accelerator": "cpu",
        "model.encoder": "resnet18",
        "model.encoder_weights": "none",
        "data.size": 64,
        "data.aug": "none",
        "data.batch_size": 4,
        "data.workers": 0,
        "optim.lr": 1e-3,
    }
    values.update(overrides)
    return load_config(overrides=values)


def test_average_top_ships_the_mean_of_the_best_epochs(tmp_path):
    cfg = config(tmp_path / "run", **{"trainer.average_top": 2, "trainer.average_bn_batches": 1})
    run = fit(cfg, Squares(8), Squares(4, seed=1))
    summary = json.loads((run / "train_summary.json").read_text())
    averaged = summary["averaged"]
    tops = sorted((run / "checkpoints" / "top").glob("*.ckpt"))
    assert len(tops) == 2 and len(averaged["checkpoints"]) == 2
    # the two kept epochs are the best two by validation competition Dice
    rows = sorted(summary_rows(run), key=lambda r: -r["val_competition_dice"])
    assert sorted(averaged["checkpoint_scores"], reverse=True) == pytest.approx(
        [r["val_competition_dice"] for r in rows[:2]], abs=1e-6
    )
    assert averaged["bn_batches"] == 1
    assert 0.0 <= averaged["val_competition_dice"] <= 1.0
    # the run's inference model is the averaged checkpoint, not best.ckpt
    shipped = load_model(run / "model").state_dict()
    mean = load_model(run / "checkpoints" / "averaged.ckpt").state_dict()
    for key in shipped:
        assert torch.equal(shipped[key], mean[key])
    info = read_info(run / "model")
    assert info["source"]["checkpoint"] == "averaged.ckpt"
    # non-BatchNorm weights are exactly the mean of the two checkpoints
    states = [load_model(p).state_dict() for p in tops]
    key = "net.decoder.blocks.0.conv1.0.weight"
    torch.testing.assert_close(mean[key], (states[0][key] + states[1][key]) / 2)


def summary_rows(run):
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def fold_work(tmp_path_factory):
    root = tmp_path_factory.mktemp("folds")
    generate_dataset(root / "siim", n_images=20, size=64, seed=0, positive_fraction=0.5)
    prepare_work_folder(
        root / "siim" / "dicom-images-train",
        root / "siim" / "train-rle.csv",
        root / "work",
        PrepareOptions(size=64, folds=3),
    )
    return root / "work"


def test_train_on_a_fold_validates_on_it(fold_work, tmp_path):
    cfg = config(
        tmp_path / "f1", **{"data.work": str(fold_work), "data.fold": 1, "trainer.epochs": 1}
    )
    run = fit(cfg)
    summary = json.loads((run / "train_summary.json").read_text())
    folds = read_folds(fold_work)
    assert summary["epochs_run"] == 1 and summary["averaged"] is None
    assert load_model(run / "model").config["data"]["fold"] == 1
    # the all-empty baseline is measured on fold 1: its share of negative images
    val = open_split(fold_work, "fold1", 64)
    assert len(val) == len(folds[1])
    assert summary["empty_baseline_val"]["competition_dice"] == pytest.approx(
        1 - val.has_pneumothorax.mean()
    )


def test_cli_average_checkpoints_with_batchnorm_pass(fold_work, tmp_path, capsys):
    cfg = config(
        tmp_path / "f0", **{"data.work": str(fold_work), "data.fold": 0, "trainer.epochs": 2}
    )
    run = fit(cfg)
    ckpts = [run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"]
    out = tmp_path / "avg-model"
    with pytest.raises(SystemExit) as exit_info:
        main(["average-checkpoints", *map(str, ckpts), "--out", str(out), "--bn-batches", "2"])
    assert exit_info.value.code == 0
    assert "BatchNorm recomputed on 2 training batches" in capsys.readouterr().out
    model = load_model(out)
    plain = load_model(ckpts[0]).state_dict()
    second = load_model(ckpts[1]).state_dict()
    state = model.state_dict()
    key = "net.encoder.layer1.0.conv1.weight"
    torch.testing.assert_close(state[key], (plain[key] + second[key]) / 2)
    bn = "net.encoder.bn1.running_mean"
    assert not torch.allclose(state[bn], (plain[bn] + second[bn]) / 2)  # recomputed
    # without the BatchNorm pass the running statistics are the plain mean
    out2 = tmp_path / "avg.ckpt"
    with pytest.raises(SystemExit):
        main(["average-checkpoints", *map(str, ckpts), "--out", str(out2), "--bn-batches", "0"])
    torch.testing.assert_close(load_model(out2).state_dict()[bn], (plain[bn] + second[bn]) / 2)
    # a missing training folder is an error that names the way out
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "average-checkpoints",
                *map(str, ckpts),
                "--out",
                str(out2),
                "--data",
                str(tmp_path / "nope"),
            ]
        )
    assert exit_info.value.code == 2
    assert "--bn-batches 0" in capsys.readouterr().err
