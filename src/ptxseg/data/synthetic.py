"""Synthetic SIIM-style chest radiographs, so that every ptxseg step runs without a download.

`generate_dataset` writes the Kaggle stage-1 layout: JPEG Baseline DICOMs under
`dicom-images-train/<study>/<series>/<ImageId>.dcm` and `train-rle.csv` with relative, column-major
RLE, one row per connected pneumothorax region. The images are drawn from a simple anatomical model
(body, lungs with branching vessel markings, ribs, clavicles, spine, heart, diaphragm). A
pneumothorax is an air crescent along the chest wall: no lung markings inside, slightly darker,
bounded on the lung side by a thin bright visceral pleural line. It is subtle on purpose: a global
intensity threshold cannot find it, a CNN can from local texture and position.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ptxseg.data.rle import rle_encode
from ptxseg.util import atomic, path_guard
from ptxseg.util.progress import progress_bar

IMAGES_DIR = "dicom-images-train"
CSV_NAME = "train-rle.csv"
METADATA_NAME = "metadata.csv"
CSV_HEADER = ("ImageId", " EncodedPixels")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
UID_ROOT = "1.2.276.0.7230010.3.1"  # the root of the SIIM UIDs: .2 study, .3 series, .4 instance
UID_SITE = "8323329"
SIIM_SPACINGS_MM = (0.139, 0.143, 0.148, 0.168, 0.171, 0.194)  # at 1024 px, as in the real files
MIN_SIZE = 32
PROGRESS_MIN_IMAGES = 100
SECOND_IMAGE_RATE = 0.08  # share of images that are a patient's second radiograph


@dataclass(frozen=True)
class CaseSpec:
    """Everything that identifies one synthetic radiograph; `seed` drives its drawing."""

    image_id: str
    study_uid: str
    series_uid: str
    patient_id: str
    patient_sex: str
    patient_age: int
    view_position: str
    spacing_1024: float
    positive: bool
    seed: int
    patient_seed: int
    drain: bool = False


def parse_drains(text: str | None) -> tuple[float, float] | None:
    """`P_POS:P_NEG` (e.g. `0.7:0.05`): the share of positive and of negative images that get a
    chest drain; None for none."""
    if text is None or text == "":
        return None
    try:
        p_pos, p_neg = (float(x) for x in str(text).split(":"))
    except ValueError:
        raise ValueError(
            f"--drains {text!r}: expected P_POS:P_NEG, the shares of positive and negative "
            "images with a chest drain, e.g. 0.7:0.05"
        ) from None
    if not (0 <= p_pos <= 1 and 0 <= p_neg <= 1):
        raise ValueError(f"--drains {text!r}: both shares must lie between 0 and 1")
    return p_pos, p_neg


def plan_cases(
    n_images: int,
    seed: int = 0,
    positive_fraction: float = 0.3,
    drains: tuple[float, float] | None = None,
) -> list[CaseSpec]:
    """Draw identifiers, patients, views and labels for `n_images` radiographs (deterministic).

    `drains` (P_POS, P_NEG) gives that share of positive and of negative images a chest drain,
    drawn from a stream of its own: everything else is the same as without drains."""
    _check_arguments(n_images, MIN_SIZE, positive_fraction)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n_positive = int(round(positive_fraction * n_images))
    positive = np.zeros(n_images, dtype=bool)
    positive[rng.permutation(n_images)[:n_positive]] = True
    numbers = np.sort(rng.choice(max(20000, 2 * n_images), n_images, replace=False) + 1)
    cases: list[CaseSpec] = []
    patient: tuple[str, str, int, int] | None = None
    patient_images = 0
    for i, number in enumerate(numbers.tolist()):
        if patient is None or patient_images >= 2 or rng.random() >= SECOND_IMAGE_RATE:
            sex = "M" if rng.random() < 0.55 else "F"
            age = int(np.clip(rng.normal(50, 17), 18, 89))
            patient = (str(uuid.UUID(bytes=rng.bytes(16), version=4)), sex, age, i)
            patient_images = 0
        else:
            age_step = int(rng.integers(0, 2))
            patient = (patient[0], patient[1], min(patient[2] + age_step, 90), patient[3])
        patient_images += 1
        stamp = 1517875160 + number // 150
        micro = int(rng.integers(100002, 999999))
        suffix = f"{UID_SITE}.{number}.{stamp}"
        cases.append(
            CaseSpec(
                image_id=f"{UID_ROOT}.4.{suffix}.{micro}",
                study_uid=f"{UID_ROOT}.2.{suffix}.{micro - 1}",
                series_uid=f"{UID_ROOT}.3.{suffix}.{micro - 2}",
                patient_id=patient[0],
                patient_sex=patient[1],
                patient_age=patient[2],
                view_position="PA" if rng.random() < 0.55 else "AP",
                spacing_1024=float(rng.choice(SIIM_SPACINGS_MM)),
                positive=bool(positive[i]),
                seed=int(rng.integers(2**63)),
                patient_seed=int(seed * 1_000_003 + patient[3]),
            )
        )
    if drains is not None:
        drain_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
        draws = drain_rng.random(len(cases))
        cases = [
            replace(c, drain=bool(u < (drains[0] if c.positive else drains[1])))
            for c, u in zip(cases, draws, strict=True)
        ]
    return cases


def _check_arguments(n_images: int, size: int, positive_fraction: float) -> None:
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images must be a whole number >= 1, got {n_images!r}")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(
            f"size must be a whole number of pixels >= {MIN_SIZE}, got {size!r} "
            "(SIIM images are 1024; 256 or 512 are typical for training)"
        )
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be between 0 and 1, got {positive_fraction!r}")


# ---------------------------------------------------------------------------------------------
# Drawing. Anatomy lives in "body" coordinates: x across (0 = image left, 0.5 = midline), y down,
# both in [0, 1] for an average patient. A similarity transform (zoom, rotation, shift) maps them
# to pixels; implicit shapes are evaluated on the inverse-mapped pixel grid, drawn lines are
# mapped forward, so masks are computed in the final geometry and need no resampling.
# Side s = -1 is the patient's right (image left), s = +1 the patient's left.


@dataclass(frozen=True)
class _Anatomy:
    """Patient-level shape: the same for a patient's radiographs."""

    body_w: float
    wall_u: tuple[float, float]
    apex_v: tuple[float, float]
    dome_v: tuple[float, float]
    apex_u: float
    med_u: float
    heart: tuple[float, float, float, float]  # centre x offset, centre y, radius x, radius y
    rib_step: float
    arms: bool
    vessel_seed: int


def _anatomy(rng: np.random.Generator, sex: str) -> _Anatomy:
    wall = rng.uniform(0.35, 0.41) - (0.012 if sex == "F" else 0.0)  # smaller thorax
    apex = rng.uniform(0.10, 0.14)
    dome = rng.uniform(0.64, 0.71)
    return _Anatomy(
        body_w=wall + rng.uniform(0.05, 0.10),
        wall_u=(wall + rng.normal(0, 0.006), wall + rng.normal(0, 0.006)),
        apex_v=(apex + rng.normal(0, 0.006), apex + rng.normal(0, 0.006)),
        dome_v=(dome - rng.uniform(0.0, 0.02), dome + rng.uniform(0.01, 0.03)),
        apex_u=rng.uniform(0.14, 0.17),
        med_u=rng.uniform(0.045, 0.06),
        heart=(
            rng.uniform(0.04, 0.07),
            rng.uniform(0.60, 0.64),
            rng.uniform(0.14, 0.17),
            rng.uniform(0.11, 0.13),
        ),
        rib_step=rng.uniform(0.05, 0.058),
        arms=bool(rng.random() < 0.5),
        vessel_seed=int(rng.integers(2**63)),
    )


class _Frame:
    """The body-to-pixel similarity transform and the body coordinates of every pixel."""

    def __init__(self, size: int, zoom: float, angle_deg: float, shift: tuple[float, float]):
        self.size = size
        self.zoom = zoom
        a = np.deg2rad(angle_deg)
        self.matrix = zoom * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        self.offset = np.array([0.5 + shift[0], 0.5 + shift[1]])
        inverse = np.linalg.inv(self.matrix)
        p = (np.arange(size, dtype=np.float32) + 0.5) / size
        px, py = np.meshgrid(p - self.offset[0], p - self.offset[1])
        self.x = (inverse[0, 0] * px + inverse[0, 1] * py + 0.5).astype(np.float32)
        self.y = (inverse[1, 0] * px + inverse[1, 1] * py + 0.5).astype(np.float32)

    def px(self, length: float) -> float:
        """A body-coordinate length in pixels."""
        return length * self.size * self.zoom

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Body points (..., n) to cv2 fixed-point pixels (..., n, 2) with 4 fraction bits."""
        pts = np.stack([x - 0.5, y - 0.5], axis=-1) @ self.matrix.T + self.offset
        return np.round(pts * self.size * 16 - 8).astype(np.int32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide kernels run on a downscaled copy (same look, a fraction of the time)."""
    if sigma_px < 0.3:
        return image
    factor = int(sigma_px // 4)
    if factor < 2:
        return cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REPLICATE)
    h, w = image.shape
    small = cv2.resize(
        image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _draw_polylines(
    frame: _Frame, lines: list[tuple[np.ndarray, np.ndarray]], width: float, value: float = 1.0
) -> np.ndarray:
    """Antialiased polylines (body coordinates) of a body-coordinate width, as float32 in [0, 1]."""
    canvas = np.zeros((frame.size, frame.size), np.uint8)
    if lines:
        pts = [frame.to_pixels(x, y).reshape(-1, 1, 2) for x, y in lines]
        thickness = max(1, int(round(frame.px(width))))
        cv2.polylines(canvas, pts, False, int(round(255 * value)), thickness, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255


def _bone_lines(frame: _Frame, lines, width: float, cortex: float = 0.5) -> np.ndarray:
    """Bands with brighter cortical margins, as bones look on a radiograph."""
    outer = _draw_polylines(frame, lines, width)
    inner = _draw_polylines(frame, lines, width * (1 - cortex))
    return _blur(0.55 * outer + 0.45 * (outer - inner), frame.px(0.0015))


class _Side:
    """The implicit shapes of one hemithorax: chest wall, lung, diaphragm."""

    def __init__(self, frame: _Frame, anat: _Anatomy, side: int, dome_shift: float):
        i = 0 if side < 0 else 1
        self.side, self.wall, self.apex = side, anat.wall_u[i], anat.apex_v[i]
        self.dome = anat.dome_v[i] + dome_shift
        self.apex_u, self.med_u = anat.apex_u, anat.med_u
        self.u = side * (frame.x - 0.5)  # lateral distance from the midline, positive on this side
        y = frame.y
        cap = np.sqrt(1 - (1 - np.clip((y - self.apex) / 0.24, 0, 1)) ** 2)
        below = np.clip(y - self.apex - 0.24, 0, None)
        self.u_out = self.apex_u + (self.wall - self.apex_u) * cap + 0.05 * below
        inner = self.apex_u - (self.apex_u - self.med_u) * cap
        # The chest wall (lateral and apical pleura); the medial side is left open on purpose so
        # that the distance to it is the distance to the ribs, not to the mediastinum.
        far_medial = self.apex_u - (self.apex_u + 0.4) * cap
        self.wall_mask = (y >= self.apex) & (self.u <= self.u_out) & (self.u >= far_medial)
        peak = self.apex_u + 0.03
        lateral = ((self.u - peak) / (self.wall - peak)) ** 2
        medial = ((peak - self.u) / (peak - self.med_u)) ** 2
        self.dome_y = self.dome + np.where(self.u > peak, 0.10 * lateral, 0.04 * medial)
        self.lung_mask = self.wall_mask & (self.u >= inner) & (y <= self.dome_y)
        self.centre = ((self.apex_u + self.wall) / 2, self.apex + 0.24)

    def angle(self, frame: _Frame) -> np.ndarray:
        """Angle around the lung centre in degrees: 0 lateral, -90 up (apex), +90 down."""
        return np.degrees(np.arctan2(frame.y - self.centre[1], self.u - self.centre[0]))


def _vessel_tree(frame: _Frame, sides: list[_Side], rng: np.random.Generator) -> np.ndarray:
    """Branching pulmonary vessels from each hilum, thinner and fainter towards the periphery."""
    canvas = np.zeros((frame.size, frame.size), np.float32)
    levels: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(7)]
    widths = [0.009 * 0.72**g for g in range(7)]
    for side in sides:
        hilum_u, hilum_y = rng.uniform(0.085, 0.11), rng.uniform(0.39, 0.45)
        roots = np.array([-115, -85, -55, -25, 5, 35, 65, 95], float) + rng.normal(0, 8, 8)
        x = np.full(roots.size, 0.5 + side.side * hilum_u)
        y = np.full(roots.size, hilum_y)
        angle = np.radians(roots)
        length = rng.uniform(0.045, 0.065, roots.size)
        for g in range(7):
            x1 = x + side.side * length * np.cos(angle)
            y1 = y + length * np.sin(angle)
            levels[g].extend(zip(np.stack([x, x1], 1), np.stack([y, y1], 1), strict=True))
            spread = np.radians(rng.uniform(14, 32, (2, x.size)))
            bend = np.radians(rng.normal(0, 8, (2, x.size)))
            angle = np.concatenate([angle - spread[0] + bend[0], angle + spread[1] + bend[1]])
            x, y = np.tile(x1, 2), np.tile(y1, 2)
            length = np.tile(length, 2) * rng.uniform(0.72, 0.88, x.size)
    for g in reversed(range(7)):  # thick trunks drawn last, on top
        drawn = _draw_polylines(frame, levels[g], widths[g], value=0.82**g)
        np.maximum(canvas, drawn, out=canvas)
    return _blur(canvas, frame.px(0.0012))


def _ribs(frame: _Frame, anat: _Anatomy, sides: list[_Side], rng: np.random.Generator):
    """Posterior ribs (arcs from the spine), fainter anterior ribs, and the clavicles."""
    t = np.linspace(0, 1, 24)
    posterior, anterior, clavicles = [], [], []
    for side in sides:
        s = side.side
        for i in range(10):
            y0 = side.apex - 0.02 + i * anat.rib_step
            reach = side.wall + 0.03 if i > 1 else side.apex_u + 0.08 + 0.08 * i
            u = 0.03 + t * (reach - 0.03)
            y = y0 - 0.035 * np.sin(np.pi * t * 0.9) + (0.10 + 0.006 * i) * t**2.5
            posterior.append((0.5 + s * u, y + rng.normal(0, 0.002)))
        for j in range(5):
            y0 = side.apex + 0.10 + j * anat.rib_step * 1.3
            u = side.wall + 0.02 - t * (side.wall - 0.08)
            y = y0 + 0.09 * t**1.5 - 0.03 * np.sin(np.pi * t)
            anterior.append((0.5 + s * u, y))
        clav_y = anat.apex_v[0] + 0.03 + rng.normal(0, 0.006)
        u = 0.045 + t * 0.27
        y = clav_y - 0.05 * t + 0.012 * np.sin(2 * np.pi * t)
        clavicles.append((0.5 + s * u, y))
    rib_w = anat.rib_step * 0.42
    return (
        _bone_lines(frame, posterior, rib_w),
        _blur(_bone_lines(frame, anterior, rib_w * 1.3, cortex=0.3), frame.px(0.003)),
        _bone_lines(frame, clavicles, 0.024, cortex=0.6),
    )


def _ellipse(frame: _Frame, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((frame.x - cx) / rx) ** 2 + ((frame.y - cy) / ry) ** 2


def _band_noise(rng: np.random.Generator, frame: _Frame, fine: float, coarse: float) -> np.ndarray:
    noise = rng.standard_normal((frame.size, frame.size)).astype(np.float32)
    band = _blur(noise, frame.px(fine)) - _blur(noise, frame.px(coarse))
    return band / (band.std() + 1e-6)


def _crescent(
    frame: _Frame, side: _Side, dist_wall: np.ndarray, angle: np.ndarray, rng, centre: float
) -> tuple[np.ndarray, np.ndarray]:
    """One pneumothorax: the air crescent (bool) and its visceral pleural line (float)."""
    half = rng.uniform(35, 75)
    depth = max(frame.px(rng.uniform(0.015, 0.06)), 3.0)
    offset = np.abs(angle - centre) / half
    ripple = 1 + 0.12 * np.sin(np.radians(angle) * rng.uniform(3, 6) + rng.uniform(0, 6.3))
    profile = depth * np.clip(np.cos(np.pi / 2 * np.clip(offset, 0, 1)), 0, 1) ** 0.7 * ripple
    profile[offset >= 1] = 0
    region = side.lung_mask & (dist_wall < profile)
    line_w = max(frame.px(0.0022), 0.6)
    taper = np.clip(profile / depth * 2.5, 0, 1)
    line = np.exp(-(((dist_wall - profile - line_w) / line_w) ** 2)) * taper * side.lung_mask
    return region, line.astype(np.float32)


def _pneumothorax_sites(rng: np.random.Generator) -> list[tuple[int, float]]:
    """(side index, sector centre angle) for 1 or 2 regions: apical, lateral, or both sides."""
    first = int(rng.integers(2))
    sites = [(first, float(rng.uniform(-115, 5)))]
    roll = rng.random()
    if roll < 0.15:  # both sides
        sites.append((1 - first, float(rng.uniform(-115, 5))))
    elif roll < 0.25:  # a second, separate region on the same side
        sites = [(first, float(rng.uniform(-120, -95))), (first, float(rng.uniform(10, 30)))]
    return sites


def render_case(
    spec: CaseSpec, size: int, conspicuity: float = 1.0
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw one radiograph: a uint8 (size, size) image and one bool mask per pneumothorax region.

    `conspicuity` scales how much darker the air gap is and how bright its pleural line: 1 is
    subtle, as on real films; larger values make a pneumothorax that a small model trained for
    minutes on a CPU can learn (the demo uses 3).

    The regions are the connected components of the pneumothorax mask (empty list if negative).
    """
    anat = _anatomy(np.random.default_rng(spec.patient_seed), spec.patient_sex)
    rng = np.random.default_rng(spec.seed)
    ap = spec.view_position == "AP"
    frame = _Frame(
        size,
        zoom=rng.uniform(0.84, 1.1),
        angle_deg=rng.normal(0, 3.0 if ap else 1.5),
        shift=(rng.normal(0, 0.015), rng.uniform(-0.05, 0.05)),
    )
    x, y = frame.x, frame.y
    dome_shift = rng.uniform(-0.02, 0.02) + (0.03 if ap else 0.0)
    sides = [_Side(frame, anat, s, dome_shift) for s in (-1, 1)]

    # Body outline: neck, shoulders, chest; soft-tissue thickness is an elliptical profile.
    u = np.abs(x - 0.5)
    neck = 0.085
    shoulder = anat.body_w + 0.04
    half_w = neck + (shoulder - neck) * _smoothstep((y + 0.02) / 0.14)
    half_w = half_w - 0.03 * _smoothstep((y - 0.15) / 0.35)
    tissue = np.sqrt(np.clip(1 - (u / half_w) ** 2, 0, 1))
    density = 0.55 * tissue
    if anat.arms:
        arm = np.sqrt(np.clip(1 - ((u - half_w - 0.06) / 0.05) ** 2, 0, 1))
        density += 0.35 * arm * _smoothstep((y - 0.12) / 0.1)

    # Mediastinum, heart, aortic knob, spine, trachea.
    hx, hy, hrx, hry = anat.heart
    scale = 1.1 if ap else 1.0
    heart = _ellipse(frame, 0.5 + hx, hy, hrx * scale, hry * scale) <= 1
    knob = _ellipse(frame, 0.5 + 0.055, 0.30, 0.035, 0.03) <= 1
    lung = np.zeros_like(heart)
    for side in sides:
        side.lung_mask &= ~heart & ~knob
        lung |= side.lung_mask
    upper_heart = heart & (y < hy)  # the lower half hides behind the diaphragm
    dense = (upper_heart | knob | ((u < anat.med_u) & (y > 0.1))).astype(np.float32)
    density += 0.05 * _blur(dense, frame.px(0.015)) * tissue
    vertebra = 0.8 + 0.2 * np.cos(np.pi * (y - 0.1) / anat.rib_step) ** 2
    density += 0.035 * _smoothstep((0.032 - u) / 0.015) * vertebra * tissue
    trachea = _smoothstep((0.016 - u) / 0.006) * _smoothstep((0.33 - y) / 0.05)
    density -= 0.05 * trachea
    if rng.random() < 0.6:  # gastric air under the left dome
        bubble = _ellipse(frame, 0.5 + 0.2, sides[1].dome + 0.08, 0.055, 0.03) <= 1
        density -= 0.06 * _blur(bubble.astype(np.float32), frame.px(0.008))

    # Lungs: air thickness grows away from the pleura; markings and parenchymal texture.
    dist_lung = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 5)
    air = (1 - np.exp(-dist_lung / frame.px(0.03))).astype(np.float32)
    air = _blur(air * lung, frame.px(0.004))
    vessels = _vessel_tree(frame, sides, np.random.default_rng(anat.vessel_seed))
    for s in (-1, 1):  # hilar shadows: the pulmonary arteries and bronchi at the lung roots
        vessels += 0.5 * np.exp(-_ellipse(frame, 0.5 + s * 0.1, 0.43, 0.035, 0.06))
    texture = _band_noise(rng, frame, 0.0025, 0.008)
    markings = 0.08 * vessels + 0.015 * texture

    # Pneumothorax: the crescent between chest wall and visceral pleura has no markings.
    regions_mask = np.zeros(lung.shape, bool)
    pleura = np.zeros(lung.shape, np.float32)
    if spec.positive:
        ptx_rng = np.random.default_rng([spec.seed, 1])  # own stream: the rest stays the same
        for side_index, centre in _pneumothorax_sites(ptx_rng):
            side = sides[side_index]
            dist_wall = cv2.distanceTransform(side.wall_mask.astype(np.uint8), cv2.DIST_L2, 5)
            region, line = _crescent(frame, side, dist_wall, side.angle(frame), ptx_rng, centre)
            regions_mask |= region
            np.maximum(pleura, line, out=pleura)
        pleura *= ~regions_mask
    air_gap = _blur(regions_mask.astype(np.float32), frame.px(0.002))
    markings = markings * (1 - air_gap)
    lung_soft = _blur(lung.astype(np.float32), frame.px(0.003))
    density += (-0.42 * air + markings * lung_soft) * tissue
    density -= rng.uniform(0.03, 0.06) * conspicuity * air_gap * tissue
    density += 0.05 * conspicuity * pleura

    ribs_post, ribs_ant, clavicles = _ribs(frame, anat, sides, rng)
    cage = sides[0].wall_mask | sides[1].wall_mask
    cage &= y < np.maximum(sides[0].dome_y, sides[1].dome_y) + 0.04
    cage = _blur(cage.astype(np.float32), frame.px(0.02))
    cage *= 0.3 + 0.7 * lung_soft
    density += (0.07 * ribs_post + 0.035 * ribs_ant) * cage + 0.13 * clavicles * tissue

    if spec.drain:
        density += _chest_drain(frame, anat, sides, np.random.default_rng([spec.seed, 2]))

    image = _expose(density, rng, frame, ap)
    _burn_in_marker(image, rng, frame, ap)
    return image, _split_regions(regions_mask, min_pixels=max(4, size * size // 20000))


def _chest_drain(frame: _Frame, anat: _Anatomy, sides: list[_Side], rng) -> np.ndarray:
    """A chest drain: a radio-opaque tube that enters through the lateral chest wall low on one
    side and curves up towards the apex, its walls brighter than its lumen, with the radio-opaque
    side line that stops at the side hole near the tip (the "sentinel eye")."""
    side = sides[int(rng.integers(2))]
    s = side.side
    t = np.linspace(0, 1, 40)
    start = np.array([0.5 + s * (side.wall + rng.uniform(0.07, 0.11)), rng.uniform(0.6, 0.7)])
    bend = np.array([0.5 + s * (side.wall - 0.02), rng.uniform(0.45, 0.55)])
    tip = np.array([0.5 + s * (side.apex_u + rng.uniform(0.0, 0.05)), side.apex + 0.05])
    x = (1 - t) ** 2 * start[0] + 2 * (1 - t) * t * bend[0] + t**2 * tip[0]
    y = (1 - t) ** 2 * start[1] + 2 * (1 - t) * t * bend[1] + t**2 * tip[1]
    width = rng.uniform(0.010, 0.014)
    outer = _draw_polylines(frame, [(x, y)], width)
    lumen = _draw_polylines(frame, [(x, y)], width * 0.45)
    stop = int(len(t) * rng.uniform(0.8, 0.88))  # the side line ends at the side hole
    stripe = _draw_polylines(frame, [(x[:stop], y[:stop])], width * 0.25)
    tube = 0.16 * outer - 0.07 * lumen + 0.08 * stripe
    return _blur(tube, frame.px(0.0012)) * (0.6 + 0.4 * anat.body_w / 0.5)


def _expose(density: np.ndarray, rng: np.random.Generator, frame: _Frame, ap: bool) -> np.ndarray:
    """Film/detector response: saturating exposure curve, gamma, noise, slight blur; uint8."""
    gain = rng.uniform(1.6, 2.6)
    image = (1 - np.exp(-gain * np.clip(density, 0, None))) / (1 - np.exp(-gain))
    image = np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25)
    low, high = rng.uniform(0.0, 0.05), rng.uniform(0.88, 1.0)
    image = low + (high - low) * image
    image += 0.02 * _band_noise(rng, frame, 0.05, 0.2)  # uneven exposure
    sigma = rng.uniform(0.006, 0.016) * (1.4 if ap else 1.0)
    image += sigma * rng.standard_normal(image.shape).astype(np.float32)
    image = _blur(image, frame.size / 1024 * 0.8)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def _burn_in_marker(image: np.ndarray, rng: np.random.Generator, frame: _Frame, ap: bool) -> None:
    """The side marker (and for portable films a label) burned into a corner, as on real films."""
    size = frame.size
    scale = size / 512
    if size >= 128 and rng.random() < 0.7:
        org = (int(size * rng.uniform(0.82, 0.9)), int(size * rng.uniform(0.06, 0.1)))
        cv2.putText(image, "L", org, cv2.FONT_HERSHEY_SIMPLEX, scale, 235, max(1, int(2 * scale)))
    if ap and size >= 256 and rng.random() < 0.4:
        org = (int(size * 0.05), int(size * 0.06))
        cv2.putText(image, "PORTABLE", org, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, 220, 1)


def _split_regions(mask: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """The connected components of a mask, largest first; specks below `min_pixels` dropped."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    keep = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_pixels]
    keep.sort(key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    return [labels == i for i in keep]


# ---------------------------------------------------------------------------------------------
# Files: DICOM (JPEG Baseline, as in the SIIM download), the stage-1 CSV, and the whole dataset.


def pixel_spacing(spec: CaseSpec, size: int) -> float:
    """Pixel spacing in mm at `size`, so that the physical field of view is a real chest's."""
    return round(spec.spacing_1024 * 1024 / size, 6)


def dicom_bytes(spec: CaseSpec, image: np.ndarray, seed: int | None = None) -> bytes:
    """A DICOM Part 10 file with the SIIM header tags; pixels as encapsulated JPEG Baseline."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate

    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode the image of {spec.image_id}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = spec.image_id
    meta.TransferSyntaxUID = JPEG_BASELINE
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = spec.image_id
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {spec.view_position}"
    ds.PatientName = spec.patient_id
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = spec.patient_sex
    ds.PatientAge = f"{spec.patient_age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view_position
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    comment = "synthetic radiograph generated by ptxseg synth"
    ds.ImageComments = comment if seed is None else f"{comment} (seed {seed})"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    spacing = pixel_spacing(spec, image.shape[0])
    ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _csv_text(rows: list[tuple[str, str]]) -> str:
    """Stage-1 `train-rle.csv`: header `ImageId, EncodedPixels`, values with a leading space."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows((image_id, f" {rle}") for image_id, rle in rows)
    return buffer.getvalue()


def check_out_dir(out_dir: str | Path, overwrite: bool) -> list[Path]:
    """The dataset paths already in `out_dir` that a run would replace; FileExistsError when
    there are some and `overwrite` is off, or when `out_dir/made-by.json` does not say synth
    wrote them (a real dataset is never replaced)."""
    out_dir = Path(out_dir)
    existing = [p for p in (out_dir / IMAGES_DIR, out_dir / CSV_NAME) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists: choose another output folder or pass overwrite=True "
            "(--overwrite) to replace the synthetic dataset there"
        )
    made = path_guard.made_by(out_dir)
    if existing and (made is None or made.get("command") != "synth"):
        raise FileExistsError(
            f"{existing[0]} was not written by synth ({out_dir / path_guard.MADE_BY} does not say "
            "so): --overwrite replaces only synth's own datasets; choose another output folder, "
            "or move that one away yourself"
        )
    return existing


def generate_dataset(
    out_dir: str | Path,
    n_images: int,
    size: int = 256,
    seed: int = 0,
    positive_fraction: float = 0.3,
    overwrite: bool = False,
    progress: bool | None = None,
    conspicuity: float = 1.0,
    drains: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Write `n_images` synthetic radiographs and their annotations in the SIIM stage-1 layout.

    `drains` (P_POS, P_NEG) draws a chest drain on that share of positive and negative images
    and records it per image in `metadata.csv` (ImageId, chest_drain), which
    `ptxseg evaluate --subgroups` reads.

    Everything is written under a temporary folder inside `out_dir` and moved into place at the
    end, so a failure leaves no half-written dataset; then `out_dir/made-by.json` marks it as
    synth's. An existing dataset in `out_dir` is only replaced with `overwrite=True`, and only
    when that mark says synth wrote it: a real dataset is never deleted. `progress` (default:
    when `n_images >= 100`) shows a bar.
    Returns a summary: counts of images, positives, regions and patients, and the paths written.
    """
    _check_arguments(n_images, size, positive_fraction)
    out_dir = Path(out_dir)
    images_dir, csv_path = out_dir / IMAGES_DIR, out_dir / CSV_NAME
    existing = check_out_dir(out_dir, overwrite)
    cases = plan_cases(n_images, seed, positive_fraction, drains)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".synth-{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    rows: list[tuple[str, str]] = []
    n_regions = 0
    try:
        with progress_bar(
            progress if progress is not None else n_images >= PROGRESS_MIN_IMAGES
        ) as bar:
            task = bar.add_task(f"synthetic {size}px radiographs", total=n_images)
            for spec in cases:
                image, regions = render_case(spec, size, conspicuity)
                path = staging / IMAGES_DIR / spec.study_uid / spec.series_uid
                atomic.write_bytes(path / f"{spec.image_id}.dcm", dicom_bytes(spec, image, seed))
                rows.extend((spec.image_id, rle_encode(r, "relative")) for r in regions)
                if not regions:
                    rows.append((spec.image_id, "-1"))
                n_regions += len(regions)
                bar.advance(task)
        atomic.write_bytes(staging / CSV_NAME, _csv_text(rows).encode())
        if drains is not None:
            metadata = "ImageId,chest_drain\n" + "".join(
                f"{c.image_id},{int(c.drain)}\n" for c in cases
            )
            atomic.write_bytes(staging / METADATA_NAME, metadata.encode())
        for path in existing:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if existing:  # the replaced dataset's drains do not describe the new images
            (out_dir / METADATA_NAME).unlink(missing_ok=True)
        atomic.sync_tree(staging)
        os.replace(staging / IMAGES_DIR, images_dir)
        os.replace(staging / CSV_NAME, csv_path)
        if drains is not None:
            os.replace(staging / METADATA_NAME, out_dir / METADATA_NAME)
        atomic.sync_folder(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    details = {"n_images": n_images, "size": size, "seed": seed}
    details.update(positive_fraction=positive_fraction, conspicuity=conspicuity)
    path_guard.mark(out_dir, "synth", "data", **details)
    n_positive = sum(spec.positive for spec in cases)
    return {
        "out_dir": str(out_dir),
        "images_dir": str(images_dir),
        "csv": str(csv_path),
        "n_images": n_images,
        "n_positive": n_positive,
        "n_negative": n_images - n_positive,
        "n_regions": n_regions,
        "n_patients": len({spec.patient_id for spec in cases}),
        "n_drains": sum(spec.drain for spec in cases),
        "metadata": str(out_dir / METADATA_NAME) if drains is not None else None,
        "size": size,
        "seed": seed,
    }


# ---------------------------------------------------------------------------------------------
# A figure that reads the written files back: a visual check of images, masks and the CSV.


def plot_samples(out_dir: str | Path, png_path: str | Path, n: int = 6) -> Path:
    """Plot `n` written radiographs (positives first) with and without their mask overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pydicom

    from ptxseg.data.rle import read_annotations, rles_to_mask

    out_dir, png_path = Path(out_dir), Path(png_path)
    annotations = read_annotations(out_dir / CSV_NAME)
    paths = {p.stem: p for p in (out_dir / IMAGES_DIR).glob("*/*/*.dcm")}
    missing = sorted(set(annotations) - set(paths))
    if missing:
        raise FileNotFoundError(f"{out_dir / IMAGES_DIR} has no DICOM for ImageId {missing[0]}")
    positives = [i for i in annotations if annotations[i]]
    negatives = [i for i in annotations if not annotations[i]]
    n_pos = min(len(positives), max(n - max(1, n // 3), n - len(negatives)))
    chosen = positives[:n_pos] + negatives[: n - n_pos]
    fig, axes = plt.subplots(2, len(chosen), figsize=(2.4 * len(chosen), 5.2), squeeze=False)
    for col, image_id in enumerate(chosen):
        ds = pydicom.dcmread(paths[image_id])
        image = ds.pixel_array
        mask = rles_to_mask(annotations[image_id], *image.shape)
        axes[0, col].imshow(image, cmap="gray", vmin=0, vmax=255)
        k = len(annotations[image_id])
        finding = f"{k} pneumothorax region{'s' if k > 1 else ''}" if k else "no pneumothorax"
        axes[0, col].set_title(f"{ds.ViewPosition}, {finding}", fontsize=8)
        axes[1, col].imshow(image, cmap="gray", vmin=0, vmax=255)
        overlay = np.zeros((*mask.shape, 4), np.float32)
        overlay[mask] = (1.0, 0.15, 0.1, 0.55)
        axes[1, col].imshow(overlay)
        for ax in axes[:, col]:
            ax.set_axis_off()
    axes[0, 0].text(
        -0.08, 0.5, "image", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right"
    )
    axes[1, 0].text(
        -0.08, 0.5, "mask", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right"
    )
    fig.tight_layout()
    return atomic.save_figure(fig, png_path, dpi=80)
