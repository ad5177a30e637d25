"""The operating point: how probabilities become a mask, in one type with one set of rules.

The winners' "triplet threshold": a mask is kept only if at least `min_area` pixels exceed `top`;
a kept mask is the pixels above `bottom`, a dropped one is empty. `min_area` counts pixels at the
model's input size. A plain threshold t is `top = bottom = t` with no area gate.

An operating point remembers the test-time augmentation (`tta`) and input size it was searched
with, because its thresholds fit that path only: applying it with another TTA warns. The same
dict (`to_dict`/`from_dict`) is what checkpoints, inference-model folders and ONNX metadata store;
`with_overrides` gives `--threshold`, `--top`, `--bottom` and `--min-area` their one meaning.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

TTA_MODES = ("none", "hflip")
FIELDS = ("top", "bottom", "min_area", "tta", "input_size")


class OperatingPointWarning(UserWarning):
    """An operating point is applied on another path than the one it was searched on."""


def check_tta(tta: str) -> str:
    """`tta` if it is a known test-time augmentation; otherwise a ValueError naming them."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}: expected one of {TTA_MODES}")
    return tta


@dataclass(frozen=True)
class OperatingPoint:
    """Thresholds (`top`, `bottom`, `min_area`) plus the path they were searched on.

    `tta` and `input_size` are None when unknown (a default or hand-set point).
    """

    top: float = 0.5
    bottom: float = 0.5
    min_area: int = 0
    tta: str | None = None
    input_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("top", "bottom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"operating point {name}={value!r}: expected a number in [0, 1]")
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"operating point {name}={value!r}: expected a number in [0, 1]")
            object.__setattr__(self, name, float(value))
        area = self.min_area
        if isinstance(area, bool) or not isinstance(area, int | float | np.integer):
            raise ValueError(f"operating point min_area={area!r}: expected a whole number >= 0")
        if area < 0 or float(area) != int(area):
            raise ValueError(f"operating point min_area={area!r}: expected a whole number >= 0")
        object.__setattr__(self, "min_area", int(area))
        if self.tta is not None:
            check_tta(self.tta)
        if self.input_size is not None:
            object.__setattr__(self, "input_size", int(self.input_size))

    @classmethod
    def plain(cls, threshold: float, **path: Any) -> OperatingPoint:
        """A plain threshold: pixels above `threshold`, no area gate."""
        return cls(top=threshold, bottom=threshold, min_area=0, **path)

    @property
    def is_plain(self) -> bool:
        return self.min_area == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        """From a stored dict; older files with only top, bottom and min_area read too."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"operating point must be a mapping with top, bottom, min_area; got {data!r}"
            )
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise ValueError(
                f"unknown operating point keys {sorted(unknown)}: expected {', '.join(FIELDS)}"
            )
        return cls(**data)

    @classmethod
    def coerce(cls, value: OperatingPoint | Mapping[str, Any] | None) -> OperatingPoint | None:
        """An OperatingPoint from itself, a stored dict, or None."""
        if value is None or isinstance(value, OperatingPoint):
            return value
        return cls.from_dict(value)

    def with_overrides(
        self,
        threshold: float | None = None,
        top: float | None = None,
        bottom: float | None = None,
        min_area: int | None = None,
    ) -> OperatingPoint:
        """This point with command-line values on top, the same in every command.

        `threshold` is a plain threshold: top = bottom = threshold and no area gate (unless
        `min_area` is given too). `top`, `bottom` and `min_area` replace single fields.
        """
        if threshold is not None and (top is not None or bottom is not None):
            raise ValueError(
                "give either --threshold or --top/--bottom, not both: --threshold sets top and "
                "bottom to one value"
            )
        fields = self.to_dict()
        if threshold is not None:
            fields.update(top=threshold, bottom=threshold, min_area=0)
        for name, value in (("top", top), ("bottom", bottom), ("min_area", min_area)):
            if value is not None:
                fields[name] = value
        return OperatingPoint.from_dict(fields)

    def with_path(self, tta: str, input_size: int) -> OperatingPoint:
        """The same thresholds, recorded as searched with `tta` at `input_size`."""
        return replace(self, tta=check_tta(tta), input_size=int(input_size))

    def describe(self) -> str:
        text = (
            f"threshold {self.bottom:g}"
            if self.is_plain
            else f"top {self.top:g}, min area {self.min_area} px, bottom {self.bottom:g}"
        )
        return text + (f" (searched with TTA {self.tta})" if self.tta else "")

    def warn_if_other_path(self, tta: str, input_size: int | None = None) -> None:
        """Warn when applied with another TTA or input size than it was searched with."""
        if self.tta is not None and self.tta != tta:
            warnings.warn(
                f"the operating point ({self.describe()}) was searched with TTA {self.tta!r} but "
                f"is applied with TTA {tta!r}: its thresholds may not fit; use --tta {self.tta} "
                "or search it again with this TTA (ptxseg evaluate --search)",
                OperatingPointWarning,
                stacklevel=3,
            )
        if self.input_size is not None and input_size is not None and self.input_size != input_size:
            warnings.warn(
                f"the operating point was searched at {self.input_size} px but the model runs at "
                f"{input_size} px: min_area counts pixels at the searched size",
                OperatingPointWarning,
                stacklevel=3,
            )

    def keep(self, prob: Any) -> Any:
        """Per image: is the mask kept (at least `min_area` pixels above `top`)? bool (N,).

        Returns the kind it was given: a numpy array, or a torch tensor on its device.
        """
        return (_flat(prob) > self.top).sum(1) >= self.min_area

    def apply(self, prob: Any) -> Any:
        """Binary mask(s) from probabilities: (H, W), (N, H, W) or (N, 1, H, W).

        Returns the same kind it was given: a numpy bool array or a torch bool tensor.
        """
        flat = _flat(prob)
        keep = (flat > self.top).sum(1) >= self.min_area
        return ((flat > self.bottom) & keep[:, None]).reshape(prob.shape)


def _flat(prob: Any) -> Any:
    """(N, pixels) view of probabilities; numpy stays numpy (no torch import: worker processes
    apply operating points too), tensors go through the metrics' shape rules."""
    if isinstance(prob, np.ndarray):
        if prob.ndim == 2:
            return prob.reshape(1, -1)
        if prob.ndim == 3 or (prob.ndim == 4 and prob.shape[1] == 1):
            return prob.reshape(prob.shape[0], -1)
        raise ValueError(
            f"probability has shape {prob.shape}: expected (H, W), (N, H, W) or (N, 1, H, W)"
        )
    from ptxseg.model.metrics import as_tensor, batched

    return batched(as_tensor(prob, "probability"), "probability")


DEFAULT = OperatingPoint()
"""A plain threshold at 0.5: what a model without a stored operating point uses."""

DEFAULT_NAME = "default"
"""The name of a model's main operating point (the competition-Dice optimum) among its named
ones."""
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def named_points(stored: Mapping[str, Any] | None) -> dict[str, OperatingPoint]:
    """The named operating points stored with a model (`operating_points` of its description:
    name -> {"operating_point": ..., "target": ..., "validation": ...}), as OperatingPoints."""
    points = {}
    for name, entry in (stored or {}).items():
        if not isinstance(entry, Mapping) or "operating_point" not in entry:
            raise ValueError(
                f"stored operating point {name!r} has no 'operating_point': expected what "
                "`ptxseg evaluate --operating-points` stores"
            )
        points[str(name)] = OperatingPoint.from_dict(entry["operating_point"])
    return points


def choose_named(
    main: OperatingPoint | None, stored: Mapping[str, Any] | None, name: str | None
) -> OperatingPoint | None:
    """The point called `name` (None or "default": the main one); an unknown name is a
    ValueError that lists the stored ones."""
    if name is None or name == DEFAULT_NAME:
        return main
    points = named_points(stored)
    if name not in points:
        known = ", ".join([DEFAULT_NAME, *sorted(points)])
        hint = (
            ""
            if points
            else "; this model stores none: search them with `ptxseg evaluate --search "
            "--operating-points triage:sensitivity=0.95,rule-in:specificity=0.95`"
        )
        raise ValueError(f"unknown operating point {name!r}: this model has {known}{hint}")
    return points[name]
