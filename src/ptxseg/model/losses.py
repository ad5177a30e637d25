"""The segmentation loss: weighted Dice + BCE (+ optional focal) on logits, from `smp.losses`.

Dice is computed over the whole batch (smp's binary mode), so a batch of only empty masks
contributes BCE and focal terms alone. Terms with weight 0 are not built.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch import losses as smp_losses
from torch import nn


class ComboLoss(nn.Module):
    """`dice_weight * Dice + bce_weight * BCE + focal_weight * Focal`, all on mask logits."""

    def __init__(
        self, dice_weight: float = 1.0, bce_weight: float = 1.0, focal_weight: float = 0.0
    ) -> None:
        super().__init__()
        weights = {"dice": dice_weight, "bce": bce_weight, "focal": focal_weight}
        for name, weight in weights.items():
            if weight < 0:
                raise ValueError(f"loss weight {name}_weight = {weight}: expected >= 0")
        if not any(weights.values()):
            raise ValueError("all loss weights are 0: set at least one of dice, bce, focal > 0")
        self.weights = {name: float(w) for name, w in weights.items() if w > 0}
        terms = {
            "dice": lambda: smp_losses.DiceLoss(mode="binary", from_logits=True),
            "bce": lambda: smp_losses.SoftBCEWithLogitsLoss(),
            "focal": lambda: smp_losses.FocalLoss(mode="binary"),
        }
        self.terms = nn.ModuleDict({name: terms[name]() for name in self.weights})

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(
                f"loss expects logits and target of the same shape, got {tuple(logits.shape)} "
                f"and {tuple(target.shape)}"
            )
        logits = logits.float()  # stable under mixed precision
        target = target.float()
        return sum(w * self.terms[name](logits, target) for name, w in self.weights.items())


def build_loss(loss_config) -> ComboLoss:
    """The combo loss from a `config.LossConfig`."""
    return ComboLoss(loss_config.dice_weight, loss_config.bce_weight, loss_config.focal_weight)


def aux_loss(label_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE of the empty-vs-pneumothorax head against "the mask has any positive pixel"."""
    label = (mask.flatten(1).amax(dim=1) > 0).float().unsqueeze(1)
    return nn.functional.binary_cross_entropy_with_logits(label_logits.float(), label)
