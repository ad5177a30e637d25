"""A small SIIM-style folder (DICOMs in the Kaggle layout + a stage-1 CSV) for prepare tests."""

import numpy as np
from dicom_files import chest_like, write_dicom

from ptxseg.data.rle import rle_encode


def make_siim_folder(root, n=20, size=64, seed=0):
    """n DICOMs in the Kaggle layout plus a stage-1 CSV; every third image is positive."""
    rng = np.random.default_rng(seed)
    rows = ["ImageId, EncodedPixels"]
    masks = {}
    for i in range(n):
        image_id = f"1.2.3.{i}"
        folder = root / "dicom-images-train" / f"study{i}" / f"series{i}"
        folder.mkdir(parents=True)
        write_dicom(
            folder / f"{image_id}.dcm",
            chest_like(size, seed + i),
            jpeg=True,
            PatientID=f"patient{i // 2}",
        )
        mask = np.zeros((size, size), bool)
        if i % 3 == 0:
            y, x = rng.integers(0, size // 2, 2)
            mask[y : y + size // 4, x : x + size // 8] = True
            rows.append(f"{image_id}, {rle_encode(mask)}")
        else:
            rows.append(f"{image_id}, -1")
        masks[image_id] = mask
    (root / "train-rle.csv").write_text("\n".join(rows) + "\n")
    return root / "dicom-images-train", root / "train-rle.csv", masks


def synthetic_work(root, n_images=24, size=64, folds=3, seed=0):
    """`ptxseg synth` + `ptxseg prepare --folds` at `size`: a work folder with folds."""
    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    generate_dataset(
        root / "siim", n_images=n_images, size=size, seed=seed, positive_fraction=0.5,
        progress=False,
    )  # fmt: skip
    prepare_work_folder(
        root / "siim" / "dicom-images-train",
        root / "siim" / "train-rle.csv",
        root / "work",
        PrepareOptions(size=size, folds=folds),
    )
    return root / "work"


def fold_member(folder, seed, fold, size=64):
    """An inference-model folder of a random-weight resnet18 U-Net trained (nominally) on `fold`."""
    import torch

    from ptxseg.config import TrainConfig
    from ptxseg.model.checkpoint import save_inference_model
    from ptxseg.model.unet import build_model

    config = TrainConfig.from_dict(
        {
            "data": {"size": size, "fold": fold},
            "model": {
                "encoder": "resnet18",
                "encoder_weights": "none",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
        }
    )
    torch.manual_seed(seed)
    model = build_model(config, load_weights=False)
    with torch.no_grad():  # a bias so that some masks are kept and some dropped
        model.net.segmentation_head[0].bias.fill_(float(seed % 3) - 1.0)
    return save_inference_model(model, folder)
