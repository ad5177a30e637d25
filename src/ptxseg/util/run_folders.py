"""The names of the files in a training run, an evaluation and a cross-validation folder.

Training writes a run folder, `evaluate` an evaluation folder, `cv` a folder of folds; the
commands, the report and the benchmarks find the files by these names. One place holds them, so
a reader and a writer cannot drift apart. The folders that `predict`, `prepare` and `synth`
write are named here by what they own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

MADE_BY = "made-by.json"
"""Says which command made a folder and with what (written and read by `ptxseg.util.path_guard`)."""

DONE = "done.json"
"""Written last into a finished job's folder (a fold, an ablation cell): its summary."""

PREDICT_WRITES = (
    "masks",
    "findings",
    "overlays",
    "seg",
    "sr",
    "explain",
    "summary*.csv",
    "submission*.csv",
    "run*.json",
    MADE_BY,
    ".ptxseg*",
)
"""Every name `predict` may write into its --out (its output guard)."""

PREPARE_WRITES = (
    "cache",
    "manifest.csv",
    "splits.json",
    "annotations.csv",
    "unmatched.json",
    ".ptxseg*",
)
"""Every name `prepare` may write into a work folder (its output guard)."""

SYNTH_WRITES = (
    "dicom-images-train",
    "train-rle.csv",
    "metadata.csv",
    MADE_BY,
    ".synth-*",
    ".ptxseg*",
)
"""Every name `synth` may write into its folder (its output guard)."""


@dataclass(frozen=True)
class EvalFolder:
    """What `evaluate` writes for one split (`RUN/eval/<split>`, or any `--out`)."""

    root: Path

    SUMMARY: ClassVar[str] = "summary.json"
    PER_IMAGE: ClassVar[str] = "per_image.csv"
    ROC: ClassVar[str] = "roc.csv"
    PANELS: ClassVar[str] = "panels.npz"
    SUBGROUPS: ClassVar[str] = "subgroups.csv"
    CALIBRATION: ClassVar[str] = "calibration.csv"
    COMPARISON: ClassVar[str] = "comparison.json"

    @property
    def summary(self) -> Path:
        return Path(self.root) / self.SUMMARY

    @property
    def per_image(self) -> Path:
        return Path(self.root) / self.PER_IMAGE

    @property
    def roc(self) -> Path:
        return Path(self.root) / self.ROC

    @property
    def panels(self) -> Path:
        return Path(self.root) / self.PANELS

    @property
    def subgroups(self) -> Path:
        return Path(self.root) / self.SUBGROUPS

    @property
    def calibration(self) -> Path:
        return Path(self.root) / self.CALIBRATION

    def probabilities(self, split: str) -> Path:
        """`probs-<split>.npz`: every model-size probability map (only when asked)."""
        return Path(self.root) / f"probs-{split}.npz"


@dataclass(frozen=True)
class RunFolder:
    """What `train` writes: the resolved config, training checkpoints, the inference model,
    the per-epoch metrics, logs and the summary; `eval/<split>` holds its evaluations."""

    root: Path

    CONFIG: ClassVar[str] = "config.yaml"
    CHECKPOINTS: ClassVar[str] = "checkpoints"
    MODEL: ClassVar[str] = "model"
    METRICS: ClassVar[str] = "metrics.csv"
    LOGS: ClassVar[str] = "logs"
    TRAIN_SUMMARY: ClassVar[str] = "train_summary.json"
    EVAL: ClassVar[str] = "eval"
    WRITES: ClassVar[tuple[str, ...]] = (
        CONFIG,
        CHECKPOINTS,
        MODEL,
        METRICS,
        LOGS,
        TRAIN_SUMMARY,
        ".ptxseg*",
    )
    """Every name `train` may write into the folder (its output guard)."""

    @property
    def config(self) -> Path:
        return Path(self.root) / self.CONFIG

    @property
    def checkpoints(self) -> Path:
        return Path(self.root) / self.CHECKPOINTS

    @property
    def best_checkpoint(self) -> Path:
        """The best epoch's training checkpoint (with the optimizer state)."""
        return self.checkpoints / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        """The last epoch's training checkpoint: what `--resume` continues from."""
        return self.checkpoints / "last.ckpt"

    @property
    def averaged_checkpoint(self) -> Path:
        """The weight average of the best epochs (`trainer.average_top`)."""
        return self.checkpoints / "averaged.ckpt"

    @property
    def model(self) -> Path:
        """The inference model (weights without optimizer state, and its operating point)."""
        return Path(self.root) / self.MODEL

    @property
    def metrics(self) -> Path:
        return Path(self.root) / self.METRICS

    @property
    def logs(self) -> Path:
        return Path(self.root) / self.LOGS

    @property
    def train_summary(self) -> Path:
        return Path(self.root) / self.TRAIN_SUMMARY

    @property
    def done(self) -> Path:
        """Written last when the run is one job of a list (a fold, an ablation cell)."""
        return Path(self.root) / DONE

    def eval(self, split: str = "test") -> EvalFolder:
        """The evaluation of this run on `split`."""
        return EvalFolder(Path(self.root) / self.EVAL / split)


@dataclass(frozen=True)
class CvFolder:
    """What `cv` writes: its options, one run folder per fold, and the out-of-fold evaluation."""

    root: Path

    SPEC: ClassVar[str] = "cv.json"

    @property
    def spec(self) -> Path:
        return Path(self.root) / self.SPEC

    def fold(self, k: int) -> RunFolder:
        return RunFolder(Path(self.root) / f"fold{k}")

    @property
    def oof(self) -> EvalFolder:
        return EvalFolder(Path(self.root) / RunFolder.EVAL / "oof")
