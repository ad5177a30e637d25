"""The train/val/test split of `ptxseg prepare`: grouped by patient, stratified, seeded, saved.

A work folder's `splits.json` is reused by every later run with the same inputs and arguments, so
results stay comparable; a run that would change it is an error that says how to split again.
The cross-validation folds of the same file are `ptxseg.data.folds`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ptxseg.data.dataset import SPLITS, SPLITS_FILE
from ptxseg.data.discovery import Record


def make_split(records: Sequence[Record], seed: int, val: float, test: float) -> dict[str, list]:
    """Stratified by positive/negative, grouped by PatientID where one is present, seeded."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"--val {val} and --test {test} must be fractions that sum below 1")
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.patient_id or f"image:{r.image_id}", []).append(r)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for positive in (True, False):
        keys = sorted(k for k, g in groups.items() if any(r.rles for r in g) == positive)
        keys = [keys[i] for i in rng.permutation(len(keys))]
        n_images = sum(len(groups[k]) for k in keys)
        quota = {"test": round(n_images * test), "val": round(n_images * val)}
        counts = {"test": 0, "val": 0}
        for key in keys:
            split = next((s for s in ("test", "val") if counts[s] < quota[s]), "train")
            if split != "train":
                counts[split] += len(groups[key])
            out[split].extend(r.image_id for r in groups[key])
    return {s: sorted(ids) for s, ids in out.items()}


def plan_split(work: Path, records: Sequence[Record], seed: int, val: float, test: float) -> dict:
    """The saved split when it matches this run, else a new one; nothing is written here.

    A saved split lists under "skipped" the images a previous run could not read; they stay out
    of it, so a rerun gives the same split. Delete splits.json to split again from scratch.
    """
    path = work / SPLITS_FILE
    ids = {r.image_id for r in records}
    if path.is_file():
        saved = json.loads(path.read_text())
        saved_ids = {i for s in SPLITS for i in saved[s]}
        skipped = set(saved.get("skipped", {}))
        same_args = (saved["seed"], saved["val_fraction"], saved["test_fraction"]) == (
            seed,
            val,
            test,
        )
        if saved_ids <= ids and ids - saved_ids <= skipped and same_args:
            return saved
        raise ValueError(
            f"{path} holds a split of {len(saved_ids)} images (seed {saved['seed']}, val "
            f"{saved['val_fraction']}, test {saved['test_fraction']}) that differs from this run's "
            f"{len(ids)} images (seed {seed}, val {val}, test {test}): use a new --out folder, or "
            f"delete {path} to split again (results on the old split are then not comparable)"
        )
    split = {"seed": seed, "val_fraction": val, "test_fraction": test}
    split.update(make_split(records, seed, val, test))
    return split


def drop_from_split(split: dict, failed: dict[str, str]) -> dict:
    """The split without the images that could not be read; they are listed under "skipped"."""
    if not failed:
        return split
    out = dict(split)
    for s in SPLITS:
        out[s] = [i for i in split[s] if i not in failed]
    out["skipped"] = dict(sorted({**split.get("skipped", {}), **failed}.items()))
    return out
