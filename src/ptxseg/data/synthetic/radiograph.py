"""The synthetic chest radiograph of `ptxseg synth`: anatomy, the pneumothorax, a chest drain.

The images are drawn from a simple anatomical model (body, lungs with branching vessel markings,
ribs, clavicles, spine, heart, diaphragm). A pneumothorax is an air crescent along the chest wall:
no lung markings inside, slightly darker, bounded on the lung side by a thin bright visceral
pleural line. It is subtle on purpose: a global intensity threshold cannot find it, a CNN can from
local texture and position. `render_case(spec, size)` draws one case; the files that carry it are
`ptxseg.data.synthetic.dataset_writer`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
    dome_shift = rng.uniform(-0.02, 0.02) + (0.03 if ap else 0.0)
    sides = [_Side(frame, anat, s, dome_shift) for s in (-1, 1)]
    density, tissue, u = _body(frame, anat)
    lung = _mediastinum(density, frame, anat, sides, (rng, ap, tissue, u))
    air, markings = _lung_markings(frame, anat, sides, lung, rng)
    regions_mask, pleura = _pneumothorax(spec, frame, sides, lung.shape)
    air_gap = _blur(regions_mask.astype(np.float32), frame.px(0.002))
    markings = markings * (1 - air_gap)
    lung_soft = _blur(lung.astype(np.float32), frame.px(0.003))
    density += (-0.42 * air + markings * lung_soft) * tissue
    density -= rng.uniform(0.03, 0.06) * conspicuity * air_gap * tissue
    density += 0.05 * conspicuity * pleura

    ribs_post, ribs_ant, clavicles = _ribs(frame, anat, sides, rng)
    cage = sides[0].wall_mask | sides[1].wall_mask
    cage &= frame.y < np.maximum(sides[0].dome_y, sides[1].dome_y) + 0.04
    cage = _blur(cage.astype(np.float32), frame.px(0.02))
    cage *= 0.3 + 0.7 * lung_soft
    density += (0.07 * ribs_post + 0.035 * ribs_ant) * cage + 0.13 * clavicles * tissue

    if spec.drain:
        density += _chest_drain(frame, anat, sides, np.random.default_rng([spec.seed, 2]))

    image = _expose(density, rng, frame, ap)
    _burn_in_marker(image, rng, frame, ap)
    return image, _split_regions(regions_mask, min_pixels=max(4, size * size // 20000))


def _body(frame: _Frame, anat: _Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body outline: neck, shoulders, chest; soft-tissue thickness is an elliptical profile.

    Returns the density so far, the tissue profile and the distance from the midline."""
    x, y = frame.x, frame.y
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
    return density, tissue, u


def _mediastinum(
    density: np.ndarray, frame: _Frame, anat: _Anatomy, sides: list[_Side], view: tuple
) -> np.ndarray:
    """Mediastinum, heart, aortic knob, spine, trachea, gastric air, added to `density` in
    place; the lungs' mask (the heart and knob cut out of each side's) is returned.

    `view`: (the case's generator, AP or not, the tissue profile, the distance from midline)."""
    rng, ap, tissue, u = view
    y = frame.y
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
    return lung


def _lung_markings(
    frame: _Frame, anat: _Anatomy, sides: list[_Side], lung: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Lungs: air thickness grows away from the pleura; markings and parenchymal texture."""
    dist_lung = cv2.distanceTransform(lung.astype(np.uint8), cv2.DIST_L2, 5)
    air = (1 - np.exp(-dist_lung / frame.px(0.03))).astype(np.float32)
    air = _blur(air * lung, frame.px(0.004))
    vessels = _vessel_tree(frame, sides, np.random.default_rng(anat.vessel_seed))
    for s in (-1, 1):  # hilar shadows: the pulmonary arteries and bronchi at the lung roots
        vessels += 0.5 * np.exp(-_ellipse(frame, 0.5 + s * 0.1, 0.43, 0.035, 0.06))
    texture = _band_noise(rng, frame, 0.0025, 0.008)
    return air, 0.08 * vessels + 0.015 * texture


def _pneumothorax(
    spec: CaseSpec, frame: _Frame, sides: list[_Side], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The crescent between chest wall and visceral pleura (no markings there), and its pleural
    line; both empty for a negative case."""
    regions_mask = np.zeros(shape, bool)
    pleura = np.zeros(shape, np.float32)
    if spec.positive:
        ptx_rng = np.random.default_rng([spec.seed, 1])  # own stream: the rest stays the same
        for side_index, centre in _pneumothorax_sites(ptx_rng):
            side = sides[side_index]
            dist_wall = cv2.distanceTransform(side.wall_mask.astype(np.uint8), cv2.DIST_L2, 5)
            region, line = _crescent(frame, side, dist_wall, side.angle(frame), ptx_rng, centre)
            regions_mask |= region
            np.maximum(pleura, line, out=pleura)
        pleura *= ~regions_mask
    return regions_mask, pleura


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
