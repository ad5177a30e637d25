"""Checkpoint averaging: the mean of the weights, and BatchNorm statistics recomputed on data."""

import pytest
import torch
from predict_helpers import make_checkpoint
from torch import nn

from ptxseg.model.averaging import (
    average_models,
    average_state_dicts,
    has_batchnorm,
    refresh_batchnorm,
)
from ptxseg.model.checkpoint import CheckpointError, load_model


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
