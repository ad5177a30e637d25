"""Checkpoint averaging: the weight average of several models of one architecture, a run's best
epochs (`train --average-top N`) and `ptxseg average-checkpoints`.

The winning SIIM-ACR solution averaged the weights of the three best epochs of each fold. The
average of floating-point tensors is their arithmetic mean; integer buffers (BatchNorm's
`num_batches_tracked`) are taken from the first model, since they count steps rather than
describe weights. Averaged BatchNorm running statistics are not the statistics of the averaged
network, so `refresh_batchnorm` recomputes them on training batches afterwards
(`torch.optim.swa_utils.update_bn`, as stochastic weight averaging does).

During training a second checkpoint callback keeps the N checkpoints with the best validation
competition Dice in `RUN/checkpoints/top/`. After training their weights are averaged
(`average_models`), and the BatchNorm running statistics are recomputed on
`trainer.average_bn_batches` (default 100) batches of the run's own training loader (its
augmentation and positive-share sampler; an epoch that is shorter gives fewer). The average is
scored on the validation data at probability 0.5, as the epochs are, and written as
`RUN/checkpoints/averaged.ckpt`; the run's inference model `RUN/model/` is then made from it.

An averaged checkpoint holds weights and config (no optimizer state: it cannot be resumed)
and loads wherever a `.ckpt` does.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ptxseg.config import TrainConfig
from ptxseg.data.dataset import batch_to_float
from ptxseg.model import metrics
from ptxseg.model.checkpoint import (
    CheckpointError,
    load_model,
    save_inference_model,
    write_checkpoint,
)
from ptxseg.model.unet import SegmentationModel

TOP_DIR = "top"
AVERAGED = "averaged.ckpt"
MONITOR = "val/competition_dice"


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


def top_checkpoints(run_dir: Path, n: int):
    """The callback that keeps the `n` checkpoints with the best validation competition Dice."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(
        dirpath=Path(run_dir) / "checkpoints" / TOP_DIR,
        filename="epoch{epoch:03d}",
        monitor=MONITOR,
        mode="max",
        save_top_k=n,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )


def training_images(config: TrainConfig, n_batches: int, data=None) -> Iterator[torch.Tensor]:
    """Up to `n_batches` image batches of the training loader that `config` describes (or of
    the given data module): the batches BatchNorm statistics are recomputed on."""
    if data is None:
        from ptxseg.training.module import SegmentationDataModule

        data = SegmentationDataModule(config)
        data.setup("fit")
    loader = data.train_dataloader()
    for batch in itertools.islice(loader, n_batches):
        yield batch_to_float(batch["image"], batch["mask"])[0]


def batch_norm_images(checkpoint: Path, data: Path | None, n_batches: int):
    """The training batches that recompute the BatchNorm statistics of an average whose first
    member is `checkpoint` (its config's fold, augmentation and sampler; `data` replaces its
    work folder); None for `n_batches` 0. ValueError when the training data is not at hand."""
    if not n_batches:
        return None
    from ptxseg.model.checkpoint import read_info

    config = TrainConfig.from_dict(read_info(checkpoint)["config"])
    if data is not None:
        config.data.work = str(data)
    if not config.data.work or not Path(config.data.work).is_dir():
        raise ValueError(
            f"the BatchNorm pass needs the training data: {checkpoint} was trained "
            f"on {config.data.work or 'an unknown folder'}; give --data WORK, or "
            "--bn-batches 0 to keep the averaged statistics"
        )
    return training_images(config, n_batches)


def validation_scores(
    model: torch.nn.Module, dataset: Dataset, batch_size: int = 8, device: str = "cpu"
) -> dict[str, float]:
    """Pooled Dice and competition Dice at probability 0.5 on `dataset` (model size)."""
    counts = []
    model = model.to(device).eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images, masks = batch_to_float(
                torch.stack([it["image"] for it in items]),
                torch.stack([it["mask"] for it in items]),
            )
            images = images.to(device)
            counts.append(np.stack(metrics.confusion_counts(model(images) > 0, masks > 0.5)))
    if not counts:
        return {"val_dice": math.nan, "val_competition_dice": math.nan}
    tp, fp, fn, _ = np.concatenate(counts, axis=1)
    return {
        "val_dice": float(metrics.dice_scores(tp.sum(), fp.sum(), fn.sum())),
        "val_competition_dice": float(metrics.dice_scores(tp, fp, fn).mean()),
    }


def write_model(model: SegmentationModel, out: str | os.PathLike, source: dict[str, Any]) -> Path:
    """A `.ckpt` (weights + config, what `load_model` reads) or else an inference-model folder."""
    out = Path(out)
    if out.suffix.lower() != ".ckpt":
        return save_inference_model(model, out, source)
    state = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    entry = {"config": model.config, "operating_point": None, "source": source}
    return write_checkpoint(out, {"state_dict": state, "ptxseg": entry})


def average_and_refresh(
    paths: Sequence[str | os.PathLike],
    images: Iterator[torch.Tensor] | None,
    device: str = "cpu",
) -> tuple[SegmentationModel, dict[str, Any]]:
    """The weight average of `paths` with BatchNorm recomputed on `images` (None: not)."""
    model, source = average_models(paths)
    source["bn_batches"] = 0
    if images is not None and has_batchnorm(model):
        source["bn_batches"] = refresh_batchnorm(model, images, device)
    return model.eval(), source


def average_run(run_dir: Path, config: TrainConfig, callback, data, device) -> dict[str, Any]:
    """Average the run's top checkpoints, recompute BatchNorm, score on val, write
    `checkpoints/averaged.ckpt`; returns what the run summary records about it."""
    ranked = sorted(
        ((float(score), Path(path)) for path, score in callback.best_k_models.items()),
        key=lambda pair: -pair[0] if not math.isnan(pair[0]) else math.inf,
    )
    paths = [path for _, path in ranked if path.is_file()]
    if not paths:
        return {"error": "no top checkpoints were written (no finite validation score)"}
    images = training_images(config, config.trainer.average_bn_batches, data)
    bn = None if config.trainer.average_bn_batches == 0 else images
    model, source = average_and_refresh(paths, bn, device)
    scores = validation_scores(model, data.val_dataset, config.data.batch_size, device)
    source.update(
        checkpoints=[os.path.relpath(p, run_dir) for p in paths],
        checkpoint_scores=[round(s, 6) for s, _ in ranked[: len(paths)]],
        **{k: round(v, 6) for k, v in scores.items()},
    )
    write_model(model.cpu(), run_dir / "checkpoints" / AVERAGED, source)
    return {"checkpoint": f"checkpoints/{AVERAGED}", **source}
