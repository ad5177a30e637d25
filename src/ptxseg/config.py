"""The typed training configuration: dataclass sections, YAML presets and command-line overrides.

A run's config is resolved in three layers: the dataclass defaults, a YAML file (a shipped preset
such as `study` or a path), then explicit overrides (`{"optim.lr": 1e-4}` or the CLI's flags).
Unknown keys are errors that name the key and the valid ones. The resolved config is saved as
`config.yaml` in the run folder and inside every checkpoint, so a checkpoint alone rebuilds
its model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ptxseg.util import atomic
from ptxseg.util.schedule import SYNTAX, PositiveFraction

SCHEDULERS = ("plateau", "cosine")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
AUGMENT_ON = ("auto", "loader", "device")
DECODER_ATTENTIONS = (None, "scse")


@dataclass
class DataConfig:
    """Where the prepared data is and how it is fed to the model."""

    work: str = ""  # the folder written by `ptxseg prepare`
    size: int = 256  # the cached resolution used for training (multiple of 32)
    aug: str = "full"  # augmentation strategy name (see `ptxseg.training.augmentations.STRATEGIES`)
    # Where augmentation runs: in the loader's worker processes, or on the device's batch after
    # the transfer (`ptxseg.training.batch_augment`); auto: on the device when it is a GPU.
    augment_on: str = "auto"
    batch_size: int = 8
    workers: int = 2
    # None: natural share, shuffled; 0.5; linear "0.8:0.4"; steps "0.8@0,0.4@10"
    # (ptxseg.util.schedule)
    positive_fraction: float | str | None = None
    samples_per_epoch: int | None = None  # with positive_fraction; None: size of the train split
    fold: int | None = None  # None: the train/val split; k: train on the other folds, validate on k


@dataclass
class ModelConfig:
    """The U-Net: encoder, its weights, decoder options and the input normalisation."""

    encoder: str = "resnet50"
    encoder_weights: str = "imagenet"  # "imagenet", "none" or a path to a local state dict
    decoder_attention: str | None = None  # None or "scse"
    aux_head: bool = False  # empty vs pneumothorax classification head on the encoder
    in_channels: int = 1  # grayscale input; pretrained first convolutions are folded by smp
    bn_momentum: float | None = None  # None: the encoder's own; 0.1 for short runs
    # Filled in at build time from the encoder's own preprocessing parameters, then saved.
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class LossConfig:
    """Weights of the combo loss terms and of the auxiliary classification loss."""

    dice_weight: float = 1.0
    bce_weight: float = 1.0
    focal_weight: float = 0.0
    aux_weight: float = 0.2


@dataclass
class OptimConfig:
    """Adam, the learning-rate schedule and early stopping."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # "plateau" on validation Dice, or "cosine" with warm-up
    warmup_epochs: int = 0
    lr_patience: int = 3  # plateau: epochs without improvement before the lr is halved
    lr_factor: float = 0.5
    patience: int = 10  # early stopping on validation Dice


@dataclass
class TrainerConfig:
    """The Lightning trainer: length, hardware, precision, seeding and the run folder."""

    out: str = "runs/default"
    epochs: int = 30
    precision: str = "auto"  # auto: bf16-mixed on a bf16-capable GPU, else 32
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    channels_last: bool | None = None  # None: on for GPUs, off for the CPU
    compile: bool | None = None  # torch.compile the training step; None: on for GPUs
    seed: int = 42
    limit_batches: float | None = None  # fraction (<=1.0) or number of batches per epoch
    resume: bool = False
    progress_bar: bool = True
    average_top: int = 0  # >1: average the weights of the N best epochs by val competition Dice
    average_bn_batches: int = 100  # training batches that recompute BatchNorm after averaging


@dataclass
class TrainConfig:
    """Everything one training run needs, in sections."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict; unknown sections or keys raise ValueError naming them."""
        config = cls()
        return apply_overrides(config, flatten(values))


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _section_fields(config: TrainConfig, section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(getattr(config, section))]


def valid_keys(config: TrainConfig | None = None) -> list[str]:
    """All dotted keys (`section.field`) a config accepts."""
    config = config or TrainConfig()
    return [f"{s}.{k}" for s in SECTIONS for k in _section_fields(config, s)]


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """`{"optim": {"lr": 1}}` -> `{"optim.lr": 1}`; non-dict section values are kept for errors."""
    if not isinstance(values, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(values).__name__}")
    flat: dict[str, Any] = {}
    for section, body in values.items():
        if isinstance(body, dict):
            for key, value in body.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[str(section)] = body
    return flat


def _coerce(key: str, value: Any, default: Any, annotation: str) -> Any:
    """Check a value against the field's type annotation (strings from YAML or the CLI)."""
    optional = "None" in annotation
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if optional:
            return None
        if "str" in annotation and value is not None:
            return str(value)
        raise ValueError(f"config key {key!r} cannot be empty: expected {annotation}")
    try:
        if annotation.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if annotation.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation.startswith("float | str"):  # a number, else text that validate() checks
            try:
                return float(value)
            except ValueError:
                return str(value).strip()
        if annotation.startswith("float"):
            return float(value)
        if annotation.startswith("list"):
            return [float(v) for v in value]
        if annotation.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"config key {key!r} expects {annotation}, got {value!r} ({type(value).__name__})"
        ) from None
    return value


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Set dotted keys (`"optim.lr"`) on a copy of `config`, checking names and types."""
    config = dataclasses.replace(
        config, **{s: dataclasses.replace(getattr(config, s)) for s in SECTIONS}
    )
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(
                f"unknown config key {key!r}: expected 'section.key' with a section among "
                f"{', '.join(SECTIONS)}; valid keys: {', '.join(valid_keys(config))}"
            )
        body = getattr(config, section)
        fields = {f.name: f for f in dataclasses.fields(body)}
        if name not in fields:
            raise ValueError(
                f"unknown config key {key!r}: valid keys in section {section!r} are "
                f"{', '.join(fields)}"
            )
        annotation = str(fields[name].type)
        setattr(body, name, _coerce(key, value, getattr(body, name), annotation))
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Value checks that types alone do not catch; messages say what is expected."""
    checks = [
        (config.data.size % 32 == 0 and config.data.size > 0, "data.size", "a multiple of 32"),
        (config.data.batch_size > 0, "data.batch_size", "> 0"),
        (config.data.workers >= 0, "data.workers", ">= 0"),
        (_positive_fraction_ok(config.data.positive_fraction), "data.positive_fraction", SYNTAX),
        (config.data.fold is None or config.data.fold >= 0, "data.fold", "null or >= 0"),
        (config.trainer.average_top >= 0, "trainer.average_top", ">= 0 (0 or 1: off)"),
        (config.trainer.average_bn_batches >= 0, "trainer.average_bn_batches", ">= 0"),
        (config.optim.scheduler in SCHEDULERS, "optim.scheduler", " or ".join(SCHEDULERS)),
        (config.optim.lr > 0, "optim.lr", "> 0"),
        (config.trainer.precision in PRECISIONS, "trainer.precision", ", ".join(PRECISIONS)),
        (config.data.augment_on in AUGMENT_ON, "data.augment_on", ", ".join(AUGMENT_ON)),
        (config.trainer.epochs > 0, "trainer.epochs", "> 0"),
        (config.trainer.devices > 0, "trainer.devices", "> 0"),
        (config.trainer.num_nodes > 0, "trainer.num_nodes", "> 0"),
        (
            config.model.decoder_attention in DECODER_ATTENTIONS,
            "model.decoder_attention",
            "null or scse",
        ),
        (config.model.in_channels in (1, 3), "model.in_channels", "1 or 3"),
        (
            config.trainer.limit_batches is None
            or 0 < config.trainer.limit_batches <= 1
            or (
                config.trainer.limit_batches > 1
                and float(config.trainer.limit_batches).is_integer()
            ),
            "trainer.limit_batches",
            "a fraction of the batches in (0, 1] such as 0.25, or a whole number of batches "
            "such as 10 (--limit-batches)",
        ),
    ]
    for ok, key, expected in checks:
        if not ok:
            value = getattr(getattr(config, key.split(".")[0]), key.split(".")[1])
            raise ValueError(f"config key {key!r} = {value!r}: expected {expected}")


def _positive_fraction_ok(value: float | str | None) -> bool:
    try:
        PositiveFraction.parse(value)
    except ValueError:
        return False
    return True


def preset_names() -> list[str]:
    """Names of the presets shipped in `ptxseg/presets/`."""
    folder = resources.files("ptxseg") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path_or_preset: str | Path) -> dict[str, Any]:
    """Read a config YAML from a path, or a shipped preset by name (`study`, `demo`)."""
    path = Path(path_or_preset)
    if not path.is_file():
        name = str(path_or_preset)
        if name in preset_names():
            text = (resources.files("ptxseg") / "presets" / f"{name}.yaml").read_text()
            return yaml.safe_load(text) or {}
        raise ValueError(
            f"config {str(path_or_preset)!r} is neither a file nor a shipped preset; "
            f"presets: {', '.join(preset_names())}"
        )
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"cannot parse config file {path}: {error}") from None
    return values


def load_config(
    path_or_preset: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Defaults, then a YAML file or preset, then dotted overrides; all checked."""
    config = TrainConfig()
    if path_or_preset is not None:
        try:
            config = apply_overrides(config, flatten(read_yaml(path_or_preset)))
        except ValueError as error:
            raise ValueError(f"in config {path_or_preset}: {error}") from None
    return apply_overrides(config, overrides or {})


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically (temporary name, then rename)."""
    return atomic.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
