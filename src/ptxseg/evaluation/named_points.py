"""Named operating points: the same model made more sensitive (triage) or more specific (rule-in).

`--operating-points triage:sensitivity=0.95,rule-in:specificity=0.95` asks the search on the
validation split for points that reach those targets. A named point moves only the image-level
decision, the `top` threshold: its `min_area` and `bottom` are the main point's, so a kept image
gets the main point's mask. A plain threshold has no gate (min_area 0); its named points gate on
one pixel, the smallest gate, so that `top` decides. An image is positive at a point when at
least `min_area` pixels exceed `top` and its mask (the pixels above `bottom`) is not empty, so no
`top` below the point where that mask empties can add positives: when a target cannot be reached
by `top` alone, the closest point is stored and `target_met` says so.

For a sensitivity target the highest `top` that still reaches it is chosen (the most specific
such point), for a specificity target the lowest; `top` lies halfway between the gate values of
neighbouring validation images, not on one of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptxseg.model.operating_point import DEFAULT_NAME, NAME_PATTERN, OperatingPoint

TARGET_METRICS = ("sensitivity", "specificity")
EXAMPLE = "triage:sensitivity=0.95,rule-in:specificity=0.95"


@dataclass(frozen=True)
class Target:
    name: str
    metric: str
    value: float


def parse_targets(text: str | None) -> list[Target]:
    """`triage:sensitivity=0.95,rule-in:specificity=0.95` -> targets; a ValueError names the
    part that is wrong and shows the syntax."""
    if not text:
        return []
    targets: list[Target] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"([^:=\s]+):(\w+)=([0-9.]+)", part)
        if not match:
            raise ValueError(
                f"--operating-points part {part!r}: expected NAME:METRIC=VALUE, e.g. {EXAMPLE}"
            )
        name, metric, value = match.group(1), match.group(2), float(match.group(3))
        if not NAME_PATTERN.match(name) or name == DEFAULT_NAME:
            raise ValueError(
                f"--operating-points name {name!r}: expected lower-case letters, digits, - or _ "
                f"(up to 32, starting with a letter), and not {DEFAULT_NAME!r} (the main point)"
            )
        if metric not in TARGET_METRICS:
            raise ValueError(
                f"--operating-points {part!r}: the metric must be one of {TARGET_METRICS}"
            )
        if not 0.0 < value < 1.0:
            raise ValueError(f"--operating-points {part!r}: the target must lie between 0 and 1")
        if any(t.name == name for t in targets):
            raise ValueError(f"--operating-points names {name!r} twice")
        targets.append(Target(name, metric, value))
    return targets


def gate_values(probs: np.ndarray, min_area: int) -> np.ndarray:
    """Per image the `min_area`-th highest probability (at least the highest): the image passes
    a gate `min_area` pixels above `top` exactly when this value exceeds `top`."""
    flat = np.asarray(probs, np.float32).reshape(len(probs), -1)
    k = max(1, int(min_area))
    if k >= flat.shape[1]:
        return flat.min(1).astype(np.float64)
    return np.partition(flat, flat.shape[1] - k, axis=1)[:, flat.shape[1] - k].astype(np.float64)


def rates(positive: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    pos, neg = truth.sum(), (~truth).sum()
    sens = float((positive & truth).sum() / pos) if pos else float("nan")
    spec = float((~positive & ~truth).sum() / neg) if neg else float("nan")
    return sens, spec


def search_named_points(
    probs: np.ndarray,
    truth: np.ndarray,
    main: OperatingPoint,
    targets: Sequence[Target],
    split: str,
) -> dict[str, dict[str, Any]]:
    """name -> {"operating_point", "target", "validation"} for each target, on the model-size
    probabilities `probs` (N, S, S) of the validation split with image labels `truth`."""
    truth = np.asarray(truth, bool)
    min_area = max(1, main.min_area)
    gate = gate_values(probs, min_area)
    has_mask = np.asarray(probs, np.float32).reshape(len(probs), -1).max(1) > main.bottom
    values = np.unique(gate)
    candidates = np.unique(np.r_[0.0, (values[1:] + values[:-1]) / 2, values[0] / 2, 1.0])
    candidates = np.clip(np.round(candidates, 6), 0.0, 1.0)
    table = np.array([rates((gate > c) & has_mask, truth) for c in candidates])  # (C, 2)
    points = {}
    for target in targets:
        column = TARGET_METRICS.index(target.metric)
        met = np.flatnonzero(table[:, column] >= target.value)
        if target.metric == "sensitivity":
            i = int(met.max()) if len(met) else int(np.nanargmax(table[:, 0]))
        else:
            i = int(met.min()) if len(met) else int(np.nanargmax(table[:, 1]))
        op = OperatingPoint(float(candidates[i]), main.bottom, min_area, main.tta, main.input_size)
        sens, spec = table[i]
        points[target.name] = {
            "operating_point": op.to_dict(),
            "target": {"metric": target.metric, "value": target.value},
            "validation": {
                "split": split,
                "sensitivity": sens,
                "specificity": spec,
                "n_positive": int(truth.sum()),
                "n_negative": int((~truth).sum()),
                "target_met": bool(len(met)),
            },
        }
    return points


def describe_target(entry: Mapping[str, Any]) -> str:
    target = entry.get("target") or {}
    if not target:
        return "competition Dice optimum"
    return f"{target['metric']} >= {target['value']:g} on validation"
