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


def option_field(default: Any, help: str, **option: Any) -> Any:
    """A config key that is also an option of `ptxseg train` and `ptxseg cv` (built from these
    fields by `ptxseg.cli.config_options`): its default, its help text, and where needed the
    flag (`flag="--data"`; default: the key's name), its type where it is not the field's
    (`kind=Path`) and checks such as `min=1`."""
    return field(default=default, metadata={"help": help, **option})


@dataclass
class DataConfig:
    """Where the prepared data is and how it is fed to the model."""

    work: str = option_field(
        "", "Work folder written by `ptxseg prepare`.", flag="--data", kind=Path
    )
    size: int = option_field(256, "Training resolution (a cached size, multiple of 32).")
    # the strategy names are `ptxseg.training.augmentations.STRATEGIES`
    aug: str = option_field(
        "full", "Augmentation: none, geometric, photometric, noise, elastic, full."
    )
    # Where augmentation runs: in the loader's worker processes, or on the device's batch after
    # the transfer (`ptxseg.training.batch_augment`); auto: on the device when it is a GPU.
    augment_on: str = option_field(
        "auto",
        "Where augmentation runs: loader (CPU worker processes) or device (the batch after its "
        "transfer); default: device on a GPU, loader on the CPU.",
    )
    batch_size: int = option_field(8, "Images per batch and per device.", min=1)
    workers: int = option_field(2, "DataLoader worker processes.")
    # None: natural share, shuffled; 0.5; linear "0.8:0.4"; steps "0.8@0,0.4@10"
    # (ptxseg.util.schedule)
    positive_fraction: float | str | None = option_field(
        None,
        "Share of positive images drawn per epoch: 0.5; linear over the epochs 0.8:0.4; steps "
        "0.8@0,0.6@10,0.4@20 (from epoch 10 on: 0.6). Default: the natural share.",
    )
    samples_per_epoch: int | None = None  # with positive_fraction; None: size of the train split
    fold: int | None = option_field(  # None: the train/val split
        None,
        "Cross-validation: train on every other fold and validate on fold K (a work folder "
        "prepared with --folds).",
    )


@dataclass
class ModelConfig:
    """The U-Net: encoder, its weights, decoder options and the input normalisation."""

    encoder: str = option_field(
        "resnet50", "resnet50, efficientnet-b0..b7, xception, or any smp encoder name."
    )
    encoder_weights: str = option_field(
        "imagenet", "imagenet (download), none (random) or PATH of a saved encoder state dict."
    )
    decoder_attention: str | None = option_field(None, "Decoder attention: scse (or none).")
    aux_head: bool = option_field(False, "Empty vs pneumothorax head on the encoder.")
    in_channels: int = 1  # grayscale input; pretrained first convolutions are folded by smp
    bn_momentum: float | None = None  # None: the encoder's own; 0.1 for short runs
    # Filled in at build time from the encoder's own preprocessing parameters, then saved.
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class LossConfig:
    """Weights of the combo loss terms and of the auxiliary classification loss."""

    dice_weight: float = option_field(1.0, "Weight of the Dice loss.")
    bce_weight: float = option_field(1.0, "Weight of the BCE loss.")
    focal_weight: float = option_field(0.0, "Weight of the focal loss (0: off).")
    aux_weight: float = option_field(0.2, "Weight of the auxiliary head's BCE.")


@dataclass
class OptimConfig:
    """Adam, the learning-rate schedule and early stopping."""

    lr: float = option_field(1e-4, "Adam learning rate.")
    weight_decay: float = option_field(0.0, "Adam weight decay.")
    scheduler: str = option_field(
        "plateau", "plateau (halve on stalled val Dice) or cosine (with warm-up)."
    )
    warmup_epochs: int = option_field(0, "Linear warm-up epochs (cosine).")
    lr_patience: int = 3  # plateau: epochs without improvement before the lr is halved
    lr_factor: float = 0.5
    patience: int = option_field(10, "Early stopping: epochs without a better val Dice.")


@dataclass
class TrainerConfig:
    """The Lightning trainer: length, hardware, precision, seeding and the run folder."""

    out: str = option_field(
        "runs/default", "Run folder (config, checkpoints, metrics, logs).", flag="--out", kind=Path
    )
    epochs: int = option_field(30, "Maximum number of epochs.")
    precision: str = option_field(  # auto: bf16-mixed on a bf16-capable GPU, else 32
        "auto", "auto (bf16-mixed on a GPU, 32 on the CPU), 32, bf16-mixed or 16-mixed."
    )
    accelerator: str = option_field("auto", "auto, cpu or gpu.")
    devices: int = option_field(1, "Devices per node; >1 trains with DDP.")
    num_nodes: int = option_field(1, "Nodes (with SLURM or torchrun).")
    channels_last: bool | None = option_field(  # None: on for GPUs, off for the CPU
        None, "channels_last memory format (default: on for a GPU, off for the CPU)."
    )
    compile: bool | None = option_field(  # None: on for GPUs
        None, "torch.compile the training step (default: on for a GPU, off for the CPU)."
    )
    seed: int = option_field(42, "Seed of weights, sampler and augmentation.")
    limit_batches: float | None = option_field(
        None, "Batches per epoch: a fraction (<=1) or a count (quick checks)."
    )
    resume: bool = option_field(False, "Continue from OUT/checkpoints/last.ckpt.")
    progress_bar: bool = option_field(True, "Rich progress bar.", flag="--progress")
    average_top: int = option_field(  # >1: the N best epochs by val competition Dice
        0,
        "Keep the N checkpoints with the best val competition Dice and ship their weight "
        "average (BatchNorm recomputed on training batches) as RUN/model. 0: off.",
    )
    average_bn_batches: int = option_field(
        100, "Training batches that recompute BatchNorm after averaging (default 100)."
    )


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
