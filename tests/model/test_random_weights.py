"""The random-weight U-Net: built without a download, at the size asked, as training builds it."""

import torch

from ptxseg.config import load_config
from ptxseg.model.random_weights import random_unet, random_unet_config, random_unet_overrides


def test_random_unet_has_the_encoder_size_and_normalisation_asked_for():
    model = random_unet("resnet18", 64).eval()
    assert model.input_size == 64 and model.encoder == "resnet18"
    with torch.inference_mode():
        assert model(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    assert model.config["model"]["encoder_weights"] == "none"
    assert model.config["model"]["mean"] is not None  # the encoder's normalisation, as trained


def test_config_and_overrides_say_the_same():
    config = load_config(overrides=random_unet_overrides("resnet18", 96))
    assert random_unet_config("resnet18", 96) == {
        "data": {"size": config.data.size},
        "model": {"encoder": config.model.encoder, "encoder_weights": config.model.encoder_weights},
    }
