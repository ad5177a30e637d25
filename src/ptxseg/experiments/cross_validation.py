"""`ptxseg cv` (`run_cv`): train every fold, ensemble the folds, choose the ensemble's operating
point out of fold.

The cross-validation folder:
```
CV/cv.json          the options (work folder, folds, config, overrides); another set is an error
CV/fold<k>/         the run of fold k (`ptxseg train --fold k --out CV/fold<k>`); its `done.json`
                    (the run summary) is written last and marks the fold finished
CV/ensemble.json    the members CV/fold<k>/model and the operating point searched on the pooled
                    out-of-fold predictions (`ptxseg.evaluation.oof`)
CV/eval/oof/        that out-of-fold evaluation: each fold and pooled
```
A rerun skips finished folds and continues an interrupted one from its `last.ckpt`. Folds are
independent: `--folds-to-run i/n` (0-based, `ptxseg.util.shards`) runs every n-th fold from i, so n
GPUs or machines can share the folder; the run that finds every fold finished writes the
ensemble and its out-of-fold evaluation (rerun once without `--folds-to-run` to make sure).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptxseg.config import TrainConfig, load_config
from ptxseg.data.folds import read_folds
from ptxseg.experiments.jobs import EventHandler, Job, JobPolicy, read_done, run_jobs
from ptxseg.inference.ensemble import ENSEMBLE_FILE, write_ensemble
from ptxseg.util.jsonio import read_json, write_json
from ptxseg.util.run_folders import CvFolder, EvalFolder, RunFolder
from ptxseg.util.shards import parse_shard, take_shard

SPEC = CvFolder.SPEC
SPEC_KEYS = ("data", "folds", "config", "overrides")


def fold_dir(cv_dir: Path, fold: int) -> Path:
    return CvFolder(Path(cv_dir)).fold(fold).root


def fold_config(
    cv_dir: Path,
    fold: int,
    data: Path,
    config: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The training config of one fold: the base config, the overrides, then the fold's keys."""
    keys = dict(overrides or {})
    keys.update(
        {
            "data.work": str(data),
            "data.fold": fold,
            "trainer.out": str(fold_dir(cv_dir, fold)),
        }
    )
    return load_config(config, keys)


def check_folds(data: Path, folds: int) -> None:
    """`folds` must be the number of folds `prepare` saved in the work folder."""
    saved = len(read_folds(data))
    if saved != folds:
        raise ValueError(
            f"{data} holds {saved} folds, not {folds}: use --folds {saved}, or prepare a work "
            f"folder with --folds {folds}"
        )


def write_spec(cv_dir: Path, spec: dict[str, Any]) -> None:
    """Record the options in `CV/cv.json`; other options in the same folder are an error (the
    folds would not belong together)."""
    path = Path(cv_dir) / SPEC
    old = read_json(path, default=None)
    if old is not None:
        diff = {k: (old.get(k), spec.get(k)) for k in SPEC_KEYS if old.get(k) != spec.get(k)}
        if diff:
            raise ValueError(
                f"{path} was written for other options (old -> new: {diff}); use the same "
                "options to resume, or another --out"
            )
    Path(cv_dir).mkdir(parents=True, exist_ok=True)
    write_json(path, spec)


def select_folds(folds: int, spec: str | None) -> list[int]:
    """The folds of shard `i/n` of `--folds-to-run` (all of them without it)."""
    index, count = parse_shard(spec, "--folds-to-run")
    return take_shard(list(range(folds)), index, count)


FoldTrainer = Callable[[TrainConfig], Path]


def run_folds(
    cv_dir: Path,
    folds: list[int],
    make_config: Callable[[int], TrainConfig],
    train: FoldTrainer,
    on_event: EventHandler | None = None,
) -> dict[int, dict]:
    """Train the given folds one after another, skipping finished ones (resumable); returns the
    summaries of the folds that are finished now. A failing fold stops the list."""

    def work(job: Job) -> dict:
        config = make_config(job.key)
        config.trainer.resume = Path(job.checkpoint).is_file()
        train(config)
        return read_json(RunFolder(config.trainer.out).train_summary, default=None) or {}

    jobs = [
        Job(k, fold_dir(cv_dir, k), {"fold": k}, RunFolder(fold_dir(cv_dir, k)).last_checkpoint)
        for k in folds
    ]
    return run_jobs(jobs, work, JobPolicy(seconds_key="cv_seconds", on_event=on_event))


def fold_done(cv_dir: Path, fold: int) -> dict | None:
    """The `done.json` of a finished fold, or None."""
    return read_done(fold_dir(cv_dir, fold))


def make_ensemble(cv_dir: Path, folds: int) -> Path:
    """`CV/ensemble.json` over the folds' inference models; an existing file with the same
    members keeps its operating point."""
    members = [fold_dir(cv_dir, k) / "model" for k in range(folds)]
    path = Path(cv_dir) / ENSEMBLE_FILE
    old = read_json(path, default=None)
    if old is not None:
        same = [m.get("path") for m in old.get("members", [])] == [
            f"fold{k}/model" for k in range(folds)
        ]
        if same:
            return path
    return write_ensemble(path, members, list(range(folds)))


def training_budget(cv_dir: Path, folds: int) -> dict[str, Any]:
    """Epochs, images seen and wall time of every fold (the cost of the ensemble)."""
    rows = [fold_done(cv_dir, k) or {} for k in range(folds)]
    return {
        "folds": folds,
        "epochs": [r.get("epochs_run") for r in rows],
        "train_images": sum(int(r.get("train_images") or 0) for r in rows),
        "wall_time_s": round(sum(float(r.get("wall_time_s") or 0) for r in rows), 1),
    }


def finish_cv(
    cv_dir: Path,
    data: Path,
    folds: int,
    tta: str | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the ensemble of the folds and evaluate it out of fold (which searches and stores
    its operating point), unless that was done before with the same TTA; returns the OOF
    summary."""
    from ptxseg.evaluation.oof import evaluate_oof
    from ptxseg.inference.ensemble import read_ensemble

    path = make_ensemble(cv_dir, folds)
    out = CvFolder(Path(cv_dir)).oof.root
    stored = read_ensemble(path).operating_point
    previous = read_json(EvalFolder(out).summary, default=None)
    if stored is not None and previous is not None and (tta is None or stored.tta == tta):
        return previous
    return evaluate_oof(
        path,
        data,
        out,
        tta=tta or "none",
        search=True,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )


@dataclass(frozen=True)
class CvOptions:
    """What `ptxseg cv` was asked: the work folder and its fold count, the cross-validation
    folder, the training config (preset or YAML, then dotted overrides), which folds this process
    trains, and how the ensemble is evaluated out of fold."""

    data: Path
    folds: int
    out: Path
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    folds_to_run: str | None = None
    tta: str | None = None
    device: str = "cpu"
    eval_batch_size: int = 8

    def spec(self) -> dict[str, Any]:
        """What `CV/cv.json` records (`SPEC_KEYS`)."""
        return {
            "data": str(self.data),
            "folds": self.folds,
            "config": self.config,
            "overrides": self.overrides,
        }


@dataclass(frozen=True)
class CvOutcome:
    """What a `run_cv` call did: the folds it was to train, those finished now (by this call or
    before), the folds not finished yet (other shards, or failed), and the out-of-fold summary
    of the ensemble once every fold is finished (None before)."""

    todo: list[int]
    finished: dict[int, dict]
    missing: list[int]
    oof: dict[str, Any] | None


def plan_cv(options: CvOptions) -> list[int]:
    """Check the options and record them in `CV/cv.json`; returns the folds this process trains.
    Bad options fail here, before anything is written."""
    check_folds(options.data, options.folds)
    todo = select_folds(options.folds, options.folds_to_run)
    load_config(options.config, options.overrides)
    write_spec(options.out, options.spec())
    return todo


def run_cv(
    options: CvOptions,
    on_event: EventHandler | None = None,
    train: FoldTrainer | None = None,
) -> CvOutcome:
    """Cross-validation in its order: check and record the options, train this process's folds
    (resumably), then, once every fold is finished, write the ensemble of the folds and evaluate
    it out of fold (which searches and stores its operating point). `train` defaults to
    `ptxseg.training.fit.fit`; `on_event` hears each fold (`ptxseg.experiments.jobs`)."""
    if train is None:
        from ptxseg.training.fit import fit as train
    todo = plan_cv(options)
    out, data = options.out, options.data
    finished = run_folds(
        out,
        todo,
        lambda k: fold_config(out, k, data, options.config, options.overrides),
        train,
        on_event,
    )
    missing = [k for k in range(options.folds) if fold_done(out, k) is None]
    oof = None
    if not missing:
        oof = finish_cv(
            out, data, options.folds, options.tta, options.device, options.eval_batch_size
        )
    return CvOutcome(todo, finished, missing, oof)
