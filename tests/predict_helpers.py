"""Small models with the SegmentationModel interface for the prediction tests.

`TinyUnet` is a random-weight smp U-Net (ResNet18, no download) that normalises inside, like
`ptxseg.model.unet.SegmentationModel`; `RegionModel` fires on a known rectangle so tests can check
that masks come back aligned at the original size and on the right side; `ConfidentModel` is
sure of its masks (bright discs), so reduced precision can be held to fp32's masks (`disc_images`).
"""

from __future__ import annotations

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226


class TinyUnet(nn.Module):
    def __init__(self, input_size: int = 64, operating_point=None, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = smp.Unet(
            "resnet18",
            encoder_weights=None,
            in_channels=1,
            encoder_depth=3,
            decoder_channels=(32, 16, 8),
        )
        self.input_size = input_size
        self.encoder = "resnet18"
        self.config = {"encoder": "resnet18", "size": input_size}
        self.operating_point = operating_point

    def forward(self, x):
        return self.net((x - IMAGENET_MEAN) / IMAGENET_STD)


class RegionModel(nn.Module):
    """Logit +8 inside rows y0:y1, cols x0:x1 of the model-size grid and -8 elsewhere."""

    def __init__(self, box=(8, 16, 24, 40), input_size: int = 64, operating_point=None):
        super().__init__()
        x0, y0, x1, y1 = box
        logits = torch.full((1, 1, input_size, input_size), -8.0)
        logits[..., y0:y1, x0:x1] = 8.0
        self.register_buffer("pattern", logits)
        self.scale = nn.Parameter(torch.ones(1))
        self.input_size = input_size
        self.encoder = "region"
        self.config = {"encoder": "region", "size": input_size}
        self.operating_point = operating_point

    def forward(self, x):
        return self.pattern * self.scale + 0.0 * x.mean(dim=(1, 2, 3), keepdim=True)


def make_checkpoint(path, encoder: str = "resnet50", size: int = 64, operating_point=None):
    """A checkpoint as `ptxseg train` writes it (random weights), for `load_model`."""
    from ptxseg.config import TrainConfig
    from ptxseg.model.unet import build_model

    config = TrainConfig.from_dict(
        {
            "data": {"size": size},
            "model": {
                "encoder": encoder,
                "encoder_weights": "none",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
        }
    )
    torch.manual_seed(0)
    model = build_model(config, load_weights=False)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {
            "state_dict": state,
            "ptxseg": {"config": model.config, "operating_point": operating_point},
        },
        path,
    )
    return path


class ConfidentModel(nn.Module):
    """logit = 40 * (local mean brightness - 0.5): bright discs are pneumothorax, surely."""

    def __init__(self, size: int = 64):
        super().__init__()
        self.features = nn.Conv2d(1, 2, 3, padding=1)
        self.segmentation_head = nn.Conv2d(2, 1, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.stack([torch.full((1, 3, 3), 1 / 9)] * 2))
            self.features.weight[1] *= -1
            self.features.bias.copy_(torch.tensor([-0.5, 0.5]))
            self.segmentation_head.weight.copy_(torch.tensor([40.0, -40.0]).view(1, 2, 1, 1))
            self.segmentation_head.bias.zero_()
        self.input_size, self.encoder, self.config, self.operating_point = size, "conv", {}, None

    def forward(self, x):
        return self.segmentation_head(torch.relu(self.features(x)))


def disc_images(n: int = 8, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for _ in range(n):
        image = 0.2 + 0.05 * rng.random((size, size))
        for _ in range(2):
            cy, cx, r = rng.integers(12, size - 12, 2).tolist() + [int(rng.integers(4, 10))]
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.8
        images.append(image.astype(np.float32))
    return images
