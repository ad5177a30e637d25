"""A model loaded once: the network (or the ensemble, or an ONNX file), what it says about
itself, its digest and the facts of its model card.

A model option names a `.ckpt`, an inference-model folder, an `.onnx` file, an ensemble file
(or the folder holding one) or several models. `LoadedModel.load` opens it once; the Predictor,
the runtime choice (`ptxseg.inference.choice`), the model card (`ptxseg.serving.card`), the
folder record (`ptxseg.inference.record`) and the PACS analyser read this object instead of
opening the path again. The card's facts and the digest are read on first use (hashing the
weights takes a moment that `predict` without a card does not pay twice).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ptxseg.model.operating_point import OperatingPoint, choose_named

WEIGHTS = "model.safetensors"  # an inference-model folder's weights (ptxseg.model.checkpoint)


def _is_path(model: Any) -> bool:
    return isinstance(model, str | os.PathLike)


def is_onnx_file(model: Any) -> bool:
    """True for a path to an `.onnx` file."""
    return _is_path(model) and Path(model).suffix.lower() == ".onnx"


def weights_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a model file; of its weights for an inference-model folder."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def module_digest(module: Any) -> str:
    """SHA-256 of a loaded model's weights and operating point (a model without a file)."""
    sha = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        sha.update(name.encode())
        sha.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    sha.update(repr(getattr(module, "operating_point", None)).encode())
    return sha.hexdigest()


def load_network(model: Any, device: str = "cpu"):
    """The torch module of anything a model option names but an `.onnx` file (a module as it
    is): a checkpoint, a model folder, an ensemble file or folder, or a list of models."""
    import torch

    from ptxseg.inference.ensemble import is_ensemble, load_ensemble

    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    if isinstance(model, list | tuple) or is_ensemble(model):
        return load_ensemble(model, device=device)
    from ptxseg.model.checkpoint import load_model

    return load_model(model, device=device)


@dataclass
class LoadedModel:
    """One model, opened once.

    `source` is what was named (a path, a list of paths, or a module); `network` the torch
    module (an `EnsembleModel` for an ensemble), None for an `.onnx` file, whose path is
    `onnx_path`; `meta` what the model says about itself (encoder, input_size, config, the
    operating points, the calibrator; an `.onnx` file's ptxseg metadata).
    """

    source: Any
    network: Any
    onnx_path: Path | None
    meta: dict[str, Any]
    ensemble: bool = False

    @classmethod
    def load(cls, model: Any, device: str = "cpu") -> LoadedModel:
        """Open `model` once (a LoadedModel is returned as it is)."""
        if isinstance(model, LoadedModel):
            return model
        from ptxseg.inference.onnx import model_metadata, read_metadata

        if isinstance(model, list | tuple):
            if not model:
                raise ValueError("no model given: expected one model path or several")
            model = model[0] if len(model) == 1 else list(model)
        if is_onnx_file(model):
            return cls(model, None, Path(model), read_metadata(model))
        network = load_network(model, device)
        ensemble = callable(getattr(network, "description", None))
        return cls(model, network, None, model_metadata(network), ensemble)

    # ---------------------------------------------------------------- what it says about itself

    @property
    def kind(self) -> str:
        """torch (a checkpoint, folder, ensemble or module), onnx (fp32 file) or onnx-int8."""
        if self.onnx_path is None:
            return "torch"
        return "onnx-int8" if self.meta.get("precision") == "int8" else "onnx"

    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    @property
    def encoder(self) -> str | None:
        return self.meta.get("encoder")

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config") or {}

    @property
    def stored_operating_point(self) -> OperatingPoint | None:
        return OperatingPoint.coerce(self.meta.get("operating_point"))

    @property
    def named_points(self) -> dict[str, Any]:
        return dict(self.meta.get("operating_points") or {})

    def operating_point_named(self, name: str | None) -> OperatingPoint | None:
        """The stored point of that name (the main one for None); None when absent."""
        return choose_named(self.stored_operating_point, self.named_points, name)

    @property
    def paths(self) -> list[Path] | None:
        """The model's files as named (several for a list); None for a module."""
        if _is_path(self.source):
            return [Path(self.source)]
        if isinstance(self.source, list) and all(_is_path(s) for s in self.source):
            return [Path(s) for s in self.source]
        return None

    # ---------------------------------------------------------------- read on first use

    @cached_property
    def digest(self) -> str:
        """SHA-256 of what decides its outputs: `record.model_digest` of its path(s) (what a
        predict folder's record keeps), or a loaded module's weights and operating point."""
        if self.paths is not None:
            from ptxseg.inference.record import model_digest

            return model_digest(self.source)
        members = self.source if isinstance(self.source, list) else [self.source]
        if len(members) == 1:
            return module_digest(members[0])
        sha = hashlib.sha256()
        for member in members:
            sha.update((member_digest(member)).encode())
        return sha.hexdigest()

    @cached_property
    def weights_sha256(self) -> str | None:
        """SHA-256 of one model's file (its weights for a folder): the PACS model name."""
        return weights_digest(self.source) if _is_path(self.source) else None

    @cached_property
    def card_facts(self) -> dict[str, Any]:
        """What the model card says about the files: `checkpoint` (name and hash), `ensemble`
        (members, folds, hashes, its operating point and stored evidence) and `info` (the
        training facts of `checkpoint.read_info`; the first member's for an ensemble)."""
        return model_facts(self.source, self.ensemble)


def member_digest(member: Any) -> str:
    """The digest of one member of a list (a path or a module)."""
    if _is_path(member):
        from ptxseg.inference.record import model_digest

        return model_digest(member)
    return module_digest(member)


def ensemble_facts(source: Any) -> dict[str, Any]:
    """The members of an ensemble (file or list), with their folds and weight hashes."""
    from ptxseg.inference.ensemble import read_ensemble

    if isinstance(source, list | tuple):
        paths, folds, op = [Path(p) for p in source], [None] * len(source), None
        name, stored = None, {}
    else:
        spec = read_ensemble(source)
        paths, folds, op, name = spec.members, spec.folds, spec.operating_point, spec.path.name
        stored = spec.extra
    members = [
        {
            "name": path.name if path.is_file() else f"{path.parent.name}/{path.name}",
            "fold": fold,
            "sha256": weights_digest(path),
            "path_on_disk": path,
        }
        for path, fold in zip(paths, folds, strict=True)
    ]
    return {
        "file": name,
        "members": members,
        "combination": "mean of the members' probabilities (test-time augmentation on top)",
        "operating_point": None if op is None else op.to_dict(),
        "stored": stored,
    }


def model_facts(source: Any, ensemble: bool | None = None) -> dict[str, Any]:
    """What the files of a model say for its card, read once: `ensemble` (members, folds,
    hashes), `checkpoint` (file or folder name and hash) and `info` (`checkpoint.read_info`:
    training config, operating points, validation; the first member's for an ensemble; None for
    an `.onnx` file or a module)."""
    from ptxseg.inference.ensemble import is_ensemble
    from ptxseg.model.checkpoint import read_info

    if isinstance(source, list | tuple) and not all(_is_path(s) for s in source):
        return {"info": None}
    if ensemble is None:
        ensemble = isinstance(source, list | tuple) or is_ensemble(source)
    if isinstance(source, list | tuple) or (ensemble and _is_path(source)):
        facts = ensemble_facts(source)
        info = read_info(facts["members"][0]["path_on_disk"])
        for member in facts["members"]:
            del member["path_on_disk"]
        return {"ensemble": facts, "info": info}
    if not _is_path(source):
        return {"info": None}
    path = Path(source)
    where = {"folder": path.name} if path.is_dir() else {"file": path.name}
    return {
        "checkpoint": {**where, "sha256": weights_digest(path)},
        "info": None if is_onnx_file(path) else read_info(path),
    }
