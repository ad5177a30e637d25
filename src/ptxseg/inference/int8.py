"""int8 that checks itself: quantise, compare the masks with fp32 on real images, try the usual
remedies, and refuse when the masks still differ.

Quantisation error is invisible until it is measured, and it depends on the architecture:
depthwise convolutions, squeeze-excitation and SiLU (EfficientNet) quantise badly, a plain
ResNet well. So every int8 model that ptxseg makes is checked the same way:

1. quantise with a `Recipe` (static QDQ, calibrated on real images);
2. run the int8 and the fp32 model on real images (through the Predictor's own path, TTA
   included) and take the Dice between their masks at the operating point (`mask_agreement`);
3. below `FAITHFUL_DICE`, try the next step of `LADDER`: per-channel weights; the first
   convolution and the segmentation head in fp32; depthwise, squeeze-excitation and SiLU in fp32;
   percentile, then entropy calibration; more calibration images;
4. the first recipe that agrees is written, with the measurement, into the file's metadata
   (`int8_check`); if none does, `Int8Refused` carries every attempt's number.

A stored int8 file whose agreement is below `FAITHFUL_DICE`, or unknown, warns when it is loaded
(`warn_if_unchecked`). CPUs without VNNI quantise with `reduce_range` (7 bits; see
`ptxseg.inference.runtimes.cpu_precision_plan`) on every step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.inference.onnx import quantize_onnx
from ptxseg.inference.runtimes import PrecisionUnavailable
from ptxseg.util.system import CpuInfo, cpu_info

FAITHFUL_DICE = 0.99
"""Masks of a faster path must agree with fp32 at least this well (Dice) to be used."""
MIN_MASK_PIXELS = 64
"""Fewer fp32 mask pixels (at the model's size, over all check images) than this make a Dice
too coarse to decide on: the check then compares the masks before the area gate."""
CALIBRATION_IMAGES = 8
MORE_IMAGES_FACTOR = 4

GROUPS = {
    "first_conv": "the first convolution",
    "head": "the segmentation head",
    "depthwise": "depthwise convolutions",
    "squeeze_excitation": "squeeze-excitation blocks",
    "silu": "SiLU activations",
}
"""Node groups a recipe may keep in fp32 (`nodes_in_groups` finds them in the graph)."""


class Int8AgreementWarning(UserWarning):
    """An int8 file whose masks were not shown to agree with fp32 (or agree less than 0.99)."""


@dataclass(frozen=True)
class Recipe:
    """How one int8 attempt quantises: weights per channel or per tensor, node groups kept in
    fp32, the calibration method (minmax, percentile, entropy) and how many images calibrate."""

    name: str
    per_channel: bool = False
    keep_fp32: tuple[str, ...] = ()
    method: str = "minmax"
    images: int = CALIBRATION_IMAGES

    def describe(self) -> str:
        kept = ", ".join(GROUPS[g] for g in self.keep_fp32) or "nothing"
        return (
            f"{'per-channel' if self.per_channel else 'per-tensor'} weights, {kept} in fp32, "
            f"{self.method} calibration on {self.images} images"
        )


def ladder(images: int = CALIBRATION_IMAGES) -> list[Recipe]:
    """The recipes in the order they are tried: each adds one remedy to the last."""
    plain = Recipe("plain int8", images=images)
    channel = replace(plain, name="+ per-channel weights", per_channel=True)
    ends = replace(channel, name="+ first conv and head in fp32", keep_fp32=("first_conv", "head"))
    sensitive = replace(
        ends,
        name="+ depthwise, squeeze-excitation and SiLU in fp32",
        keep_fp32=tuple(GROUPS),
    )
    return [
        plain,
        channel,
        ends,
        sensitive,
        replace(sensitive, name="+ percentile calibration", method="percentile"),
        replace(sensitive, name="entropy calibration instead", method="entropy"),
    ]


def more_images(best: Recipe, images: int) -> Recipe:
    """The last remedy: the best recipe so far, calibrated on more images."""
    return replace(best, name="+ more calibration images", images=images)


# ---------------------------------------------------------------- finding the node groups


def nodes_in_groups(graph, groups: Sequence[str]) -> list[str]:
    """Names of the ONNX graph's nodes that belong to `groups` (keys of GROUPS).

    Found by structure, so every encoder's graph works: the first Conv in topological order;
    the segmentation head (Conv nodes named so, else the last Conv); Conv nodes with `group` > 1;
    everything from a GlobalAveragePool (or ReduceMean) up to the Mul that gates the block with
    it (squeeze-excitation); Sigmoid nodes whose output multiplies their own input (SiLU), with
    that Mul.
    """
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown node groups {sorted(unknown)}: expected {', '.join(GROUPS)}")
    nodes = list(graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chosen: list[str] = []
    if "first_conv" in groups and convs:
        chosen.append(convs[0].name)
    if "head" in groups and convs:
        heads = [n.name for n in convs if "segmentation_head" in n.name]
        chosen += heads or [convs[-1].name]
    if "depthwise" in groups:
        chosen += [n.name for n in convs if _attribute(n, "group", 1) > 1]
    if "squeeze_excitation" in groups:
        for pool in (n for n in nodes if n.op_type in ("GlobalAveragePool", "ReduceMean")):
            chosen += _gated_block(pool, consumers)
    if "silu" in groups:
        for sig in (n for n in nodes if n.op_type == "Sigmoid"):
            for mul in consumers.get(sig.output[0], []):
                if mul.op_type == "Mul" and set(mul.input) == {sig.input[0], sig.output[0]}:
                    chosen += [sig.name, mul.name]
    return list(dict.fromkeys(chosen))


def _attribute(node, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _gated_block(pool, consumers: dict[str, list]) -> list[str]:
    """The pool and every node after it up to (and with) the Mul that takes an input from
    outside: the gate of a squeeze-excitation block."""
    inside = {pool.output[0]}
    block = [pool.name]
    frontier = [pool]
    while frontier:
        node = frontier.pop()
        for nxt in consumers.get(node.output[0], []):
            if nxt.name in block:
                continue
            block.append(nxt.name)
            if nxt.op_type == "Mul" and not set(nxt.input) <= inside:
                continue  # the gate: the block ends here
            inside.update(nxt.output)
            frontier.append(nxt)
        if len(block) > 32:  # not a squeeze-excitation block: leave the graph as it is
            return []
    return block


# ---------------------------------------------------------------- measuring agreement


def pooled_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled Dice of two boolean mask stacks (1.0 when both are empty): `model.metrics`'
    Dice over every pixel of the stack at once."""
    from ptxseg.model.metrics import dice_scores

    tp = int((a & b).sum())
    return float(dice_scores(tp, int(b.sum()) - tp, int(a.sum()) - tp))


@dataclass
class Agreement:
    """How well a path's masks agree with fp32's on the check images.

    `dice` is None when the fp32 masks have too few pixels to decide (`conclusive` False).
    `masks` says what was compared: the masks at the operating point, or, when those are nearly
    empty, the masks before the area gate (probability above `bottom`)."""

    dice: float | None
    images: int
    fp32_pixels: int
    masks: str = "operating point"

    @property
    def conclusive(self) -> bool:
        return self.dice is not None

    def describe(self) -> str:
        if self.dice is None:
            return (
                f"not measurable: fp32 finds {self.fp32_pixels} mask pixels in {self.images} images"
            )
        return f"Dice {self.dice:.3f} vs fp32 on {self.images} images ({self.masks})"


def mask_agreement(reference: np.ndarray, probabilities: np.ndarray, op) -> Agreement:
    """Agreement of the masks of `probabilities` with those of `reference` (both (N, S, S)
    model-size probabilities, TTA applied) at the operating point `op`."""
    ref_masks, masks = op.apply(reference), op.apply(probabilities)
    n = int(len(reference))
    if int(ref_masks.sum()) >= MIN_MASK_PIXELS:
        return Agreement(pooled_dice(ref_masks, masks), n, int(ref_masks.sum()))
    ref_raw, raw = reference > op.bottom, probabilities > op.bottom
    if int(ref_raw.sum()) >= MIN_MASK_PIXELS:
        return Agreement(pooled_dice(ref_raw, raw), n, int(ref_raw.sum()), "before the area gate")
    return Agreement(None, n, int(ref_raw.sum()))


# ---------------------------------------------------------------- the ladder


@dataclass
class Attempt:
    recipe: Recipe
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.name,
            "how": self.recipe.describe(),
            "dice_vs_fp32": self.agreement.dice,
        }


@dataclass
class Int8Check:
    """The result of `checked_quantize`: every attempt, the one kept, and where it ran."""

    attempts: list[Attempt] = field(default_factory=list)
    kept: Attempt | None = None
    runtime: str = "onnxruntime"
    source: str = ""
    reduce_range: bool = False
    cpu: str = ""
    tta: str = "none"

    @property
    def best(self) -> Attempt | None:
        measured = [a for a in self.attempts if a.agreement.conclusive]
        return max(measured, key=lambda a: a.agreement.dice, default=None)

    def to_metadata(self) -> dict[str, Any]:
        """What the int8 file stores under `int8_check`."""
        kept = self.kept or self.best
        agreement = kept.agreement if kept else None
        return {
            "dice_vs_fp32": agreement.dice if agreement else None,
            "faithful": bool(agreement and agreement.dice is not None)
            and agreement.dice >= FAITHFUL_DICE,
            "threshold": FAITHFUL_DICE,
            "images": agreement.images if agreement else 0,
            "fp32_mask_pixels": agreement.fp32_pixels if agreement else 0,
            "compared": agreement.masks if agreement else "",
            "source": self.source,
            "runtime": self.runtime,
            "tta": self.tta,
            "cpu": self.cpu,
            "reduce_range": self.reduce_range,
            "recipe": asdict(kept.recipe) if kept else None,
            "attempts": [a.to_dict() for a in self.attempts],
        }


class Int8Refused(PrecisionUnavailable):
    """No recipe gave int8 masks that agree with fp32; the message gives the measured numbers.

    `alternatives` (set by whoever knows the other paths, `ptxseg.inference.choice`) is added to
    the message."""

    def __init__(self, check: Int8Check, reason: str = ""):
        self.check = check
        self.reason = reason
        self.alternatives = ""
        super().__init__(self._text())

    def _text(self) -> str:
        best = self.check.best
        if self.reason:
            head = self.reason
        elif best is None:
            head = "int8 could not be checked"
        else:
            bits = " (7 bits: no VNNI on this CPU)" if self.check.reduce_range else ""
            head = (
                f"int8{bits} keeps {best.agreement.dice:.3f} of fp32's mask here (Dice on "
                f"{best.agreement.images} images of {self.check.source}, best of "
                f"{len(self.check.attempts)} recipes: {best.recipe.describe()}), below "
                f"{FAITHFUL_DICE}"
            )
        tried = "; ".join(
            f"{a.recipe.name} {a.agreement.dice:.3f}"
            for a in self.check.attempts
            if a.agreement.dice is not None
        )
        text = head + (f" [tried: {tried}]" if tried else "")
        if self.alternatives:
            text += f". Faithful on this CPU: {self.alternatives}"
        return text + ". Use --runtime auto (the fastest path that keeps fp32's masks) or fp32"

    def with_alternatives(self, text: str) -> Int8Refused:
        self.alternatives = text
        self.args = (self._text(),)
        return self


@dataclass(frozen=True)
class QuantizeSettings:
    """How `checked_quantize` quantises and checks: `reduce_range` (7 bits, for CPUs without
    VNNI), the `runtime` and `tta` the masks are compared in, where the images come from
    (`source`), how many calibrate (`calibration_images`), the `recipes` to walk (default: the
    whole `ladder`), `exhaustive` (measure every recipe and keep the best), the `cpu` recorded,
    and `progress`, which sees each attempt."""

    reduce_range: bool = False
    runtime: str = "onnxruntime"
    source: str = "the given images"
    tta: str = "none"
    calibration_images: int = CALIBRATION_IMAGES
    recipes: Sequence[Recipe] | None = None
    exhaustive: bool = False
    cpu: CpuInfo | None = None
    progress: Callable[[Attempt], None] | None = None


def checked_quantize(
    fp32_path: str | Path,
    out: str | Path,
    images: Sequence[np.ndarray],
    probabilities_of: Callable[[Path], np.ndarray],
    op,
    settings: QuantizeSettings | None = None,
    **options: Any,
) -> Int8Check:
    """Quantise `fp32_path` into `out` with the first recipe whose masks agree with fp32.

    `images` are real (H, W) images in [0, 1] (or uint8 model inputs): the first
    `calibration_images` calibrate (all of them in the "more images" step), and every one is a
    check image. `probabilities_of(path)` runs an ONNX file through the Predictor's path (same
    runtime, TTA included) on the check images and returns (N, S, S) probabilities; `op` is the
    operating point the masks are cut at. `settings` (or `options`, its fields as keywords):
    `QuantizeSettings`; `exhaustive` measures every recipe (for the remedy table of
    `benchmark-runtime`) and keeps the best. Raises Int8Refused when none agrees; `out` is then
    not written.
    """
    import os
    import shutil
    import tempfile

    settings = settings or QuantizeSettings(**options)
    if not images:
        raise ValueError(
            "int8 needs real images to calibrate with and to check its masks against fp32: "
            "give the inputs, or a work folder (its validation split)"
        )
    cpu = settings.cpu or cpu_info()
    out = Path(out)
    check = Int8Check(
        runtime=settings.runtime,
        source=settings.source,
        reduce_range=settings.reduce_range,
        cpu=f"{cpu.model}; {cpu.isa()}",
        tta=settings.tta,
    )
    reference = probabilities_of(Path(fp32_path))
    _refuse_inconclusive(check, reference, op, len(images))
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=out.parent))
    try:
        attempts = _Attempts(fp32_path, images, probabilities_of, op, settings)
        kept_path = attempts.walk(check, reference, work)
        best = check.best
        if best is None or best.agreement.dice < FAITHFUL_DICE or kept_path is None:
            raise Int8Refused(check)
        check.kept = best
        from ptxseg.inference.onnx import read_metadata, write_metadata

        write_metadata(kept_path, dict(read_metadata(kept_path), int8_check=check.to_metadata()))
        os.replace(kept_path, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return check


def _refuse_inconclusive(check: Int8Check, reference: np.ndarray, op, n: int) -> None:
    """Int8Refused when fp32's masks on the images are too small to compare masks with."""
    if mask_agreement(reference, reference, op).conclusive:
        return
    raise Int8Refused(
        check,
        reason=(
            f"int8 cannot be checked on {n} images of {check.source}: fp32 finds "
            f"{int((reference > op.bottom).sum())} mask pixels in them, too few to compare "
            "masks. Give images with pneumothorax (a work folder's validation split: "
            "--data WORK)"
        ),
    )


class _Attempts:
    """The remedy ladder of one quantisation, walked until a recipe keeps fp32's masks."""

    def __init__(self, fp32_path, images, probabilities_of, op, settings: QuantizeSettings):
        self.fp32_path, self.probabilities_of, self.op = fp32_path, probabilities_of, op
        self.float_images = [_as_float(im) for im in images]
        self.settings = settings

    def walk(self, check: Int8Check, reference: np.ndarray, work: Path) -> Path | None:
        """Try each recipe (the "more images" step on the best so far); the kept file's path."""
        settings = self.settings
        steps = (
            list(settings.recipes)
            if settings.recipes is not None
            else ladder(settings.calibration_images)
        )
        kept_path: Path | None = None
        for i, recipe in enumerate(_with_more_images(steps, len(self.float_images))):
            if callable(recipe):  # "more images" depends on the best so far
                if check.best is None:
                    continue
                recipe = recipe(check.best.recipe)
            path = work / f"attempt-{i}.onnx"
            quantize_recipe(self.fp32_path, path, recipe, self.float_images, settings.reduce_range)
            agreement = mask_agreement(reference, self.probabilities_of(path), self.op)
            attempt = Attempt(recipe, agreement)
            check.attempts.append(attempt)
            if settings.progress:
                settings.progress(attempt)
            if check.best is attempt:
                kept_path = path
            dice_now = attempt.agreement.dice
            if dice_now is not None and dice_now >= FAITHFUL_DICE and not settings.exhaustive:
                break
        return kept_path


def _with_more_images(steps: list[Recipe], available: int):
    yield from steps
    if steps and available > steps[-1].images:
        images = min(available, steps[-1].images * MORE_IMAGES_FACTOR)
        yield lambda best: more_images(best, images)


def _as_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image


def quantize_recipe(
    fp32_path: str | Path,
    out: str | Path,
    recipe: Recipe,
    images: Sequence[np.ndarray],
    reduce_range: bool,
) -> Path:
    """Write the int8 model of one recipe (calibrated on the first `recipe.images` images)."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    return quantize_onnx(
        fp32_path,
        out,
        list(images[: recipe.images]),
        reduce_range=reduce_range,
        per_channel=recipe.per_channel,
        nodes_to_exclude=nodes_in_groups(graph, recipe.keep_fp32),
        method=recipe.method,
    )


# ---------------------------------------------------------------- stored files


def stored_agreement(metadata: dict[str, Any]) -> float | None:
    """The Dice vs fp32 an int8 file was checked at (None: never checked)."""
    check = metadata.get("int8_check") or {}
    value = check.get("dice_vs_fp32")
    return float(value) if isinstance(value, int | float) else None


def warn_if_unchecked(metadata: dict[str, Any], path: str | Path, cpu: CpuInfo | None = None):
    """Warn when an int8 file's masks were not shown to agree with fp32 at FAITHFUL_DICE, or
    were checked on a CPU with other instructions."""
    if metadata.get("precision") != "int8":
        return
    agreement = stored_agreement(metadata)
    if agreement is None:
        warnings.warn(
            f"{path}: this int8 file does not record how well its masks agree with fp32 (it "
            "was not made by `ptxseg export --int8` with a check); its masks may differ from "
            "fp32's. Re-export it with `ptxseg export --int8 --data WORK`",
            Int8AgreementWarning,
            stacklevel=3,
        )
        return
    if agreement < FAITHFUL_DICE:
        warnings.warn(
            f"{path}: this int8 file's masks agree with fp32's at Dice {agreement:.3f}, below "
            f"{FAITHFUL_DICE}: use the fp32 file (--precision fp32 or auto)",
            Int8AgreementWarning,
            stacklevel=3,
        )
        return
    cpu = cpu or cpu_info()
    checked_on = (metadata.get("int8_check") or {}).get("cpu", "")
    here = f"{cpu.model}; {cpu.isa()}"
    if checked_on and checked_on.split("; ", 1)[-1] != cpu.isa():
        warnings.warn(
            f"{path}: int8 masks were checked on another CPU ({checked_on}), not on this one "
            f"({here}); int8 kernels differ between instruction sets. Re-export here with "
            "`ptxseg export --int8` to check them on this CPU",
            Int8AgreementWarning,
            stacklevel=3,
        )
