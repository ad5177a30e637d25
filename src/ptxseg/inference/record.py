"""What made a `predict` output folder, so that a rerun into it notices when anything changed.

A predict folder's `made-by.json` (`ptxseg.util.path_guard.mark`, holds "results") records the
settings
that change its results: the model's digest, the operating point, TTA, runtime, precision,
device, decoder, compilation, batch size and the outputs asked for. Each is kept twice: what the
user asked for (`asked`: the raw option values, e.g. `auto` or no `--tta`) and what that resolved
to (`resolved`: what the Predictor runs). A rerun resolves its own settings and compares them
with the record (Make and Snakemake compare what made a file with what would make it now): when
they differ it refuses in one line naming the difference, so a folder never mixes results of two
models or thresholds. `--overwrite` predicts every image again and records the new settings.

Whether each finished image's input is still the file it was predicted from is the pipeline's
check (`pipeline.same_input`), against the size, mtime and digest its findings record.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptxseg import __version__
from ptxseg.util import path_guard

COMMAND = "predict"
MODEL_WEIGHTS = "model.safetensors"  # an inference-model folder's weights (ptxseg.model.checkpoint)


OVERRIDES = ("threshold", "top", "bottom", "min_area")  # the options that set the operating point


class SettingsChanged(ValueError):
    """A rerun into a folder of results made with other settings; one line with the fix."""


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def model_digest(model: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """SHA-256 over what a model option names: a file's bytes; an inference-model folder's
    weights and description; an ensemble file's members (and the file); several models in
    their order."""
    from ptxseg.inference.ensemble import ensemble_file, is_ensemble, read_ensemble

    if isinstance(model, list | tuple):
        parts = [model_digest(m) for m in model]
    elif is_ensemble(model):
        spec = read_ensemble(model)
        parts = [file_digest(ensemble_file(model))] + [model_digest(m) for m in spec.members]
    elif Path(model).is_dir():
        folder = Path(model)
        parts = [file_digest(folder / MODEL_WEIGHTS), file_digest(folder / path_guard.MODEL_INFO)]
    else:
        return file_digest(model)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def settings(predictor, asked: dict[str, Any], **resolved: Any) -> dict[str, Any]:
    """The record of a run: `asked` (raw option values) and what they resolved to.

    The model's digest is the one its `LoadedModel` computed (the files are not read again);
    `resolved` adds what the caller decided beyond the Predictor (outputs, decoder, ...)."""
    device = str(predictor.device)
    return {
        "asked": dict(asked),
        "resolved": {
            "model_sha256": predictor.loaded.digest,
            "encoder": predictor.encoder,
            "input_size": predictor.input_size,
            "operating_point": predictor.operating_point.to_dict(),
            "tta": predictor.tta,
            "runtime": predictor.runtime,
            "precision": predictor.precision,
            "device": "cuda" if device.startswith("cuda") else device,
            "batch_size": predictor.batch_size,
            **resolved,
        },
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two records' resolved settings, in words (asked values beside)."""
    found = []
    before, now = old.get("resolved") or {}, new.get("resolved") or {}
    asked_before, asked_now = old.get("asked") or {}, new.get("asked") or {}
    for key in sorted(set(before) | set(now)):
        if before.get(key) == now.get(key):
            continue
        if key == "operating_point" and isinstance(before.get(key), dict):
            parts = [
                f"{k} {before[key].get(k)} -> {now.get(key, {}).get(k)}"
                for k in before[key]
                if before[key].get(k) != (now.get(key) or {}).get(k)
            ]
            asked = [
                f"--{k.replace('_', '-')} {asked_before.get(k)} -> {asked_now.get(k)}"
                for k in OVERRIDES
                if asked_before.get(k) != asked_now.get(k)
            ]
            found.append(
                f"operating point {', '.join(parts)}"
                + (f" (asked {', '.join(asked)})" if asked else "")
            )
            continue
        text = f"{key.replace('_', ' ')} {_short(before.get(key))} -> {_short(now.get(key))}"
        if key in asked_now and asked_before.get(key) != asked_now.get(key):
            text += f" (asked {_short(asked_before.get(key))} -> {_short(asked_now.get(key))})"
        found.append(text)
    return found


def _short(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:  # a digest
        return value[:12]
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def holds_results(out: Path) -> bool:
    """True when `out` already holds finished predictions or their tables."""
    findings = out / "findings"
    if findings.is_dir() and any(p.suffix == ".json" for p in findings.iterdir()):
        return True
    return any(out.glob("summary*.csv"))


def claim_folder(out: str | os.PathLike, record: dict[str, Any], overwrite: bool) -> dict | None:
    """Check `record` against what made `out`, then record it (before any image is written).

    Returns the earlier record (None for a new folder). Raises SettingsChanged when `out` holds
    results of other settings, or of a ptxseg that did not record them, unless `overwrite`."""
    out = Path(out)
    earlier = path_guard.made_by(out)
    if not overwrite:
        if earlier is not None and earlier.get("command") != COMMAND:
            raise SettingsChanged(
                f"--out {out} was written by `ptxseg {earlier.get('command')}`, not predict: "
                "choose a new --out"
            )
        if earlier is None and holds_results(out):
            raise SettingsChanged(
                f"--out {out} holds results without a record of their settings (written by an "
                "older ptxseg): predict into a new --out, or pass --overwrite to predict every "
                "image again"
            )
        changed = differences(earlier, record) if earlier is not None else []
        if changed:
            raise SettingsChanged(
                f"--out {out} holds results made with other settings ({'; '.join(changed)}): "
                "predict into a new --out, or pass --overwrite to predict every image again "
                "with these"
            )
    out.mkdir(parents=True, exist_ok=True)
    path_guard.mark(out, COMMAND, "results", ptxseg_version=__version__, **record)
    return earlier
