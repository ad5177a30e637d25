"""The stand-in model that lets `benchmark-gpu --stages pipeline` time predict without a network."""

import torch

from ptxseg.benchmarks.pipeline import StandInModel, format_loop
from ptxseg.inference.predictor import Predictor


def test_stand_in_gives_empty_or_one_lesion_masks_for_any_input():
    x = torch.rand(3, 1, 40, 40)
    empty, lesion = StandInModel(40, lesion=False), StandInModel(40, lesion=True)
    assert empty(x).shape == (3, 1, 40, 40) and bool((empty(x) < 0).all())
    share = float((lesion(x) > 0).float().mean())
    assert 0.02 < share < 0.06  # a lesion's share of the image
    image = torch.rand(80, 80).numpy()
    assert not Predictor(empty).predict(image).mask.any()
    assert Predictor(lesion).predict(image).mask.mean() > 0.02


def test_format_loop():
    assert format_loop({"reads": 0.04, "writers": 12.25}) == "reads 0.0, writers 12.2"
    assert format_loop(None) == ""
