"""The operating point: the triplet rule, its dict, one meaning of the overrides, the TTA check."""

import numpy as np
import pytest
import torch

from ptxseg.model.operating_point import OperatingPoint, OperatingPointWarning


def test_operating_point_plain_threshold():
    prob = np.array([[0.2, 0.5], [0.51, 0.9]], np.float32)
    assert OperatingPoint.plain(0.5).apply(prob).tolist() == [[False, False], [True, True]]
    assert OperatingPoint().is_plain and OperatingPoint().describe() == "threshold 0.5"


def test_operating_point_triplet_gates_whole_masks_batched_numpy_and_torch():
    op = OperatingPoint(top=0.8, bottom=0.3, min_area=2)
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0, 0, :2] = 0.9  # two pixels above top: kept
    probs[0, 1, :] = 0.4  # bottom region joins the kept mask
    probs[1, 0, 0] = 0.9  # one pixel above top: dropped
    probs[1, 1, :] = 0.4
    probs[2, :, :] = 0.5  # nothing above top: dropped
    mask = op.apply(probs)
    assert isinstance(mask, np.ndarray) and mask.dtype == bool
    assert mask.reshape(3, -1).sum(1).tolist() == [6, 0, 0]
    as_torch = op.apply(torch.from_numpy(probs)[:, None])
    assert as_torch.dtype == torch.bool and as_torch.shape == (3, 1, 4, 4)
    assert np.array_equal(as_torch[:, 0].numpy(), mask)
    assert np.array_equal(op.apply(probs[0]), mask[0])  # single image


def test_operating_point_dict_round_trip_and_validation():
    op = OperatingPoint(top=0.75, bottom=0.4, min_area=100)
    assert OperatingPoint.from_dict(op.to_dict()) == op
    assert op.to_dict() == {
        "top": 0.75,
        "bottom": 0.4,
        "min_area": 100,
        "tta": None,
        "input_size": None,
    }
    assert OperatingPoint.from_dict({"top": 0.7, "bottom": 0.7, "min_area": 5.0}).min_area == 5
    with pytest.raises(ValueError, match="unknown operating point keys"):
        OperatingPoint.from_dict({"top": 0.5, "threshold": 0.5})
    with pytest.raises(ValueError, match=r"top=1.5: expected a number in \[0, 1\]"):
        OperatingPoint(top=1.5)
    with pytest.raises(ValueError, match="min_area=-1"):
        OperatingPoint(min_area=-1)
    with pytest.raises(ValueError, match="min_area=2.5"):
        OperatingPoint(min_area=2.5)


def test_overrides_mean_the_same_everywhere():
    op = OperatingPoint(top=0.8, bottom=0.4, min_area=50, tta="hflip", input_size=256)
    assert op.with_overrides() == op
    plain = op.with_overrides(threshold=0.6)
    assert (plain.top, plain.bottom, plain.min_area) == (0.6, 0.6, 0)
    assert plain.tta == "hflip" and plain.input_size == 256  # the path stays recorded
    assert op.with_overrides(threshold=0.6, min_area=5).min_area == 5
    assert op.with_overrides(bottom=0.3) == OperatingPoint(0.8, 0.3, 50, "hflip", 256)
    with pytest.raises(ValueError, match="either --threshold or --top/--bottom"):
        op.with_overrides(threshold=0.5, top=0.9)
    with pytest.raises(ValueError, match=r"top=2.0"):
        op.with_overrides(top=2.0)


def test_old_three_key_dicts_still_read_and_the_path_is_recorded():
    op = OperatingPoint.from_dict({"top": 0.7, "bottom": 0.5, "min_area": 3})
    assert op.tta is None and op.input_size is None
    searched = op.with_path("hflip", 512)
    assert searched.tta == "hflip" and searched.input_size == 512
    assert "hflip" in searched.describe()
    with pytest.raises(ValueError, match="unknown test-time augmentation 'vflip'"):
        op.with_path("vflip", 512)
    assert OperatingPoint.coerce(None) is None and OperatingPoint.coerce(op) is op
    assert OperatingPoint.coerce(op.to_dict()) == op


def test_applying_with_another_tta_or_size_warns():
    op = OperatingPoint.plain(0.5, tta="hflip", input_size=256)
    with pytest.warns(
        OperatingPointWarning, match="searched with TTA 'hflip'.*applied with TTA 'none'"
    ):
        op.warn_if_other_path("none", 256)
    with pytest.warns(OperatingPointWarning, match="searched at 256 px"):
        op.warn_if_other_path("hflip", 512)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op.warn_if_other_path("hflip", 256)
        OperatingPoint().warn_if_other_path("none", 64)  # unknown path: nothing to check


def test_keep_is_the_gate_of_apply():
    rng = np.random.default_rng(0)
    probs = rng.random((8, 16, 16)).astype(np.float32) ** 4
    op = OperatingPoint(top=0.9, bottom=0.3, min_area=3)
    keep = op.keep(probs)
    assert isinstance(keep, np.ndarray)
    assert np.array_equal(keep, op.apply(probs).reshape(8, -1).any(1) | ~keep & False)
    assert keep.tolist() == [(p > 0.9).sum() >= 3 for p in probs]
    assert torch.is_tensor(op.keep(torch.from_numpy(probs)))
