"""Augmentation strategies: image and mask stay aligned, types and ranges hold, runs reproduce."""

import pickle

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ptxseg.cli import main
from ptxseg.training import preview
from ptxseg.training.augmentations import (
    STRATEGIES,
    AlignedRandomResizedCrop,
    SyntheticArtifacts,
    build_transform,
)

SIZE = 64
SEEDS = range(8)


def disc_pair(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright off-centre disc on dark ground; the mask is exactly the bright pixels.

    Off-centre so that a flip or crop applied to the image but not the mask would show.
    """
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = size / 64
    disc = ((yy - 26 * c) ** 2 + (xx - 22 * c) ** 2 < (14 * c) ** 2).float()
    return disc[None].clone(), disc[None].clone()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def bright(image: torch.Tensor) -> np.ndarray:
    """Otsu's threshold, so brightness/contrast/gamma changes do not matter."""
    pixels = (image[0].numpy() * 255).round().astype(np.uint8)
    return cv2.threshold(pixels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1] > 0


def run(strategy: str, seed: int, size: int = SIZE, pair=None):
    image, mask = disc_pair(size) if pair is None else pair
    torch.manual_seed(seed)
    return build_transform(strategy, size)(image, mask)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_types_shapes_and_ranges(strategy):
    image, mask = disc_pair()
    image = (0.1 + 0.8 * image).clamp(0, 1)  # room for brightening and noise to overshoot
    for seed in SEEDS:
        out_image, out_mask = run(strategy, seed, pair=(image, mask))
        assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
        assert out_image.shape == out_mask.shape == (1, SIZE, SIZE)
        assert out_image.dtype == out_mask.dtype == torch.float32
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        assert out_mask.sum() > 0


def test_none_is_identity_and_does_not_touch_the_input():
    image, mask = disc_pair()
    image = image * 0.7 + 0.1
    before = image.clone()
    out_image, out_mask = build_transform("none", SIZE)(image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    assert torch.equal(image, before)


@pytest.mark.parametrize("strategy", ["geometric", "elastic"])
def test_moving_strategies_move_mask_with_image(strategy):
    original = disc_pair()[1][0].numpy() > 0
    moved = 0
    for seed in SEEDS:
        out_image, out_mask = run(strategy, seed)
        mask = out_mask[0].numpy() > 0
        assert iou(mask, out_image[0].numpy() > 0.5) > 0.9, f"seed {seed}"
        moved += not np.array_equal(mask, original)
    assert moved == len(SEEDS)  # the test would be empty if nothing moved


def test_full_keeps_alignment_under_every_effect(monkeypatch):
    # Artifacts add bright pixels outside the mask on purpose; they are tested on their own.
    monkeypatch.setattr(SyntheticArtifacts, "transform", lambda self, inpt, params: inpt)
    for seed in range(16):
        out_image, out_mask = run("full", seed)
        assert iou(out_mask[0].numpy() > 0, bright(out_image)) > 0.9, f"seed {seed}"


@pytest.mark.parametrize("strategy", ["photometric", "noise"])
def test_pixel_value_strategies_leave_mask_alone(strategy):
    image, mask = disc_pair()
    image = 0.2 + 0.6 * image
    changed = 0
    for seed in SEEDS:
        out_image, out_mask = run(strategy, seed, pair=(image, mask))
        assert torch.equal(out_mask, mask)
        changed += not torch.allclose(out_image, image)
    assert changed >= len(SEEDS) // 2


def test_crop_resamples_mask_centred_on_the_image():
    # torch's plain "nearest" would put the mask ~0.5 px right/below the bilinear image.
    image, mask = (tv_tensors.Image(t) for t in disc_pair())
    mask = tv_tensors.Mask(mask)
    crop = AlignedRandomResizedCrop(SIZE, scale=(0.6, 0.6), ratio=(1.0, 1.0), antialias=True)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    offsets = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        out_image, out_mask = crop(image, mask)
        w, m = out_image[0].clamp(0, 1), out_mask[0]
        offsets.append(
            [
                float((m * yy).sum() / m.sum() - (w * yy).sum() / w.sum()),
                float((m * xx).sum() / m.sum() - (w * xx).sum() / w.sum()),
            ]
        )
    assert np.abs(np.mean(offsets, axis=0)).max() < 0.15


def test_resizes_to_size_with_aligned_mask():
    image, mask = disc_pair()
    big = [t.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2) for t in (image, mask)]
    out_image, out_mask = build_transform("none", SIZE)(*big)
    assert out_image.shape == out_mask.shape == (1, SIZE, SIZE)
    assert torch.equal(out_mask, mask)
    assert torch.equal((out_image > 0.5).float(), mask)  # antialiasing blurs, does not shift


def test_artifacts_only_brighten_the_image():
    image = tv_tensors.Image(torch.full((1, SIZE, SIZE), 0.2))
    mask = tv_tensors.Mask(disc_pair()[1])
    torch.manual_seed(0)
    out_image, out_mask = SyntheticArtifacts()(image, mask)
    assert torch.equal(out_mask, mask)
    assert (out_image >= image).all()
    added = out_image > 0.5
    assert 0 < added.float().mean() < 0.3  # a few objects, not a white-out


def test_same_seed_same_output_and_pickles():
    transform = build_transform("full", SIZE)
    copy = pickle.loads(pickle.dumps(transform))
    image, mask = disc_pair()
    outputs = []
    for t, seed in ((transform, 3), (copy, 3), (transform, 4)):
        torch.manual_seed(seed)
        outputs.append([t(image, mask) for _ in range(4)])
    first, again, other = ([torch.cat(pair) for pair in out] for out in outputs)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.pair = disc_pair()

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return self.transform(*self.pair)


def test_dataloader_workers_reproduce_with_seed():
    def batches(seed):
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            _Pairs(build_transform("geometric", SIZE)), batch_size=2, num_workers=2
        )
        return [torch.cat(batch) for batch in loader]

    first, again = batches(0), batches(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][:1], first[0][1:2])  # workers do not repeat each other


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown augmentation strategy 'mixup'") as error:
        build_transform("mixup", SIZE)
    assert all(name in str(error.value) for name in STRATEGIES)


def test_bad_inputs_are_explained():
    transform = build_transform("geometric", SIZE)
    image, mask = disc_pair()
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        transform(image[0], mask)
    with pytest.raises(ValueError, match="must be float"):
        transform(image, mask.to(torch.uint8))
    with pytest.raises(ValueError, match="differ in shape"):
        transform(image, mask[:, :32])


def test_strategies_use_v2_transforms():
    pipeline = build_transform("full", SIZE).pipeline
    assert isinstance(pipeline, v2.Compose)
    assert all(isinstance(t, v2.Transform) for t in pipeline.transforms)


def _png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cli(args) -> int:
    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_cli_preview_of_synthetic_radiograph(tmp_path):
    out = tmp_path / "figs" / "preview.png"
    assert _cli(["augment-preview", "--out", str(out), "--n", "1", "--size", "64"]) == 0
    assert _png(out)
    assert [p.name for p in out.parent.iterdir()] == ["preview.png"]  # no temporary left


def test_cli_preview_of_given_image_and_mask(tmp_path):
    image, mask = disc_pair(96)
    cv2.imwrite(str(tmp_path / "cxr.png"), (60 + 150 * image[0].numpy()).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "mask.png"), (255 * mask[0].numpy()).astype(np.uint8))
    out = tmp_path / "preview.png"
    args = ["augment-preview", "--image", str(tmp_path / "cxr.png"), "--out", str(out)]
    assert _cli([*args, "--mask", str(tmp_path / "mask.png"), "--n", "2", "--size", "64"]) == 0
    assert _png(out)


def test_cli_rejects_mask_of_other_size(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "cxr.png"), np.tri(64, dtype=np.uint8) * 200)
    cv2.imwrite(str(tmp_path / "mask.png"), np.zeros((32, 32), np.uint8))
    out = tmp_path / "preview.png"
    args = ["augment-preview", "--image", str(tmp_path / "cxr.png"), "--out", str(out)]
    assert _cli([*args, "--mask", str(tmp_path / "mask.png")]) == 2
    assert "give the mask at the image's size" in capsys.readouterr().err
    assert not out.exists()


def test_preview_rejects_zero_samples(tmp_path):
    image, mask = disc_pair()
    with pytest.raises(ValueError, match=">= 1"):
        preview.plot_preview(image[0].numpy(), mask[0].numpy() > 0, tmp_path / "p.png", n=0)
