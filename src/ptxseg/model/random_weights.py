"""The random-weight U-Net: the one place its config is written.

Benchmarks time it (weights change neither speed nor memory) and the demo times its backbones
with it before it plans the epochs. Built the way training builds a model, the encoder's
normalisation included, so what is measured is what trains and predicts.
"""

from __future__ import annotations

from typing import Any


def random_unet_config(encoder: str, size: int) -> dict[str, Any]:
    """The config of a 1-channel U-Net of `encoder` at `size` px without pretrained weights."""
    return {"data": {"size": size}, "model": {"encoder": encoder, "encoder_weights": "none"}}


def random_unet_overrides(encoder: str, size: int) -> dict[str, Any]:
    """The same choice as `load_config` overrides (dotted keys), for a full training config."""
    return {"model.encoder": encoder, "model.encoder_weights": "none", "data.size": size}


def random_unet(encoder: str, size: int = 256):
    """A U-Net of `encoder` at `size` px with random weights (nothing is downloaded)."""
    from ptxseg.model.unet import build_model

    return build_model(random_unet_config(encoder, size))
