"""Checkpoint averaging: the weight average of several models of one architecture.

The winning SIIM-ACR solution averaged the weights of the three best epochs of each fold. The
average of floating-point tensors is their arithmetic mean; integer buffers (BatchNorm's
`num_batches_tracked`) are taken from the first model, since they count steps rather than
describe weights. Averaged BatchNorm running statistics are not the statistics of the averaged
network, so `refresh_batchnorm` recomputes them on training batches afterwards
(`torch.optim.swa_utils.update_bn`, as stochastic weight averaging does).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from ptxseg.model.checkpoint import CheckpointError, load_model
from ptxseg.model.unet import SegmentationModel


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors from the first state.

    All states must have the same keys and shapes (ValueError naming the first difference).
    """
    if not states:
        raise ValueError("nothing to average: give at least one checkpoint")
    first = states[0]
    for n, state in enumerate(states[1:], start=2):
        if state.keys() != first.keys():
            diff = sorted(set(state) ^ set(first))[:3]
            raise ValueError(f"model {n} has other weights than model 1 (e.g. {diff})")
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise ValueError(
                    f"model {n} differs from model 1 in {key}: {tuple(value.shape)} vs "
                    f"{tuple(first[key].shape)}"
                )
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            stacked = torch.stack([s[key].detach().to(torch.float64) for s in states])
            out[key] = stacked.mean(0).to(value.dtype)
        else:
            out[key] = value.detach().clone()
    return out


def average_models(paths: Sequence[str | os.PathLike]) -> tuple[SegmentationModel, dict]:
    """Load `.ckpt` files or inference-model folders and return (their weight average, source).

    The average carries the first model's config and no operating point (its thresholds belong
    to other weights). `source` names the models, for the written checkpoint.
    """
    if not paths:
        raise ValueError("nothing to average: give at least one checkpoint")
    models = [load_model(p) for p in paths]
    base = models[0]
    for path, model in zip(paths[1:], models[1:], strict=True):
        if _architecture(model) != _architecture(base):
            raise CheckpointError(
                f"{path} is a {_describe(model)} but {paths[0]} is a {_describe(base)}: only "
                "models of one architecture and input size can be averaged"
            )
    try:
        state = average_state_dicts([m.state_dict() for m in models])
    except ValueError as error:
        raise CheckpointError(f"cannot average {', '.join(map(str, paths))}: {error}") from None
    base.load_state_dict(state)
    base.operating_point = None
    base.validation = None
    return base, {"averaged": [Path(p).name for p in paths]}


def _architecture(model: SegmentationModel) -> tuple:
    m = model.config.get("model", {})
    keys = ("encoder", "decoder_attention", "aux_head", "in_channels")
    return (model.input_size, *(m.get(k) for k in keys))


def _describe(model: SegmentationModel) -> str:
    return f"{model.encoder} U-Net at {model.input_size} px"


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def refresh_batchnorm(
    model: torch.nn.Module, images: Iterable[torch.Tensor], device: str | torch.device = "cpu"
) -> int:
    """Recompute every BatchNorm's running mean and variance on `images` (batches of model
    inputs, (B, 1, S, S) in [0, 1]) as one cumulative average; returns the number of batches.

    The model is left in eval mode. Weights do not change; only the running statistics do.
    """
    iterator = iter(images)
    first = next(iterator, None)
    if first is None:  # update_bn would leave the statistics reset to mean 0, variance 1
        raise ValueError("no training batches to recompute the BatchNorm statistics on")
    seen = {"batches": 0}

    def counted() -> Iterator[torch.Tensor]:
        for batch in itertools.chain([first], iterator):
            seen["batches"] += 1
            yield batch

    with torch.no_grad():
        torch.optim.swa_utils.update_bn(counted(), model, device=torch.device(device))
    model.eval()
    return seen["batches"]
