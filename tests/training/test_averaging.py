"""Checkpoint averaging (the mean of the weights, BatchNorm statistics recomputed on data),
`train --average-top N`, training on a fold, and `ptxseg average-checkpoints`."""

import json

import numpy as np
import pytest
import torch
from predict_helpers import make_checkpoint
from torch import nn

from ptxseg.cli import main
from ptxseg.config import load_config
from ptxseg.data.folds import open_split, read_folds
from ptxseg.data.synthetic import generate_dataset
from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder
from ptxseg.model.checkpoint import CheckpointError, load_model, read_info
from ptxseg.training.averaging import (
    average_models,
    average_state_dicts,
    has_batchnorm,
    refresh_batchnorm,
)
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


def test_floating_tensors_are_averaged_and_counters_kept():
    a = {
        "w": torch.tensor([1.0, 2.0]),
        "n": torch.tensor(5),
        "h": torch.tensor([1.0], dtype=torch.float16),
    }
    b = {
        "w": torch.tensor([3.0, 6.0]),
        "n": torch.tensor(9),
        "h": torch.tensor([2.0], dtype=torch.float16),
    }
    c = {
        "w": torch.tensor([2.0, 1.0]),
        "n": torch.tensor(1),
        "h": torch.tensor([3.0], dtype=torch.float16),
    }
    mean = average_state_dicts([a, b, c])
    assert torch.equal(mean["w"], torch.tensor([2.0, 3.0]))
    assert mean["n"].item() == 5  # an integer buffer (num_batches_tracked) comes from the first
    assert mean["h"].dtype == torch.float16 and mean["h"].item() == 2.0


def test_states_that_do_not_match_are_errors():
    with pytest.raises(ValueError, match="other weights"):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match=r"differs from model 1 in w: \(3,\) vs \(2,\)"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])


def test_average_of_checkpoints_equals_the_mean_of_their_weights(tmp_path):
    paths = []
    for seed in range(3):
        path = make_checkpoint(tmp_path / f"m{seed}.ckpt", encoder="resnet18", size=64)
        ckpt = torch.load(path, weights_only=True)
        torch.manual_seed(seed)
        ckpt["state_dict"] = {
            k: v + torch.randn_like(v) if v.is_floating_point() else v
            for k, v in ckpt["state_dict"].items()
        }
        torch.save(ckpt, path)
        paths.append(path)
    model, source = average_models(paths)
    states = [load_model(p).state_dict() for p in paths]
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            expected = (states[0][key] + states[1][key] + states[2][key]) / 3
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    assert source == {"averaged": ["m0.ckpt", "m1.ckpt", "m2.ckpt"]}
    assert model.operating_point is None  # thresholds of other weights do not carry over


def test_models_of_different_architectures_are_not_averaged(tmp_path):
    a = make_checkpoint(tmp_path / "a.ckpt", encoder="resnet18", size=64)
    b = make_checkpoint(tmp_path / "b.ckpt", encoder="resnet18", size=96)
    with pytest.raises(CheckpointError, match="one architecture and input size"):
        average_models([a, b])


class Net(nn.Module):
    """A BatchNorm straight on the input: its running statistics are those of the data."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1, momentum=0.1)
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_batchnorm_refresh_sets_running_statistics_to_those_of_the_batches():
    torch.manual_seed(0)
    net = Net()
    net.bn.running_mean.fill_(5.0)  # as if averaged from other weights
    net.bn.running_var.fill_(9.0)
    weights = {
        k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num" not in k
    }
    batches = [torch.rand(4, 1, 8, 8) * 0.5 + 0.2 for _ in range(3)]
    assert refresh_batchnorm(net, iter(batches)) == 3
    data = torch.cat(batches)
    # the cumulative average over the batches: mean of batch means, mean of unbiased batch variances
    torch.testing.assert_close(
        net.bn.running_mean, torch.stack([b.mean() for b in batches]).mean().reshape(1)
    )
    torch.testing.assert_close(
        net.bn.running_var, torch.stack([b.var() for b in batches]).mean().reshape(1)
    )
    assert abs(net.bn.running_mean.item() - data.mean().item()) < 1e-5
    assert net.bn.momentum == 0.1 and not net.training  # momentum restored, eval mode
    for key, value in weights.items():
        assert torch.equal(net.state_dict()[key], value)  # weights untouched
    assert has_batchnorm(net) and not has_batchnorm(nn.Conv2d(1, 1, 1))


def test_batchnorm_refresh_needs_batches():
    net = Net()
    net.bn.running_mean.fill_(5.0)
    with pytest.raises(ValueError, match="no training batches"):
        refresh_batchnorm(net, iter([]))
    assert net.bn.running_mean.item() == 5.0  # left as it was
