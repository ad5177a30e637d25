"""Ensembles: several models whose probabilities are averaged, loaded from one path.

An **ensemble file** (`ensemble.json`, written by `ptxseg cv` or `ptxseg ensemble`) lists its
members, each a `.ckpt` or an inference-model folder given relative to the file, with the fold
it was validated on (cross-validation) and the operating point of the ensemble:

```json
{"format": "ptxseg-ensemble", "input_size": 256,
 "members": [{"path": "fold0/model", "fold": 0}, ...],
 "operating_point": {"top": 0.75, "bottom": 0.4, "min_area": 33, "tta": "hflip",
                     "input_size": 256},
 "validation": {"split": "oof", ...}}
```

`EnsembleModel` is one `nn.Module` over the members: it returns the logit of the members' mean
probability, so the Predictor runs it like any model (its sigmoid gives the mean probability,
and hflip TTA averages on top), and it exports as a single ONNX graph. Every member must take
the same input size. The ensemble's operating point is searched on the pooled out-of-fold
predictions (`ptxseg evaluate --split oof`), never on images that members trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptxseg.model import checkpoint
from ptxseg.model.operating_point import OperatingPoint, choose_named
from ptxseg.util.jsonio import jsonable, write_json

ENSEMBLE_FILE = "ensemble.json"
FORMAT = "ptxseg-ensemble"
PROBABILITY_EPS = 1e-6
"""Mean probabilities are clamped to [eps, 1 - eps] before the logit, so it stays finite."""


class EnsembleError(ValueError):
    """An ensemble that cannot be read or built; the message names the file and the fix."""


@dataclass
class EnsembleSpec:
    """What an ensemble file says: member paths (resolved), their folds, the operating point."""

    path: Path | None
    members: list[Path]
    folds: list[int | None] = field(default_factory=list)
    operating_point: OperatingPoint | None = None
    validation: dict[str, Any] | None = None
    input_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # named points, calibrator, evaluation


def ensemble_file(path: str | os.PathLike) -> Path:
    """The ensemble file of `path`: itself, or `path/ensemble.json` for a folder (a cv folder)."""
    path = Path(path)
    return path / ENSEMBLE_FILE if path.is_dir() else path


def is_ensemble(path: Any) -> bool:
    """True for an ensemble file, or a folder that holds one (e.g. a `ptxseg cv` folder)."""
    if not isinstance(path, str | os.PathLike):
        return False
    file = ensemble_file(path)
    return file.suffix.lower() == ".json" and file.is_file()


def member_size(path: Path) -> int:
    """The input size of a `.ckpt` or model folder, from its stored config."""
    info = checkpoint.read_info(path)
    size = info.get("input_size") or (info.get("config") or {}).get("data", {}).get("size")
    if size is None:
        raise EnsembleError(f"{path} does not say its input size: it cannot join an ensemble")
    return int(size)


def member_fold(path: Path) -> int | None:
    """The fold a `.ckpt` or model folder was validated on (`train --fold`), or None."""
    config = checkpoint.read_info(path).get("config") or {}
    return (config.get("data") or {}).get("fold")


def check_members(members: Sequence[Path]) -> int:
    """The shared input size of the members; EnsembleError when a member is missing, is not a
    ptxseg model, or takes another size."""
    if not members:
        raise EnsembleError("an ensemble needs at least one member")
    sizes = {}
    for member in members:
        if Path(member).suffix.lower() in (".onnx", ".json"):
            raise EnsembleError(
                f"ensemble member {member}: expected a .ckpt or an inference-model folder "
                "(ONNX files and other ensembles cannot be members; export the ensemble instead)"
            )
        if not Path(member).exists():
            raise EnsembleError(f"ensemble member {member} not found")
        try:
            sizes[str(member)] = member_size(Path(member))
        except (checkpoint.CheckpointError, FileNotFoundError) as error:
            raise EnsembleError(f"ensemble member {member}: {error}") from None
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{m} ({s} px)" for m, s in sizes.items())
        raise EnsembleError(
            f"ensemble members take different input sizes: {listing}; the probabilities of one "
            "image can only be averaged at one size: train (or choose) members of one --size"
        )
    return next(iter(sizes.values()))


def read_ensemble(path: str | os.PathLike) -> EnsembleSpec:
    """Read and check an ensemble file (or the one in a folder)."""
    file = ensemble_file(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"ensemble file {file} not found: expected an ensemble.json written by `ptxseg cv` "
            "or `ptxseg ensemble`"
        )
    data = checkpoint.read_description(file, FORMAT, "ptxseg ensemble file", EnsembleError)
    entries = data.get("members")
    if not isinstance(entries, list) or not entries:
        raise EnsembleError(f"ensemble file {file} lists no members")
    members, folds = [], []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise EnsembleError(f'ensemble file {file}: member {entry!r} has no "path"')
        members.append((file.parent / entry["path"]).resolve())
        folds.append(entry.get("fold"))
    size = check_members(members)
    try:
        op = OperatingPoint.coerce(data.get("operating_point"))
    except ValueError as error:
        raise EnsembleError(f"ensemble file {file}: {error}") from None
    extra = {key: data.get(key) for key in checkpoint.STORED_ENTRIES}
    return EnsembleSpec(file, members, folds, op, data.get("validation"), size, extra)


def write_ensemble(
    path: str | os.PathLike,
    members: Sequence[str | os.PathLike],
    folds: Sequence[int | None] | None = None,
    operating_point: OperatingPoint | None = None,
    validation: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an ensemble file listing `members` relative to it (checked first), atomically.

    `folds` default to the fold each member was trained for (`train --fold`), if any."""
    file = ensemble_file(path) if Path(path).is_dir() else Path(path)
    if file.suffix.lower() != ".json":
        raise EnsembleError(f"ensemble file {file}: expected a name ending in .json")
    resolved = [Path(m).resolve() for m in members]
    size = check_members(resolved)
    folds = list(folds) if folds is not None else [member_fold(m) for m in resolved]
    if len(folds) != len(resolved):
        raise EnsembleError(f"{len(folds)} folds given for {len(resolved)} members")
    base = file.parent.resolve()
    data = {
        "format": FORMAT,
        "input_size": size,
        "members": [
            {"path": os.path.relpath(m, base), **({"fold": f} if f is not None else {})}
            for m, f in zip(resolved, folds, strict=True)
        ],
        "operating_point": None if operating_point is None else operating_point.to_dict(),
        "validation": validation,
        **jsonable(extra or {}),
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    return write_json(file, data)


def store_ensemble_operating_point(
    path: str | os.PathLike,
    op: OperatingPoint,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Replace the operating point (and the metrics it was chosen on, and `extra` entries: the
    named points and the calibrator) of an ensemble file."""
    entries: dict[str, Any] = {"operating_point": op.to_dict()}
    if metrics is not None:
        entries["validation"] = metrics
    return update_ensemble(path, dict(entries, **(extra or {})))


def update_ensemble(path: str | os.PathLike, entries: dict[str, Any]) -> Path:
    """Replace top-level entries of an ensemble file, atomically."""
    file = ensemble_file(path)
    data = json.loads(file.read_text())
    data.update(jsonable(entries))
    return write_json(file, data)


def read_model_operating_point(
    path: str | os.PathLike, name: str | None = None
) -> OperatingPoint | None:
    """The stored operating point of any model path: ensemble, `.onnx`, `.ckpt` or folder; with
    `name`, the named point of that name (`--operating-point`)."""
    if is_ensemble(path):
        spec = read_ensemble(path)
        main, named = spec.operating_point, spec.extra.get("operating_points")
    elif Path(path).suffix.lower() == ".onnx":
        from ptxseg.inference.onnx import read_metadata

        meta = read_metadata(path)
        main, named = (
            OperatingPoint.coerce(meta.get("operating_point")),
            meta.get("operating_points"),
        )
    else:
        info = checkpoint.read_info(path)
        main, named = (
            OperatingPoint.coerce(info.get("operating_point")),
            info.get("operating_points"),
        )
    return choose_named(main, named, name)


def store_model_operating_point(
    path: str | os.PathLike,
    op: OperatingPoint,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Store `op` with the model at `path`: into the ensemble file, or the checkpoint/folder."""
    if is_ensemble(path):
        store_ensemble_operating_point(path, op, metrics, extra)
    else:
        checkpoint.store_operating_point(path, op, metrics, extra)


def store_entries(path: str | os.PathLike, entries: dict[str, Any]) -> None:
    """Replace top-level entries of any stored model: ensemble file, checkpoint or folder."""
    if is_ensemble(path):
        update_ensemble(path, entries)
    else:
        checkpoint.update_info(path, entries)


class EnsembleModel(nn.Module):
    """Members averaged in probability: `forward` returns the logit of their mean probability.

    Attributes match a `SegmentationModel` where the Predictor and ONNX export read them:
    `input_size`, `encoder`, `config` (the first member's), `operating_point`, `validation`;
    `folds` gives each member's fold (None when unknown).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        operating_point: OperatingPoint | None = None,
        folds: Sequence[int | None] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise EnsembleError("an ensemble needs at least one member")
        sizes = {int(m.input_size) for m in members}
        if len(sizes) > 1:
            raise EnsembleError(
                f"ensemble members take different input sizes ({sorted(sizes)} px): the "
                "probabilities of one image can only be averaged at one size"
            )
        self.members = nn.ModuleList(members)
        self.input_size = sizes.pop()
        encoders = list(dict.fromkeys(str(m.encoder) for m in members))
        self.encoder = "+".join(encoders)
        self.config = members[0].config
        self.operating_point = operating_point
        self.validation: dict[str, Any] | None = None
        self.operating_points: dict[str, Any] | None = None
        self.calibrator: dict[str, Any] | None = None
        self.evaluation: dict[str, Any] | None = None
        self.folds = list(folds) if folds is not None else [None] * len(members)
        self.names = (
            list(names) if names is not None else [f"member{i}" for i in range(len(members))]
        )

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(M, B, 1, H, W) probabilities of every member, in float32."""
        return torch.stack([torch.sigmoid(m(x).float()) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.member_probabilities(x).mean(0).clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        return torch.log(p / (1 - p))

    def description(self) -> dict[str, Any]:
        """What ONNX metadata and the model card say about the members."""
        return {
            "members": self.names,
            "folds": self.folds,
            "encoders": [str(m.encoder) for m in self.members],
        }


def load_ensemble(
    source: str | os.PathLike | Sequence[Any], device: str | torch.device = "cpu"
) -> EnsembleModel:
    """An EnsembleModel from an ensemble file or folder, or from a list of models (paths of
    `.ckpt` files or model folders, or loaded modules); a list carries no operating point."""
    if isinstance(source, str | os.PathLike):
        spec = read_ensemble(source)
        members = [checkpoint.load_model(m, device) for m in spec.members]
        folds = [
            f if f is not None else _fold_of(m) for f, m in zip(spec.folds, members, strict=True)
        ]
        model = EnsembleModel(members, spec.operating_point, folds, [str(m) for m in spec.members])
        model.validation = spec.validation
        for key, value in spec.extra.items():
            setattr(model, key, value)
        return model.to(device).eval()
    paths = [s for s in source if isinstance(s, str | os.PathLike)]
    if paths:
        check_members([Path(p) for p in paths])
    members = [
        s.to(device).eval() if isinstance(s, nn.Module) else checkpoint.load_model(s, device)
        for s in source
    ]
    folds = [_fold_of(m) for m in members]
    names = [
        str(s) if isinstance(s, str | os.PathLike) else f"member{i}" for i, s in enumerate(source)
    ]
    return EnsembleModel(members, None, folds, names).to(device).eval()


def _fold_of(model: nn.Module) -> int | None:
    config = getattr(model, "config", None) or {}
    return (config.get("data") or {}).get("fold")


def export_ensemble_folder(source: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Copy an ensemble as a self-contained folder: `out/member<k>/` inference-model folders
    (safetensors) and `out/ensemble.json` with the same folds and operating point."""
    spec = read_ensemble(source)
    out = Path(out)
    if out.exists() and not (out / ENSEMBLE_FILE).is_file():
        raise FileExistsError(f"{out} exists and is not an exported ensemble: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, member in enumerate(spec.members):
        target = out / f"member{k}"
        if member.is_dir():
            model = checkpoint.load_model(member)
            checkpoint.save_inference_model(model, target, {"ensemble_member": str(member)})
        else:
            checkpoint.export_inference_model(member, target)
        paths.append(target)
    return write_ensemble(
        out / ENSEMBLE_FILE, paths, spec.folds, spec.operating_point, spec.validation, spec.extra
    )
