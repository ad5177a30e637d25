"""Golden values of the combo loss and the auxiliary head's loss."""

import math

import pytest
import torch

from ptxseg.config import LossConfig
from ptxseg.model.losses import ComboLoss, aux_loss, build_loss

LN2 = math.log(2.0)


def _half_target() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits 0 (p = 0.5 everywhere) on a 2x2 image whose truth has 2 of 4 pixels set."""
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    return logits, target


def test_dice_plus_bce_golden_value():
    logits, target = _half_target()
    # Dice = 2 * (0.5 * 2) / (0.5 * 4 + 2) = 0.5 -> loss 0.5; BCE = ln 2 at p = 0.5.
    assert ComboLoss()(logits, target).item() == pytest.approx(0.5 + LN2, abs=1e-6)


def test_weights_scale_each_term():
    logits, target = _half_target()
    loss = ComboLoss(dice_weight=2.0, bce_weight=0.5, focal_weight=4.0)(logits, target)
    # Focal (gamma 2) at p = 0.5: (1 - 0.5)^2 * ln 2 per pixel.
    assert loss.item() == pytest.approx(2 * 0.5 + 0.5 * LN2 + 4 * 0.25 * LN2, abs=1e-6)


def test_default_config_is_dice_and_bce_one_to_one():
    loss = build_loss(LossConfig())
    assert loss.weights == {"dice": 1.0, "bce": 1.0}


def test_confident_correct_prediction_has_near_zero_loss():
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, 2:6, 2:6] = 1
    logits = (target * 2 - 1) * 20
    assert ComboLoss(focal_weight=1.0)(logits, target).item() < 1e-6


def test_batch_of_empty_masks_is_bce_only():
    """smp's Dice over a batch without positives is 0, so only BCE remains."""
    logits = torch.full((2, 1, 4, 4), -1.0)
    target = torch.zeros(2, 1, 4, 4)
    expected = math.log1p(math.exp(-1.0))  # BCE of logit -1 against 0
    assert ComboLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_gradient_points_towards_the_target():
    logits, target = _half_target()
    logits.requires_grad_(True)
    ComboLoss()(logits, target).backward()
    assert (logits.grad[target == 1] < 0).all() and (logits.grad[target == 0] > 0).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        ComboLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="all loss weights are 0"):
        ComboLoss(0, 0, 0)
    with pytest.raises(ValueError, match="bce_weight = -1"):
        ComboLoss(1, -1, 0)


def test_aux_loss_golden_value():
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 1, 1] = 1  # image 0 positive, image 1 empty
    label_logits = torch.tensor([[2.0], [0.0]])
    expected = (math.log1p(math.exp(-2.0)) + LN2) / 2
    assert aux_loss(label_logits, mask).item() == pytest.approx(expected, abs=1e-6)
