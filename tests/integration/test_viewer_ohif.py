"""ptxseg's results in a radiologist's viewer (marker `viewer`, `make test-viewer`).

A real Orthanc (Debian) holds a repaired real SIIM study and a synthetic radiograph (positive) and
a third study (negative); `ptxseg dicomweb` stores their SEG and SR, `ptxseg view` serves the
pinned OHIF under one origin with the PACS, and Playwright drives Debian's chromium:

- the SEG loads, the segmentation panel lists the Pneumothorax segment, and the overlay covers
  the mask's place (screen pixels inside the mask's box change, pixels outside do not);
- the SR's outline is drawn on the mask's border with its area as a label;
- the negative study has no SEG; its SR is listed, and OHIF 3.13 shows nothing of it: its SR code
  needs image coordinates in every measurement group and fails on the negative's image-level
  group (a blank viewport and "Something went wrong"). The test holds that, so an OHIF that
  shows negatives makes it fail and docs/viewer.md gets updated.

Image pixels are mapped to the screen by cornerstone itself (`window.cornerstone`). Screenshots
go to test-artifacts/viewer/ (or $PTXSEG_ARTIFACTS/viewer); docs/images/ohif-seg.png and
ohif-sr.png are the synthetic study's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import chromium
import cv2
import numpy as np
import pytest
import requests
from conftest import SIIM_REAL
from dciodvfy import binary as dciodvfy_binary
from dciodvfy import validate
from orthanc import start_orthanc, stop_orthanc
from pacs_helpers import free_port, read
from predict_helpers import RegionModel

from ptxseg.cli import main
from ptxseg.inference.sr import read_report
from ptxseg.integration import viewer as vw

pytestmark = pytest.mark.viewer
BOX = (8, 10, 22, 40)  # the RegionModel's box on its 64-pixel grid: x0, y0, x1, y1
POSITIVE_OP = {"top": 0.5, "bottom": 0.5, "min_area": 1}
NEGATIVE_OP = {"top": 0.99999, "bottom": 0.5, "min_area": 1}  # the box's 0.9997 never passes
ARTIFACTS = Path(os.environ.get("PTXSEG_ARTIFACTS") or "test-artifacts") / "viewer"
SEG_LABEL, SR_LABEL = "ptxseg pneumothorax segmentation", "ptxseg pneumothorax report"
TO_SCREEN = """(points) => {
  const cs = window.cornerstone;
  const viewport = cs.getRenderingEngines()[0].getViewports()
    .find((v) => v.getCurrentImageId && v.getCurrentImageId());
  const imageId = viewport.getCurrentImageId();
  const rect = viewport.canvas.getBoundingClientRect();
  return points.map(([x, y]) => {
    const canvas = viewport.worldToCanvas(cs.utilities.imageToWorldCoords(imageId, [x, y]));
    return [rect.left + canvas[0], rect.top + canvas[1]];
  });
}"""


@dataclasses.dataclass
class Study:
    name: str
    uid: str
    box: tuple[int, int, int, int] | None  # the mask's box in image pixels (x0, y0, x1, y1)


def _cli(args, env) -> None:
    """`ptxseg ARGS` in-process with `env` set; it must succeed."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with pytest.raises(SystemExit) as done:
            main(args)
    assert (done.value.code or 0) == 0, f"ptxseg {' '.join(args[:2])} exited {done.value.code}"


def _synthetic(folder: Path, seed: int) -> Path:
    from ptxseg.data import synthetic

    [spec] = synthetic.plan_cases(1, seed=seed, positive_fraction=1.0)
    spec = dataclasses.replace(spec, view_position="PA")
    image, _ = synthetic.render_case(spec, 512)
    path = folder / f"synthetic-{seed}.dcm"
    path.write_bytes(synthetic.dicom_bytes(spec, image))
    return path


def _box_at(size: int) -> tuple[int, int, int, int]:
    scale = size / 64
    return tuple(int(v * scale) for v in BOX)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with three studies and ptxseg's results stored by `ptxseg dicomweb`."""
    from ptxseg.inference.export import export_onnx

    dist = _ohif()
    root = tmp_path_factory.mktemp("viewer")
    server = start_orthanc(root / "orthanc")
    try:
        files = {"synthetic": _synthetic(root, 5), "negative": _synthetic(root, 6)}
        real = SIIM_REAL / "vishakhnair16-stage2-test" / "ID_0011fe81e.dcm"
        if real.is_file():  # the real study when the SIIM files are there
            _cli(["repair-uids", str(real), "--out", str(root / "repaired")], {})
            files["real"] = root / "repaired" / real.name
        studies = {}
        for name, path in files.items():
            server.upload(path)
            ds = read(path.read_bytes())
            box = None if name == "negative" else _box_at(int(ds.Rows))
            studies[name] = Study(name, str(ds.StudyInstanceUID), box)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for op, names in ((POSITIVE_OP, ("real", "synthetic")), (NEGATIVE_OP, ("negative",))):
                model = root / f"region-{op['top']}.onnx"
                export_onnx(RegionModel(BOX, operating_point=op), model)
                uids = [arg for n in names if n in studies for arg in ("--study", studies[n].uid)]
                _cli(["dicomweb", "--url", server.dicomweb, "-c", str(model), "--runtime",
                      "onnxruntime", *uids], server.env)  # fmt: skip
        yield server, studies, dist, root
    finally:
        stop_orthanc(server)


def _ohif() -> Path:
    try:
        return vw.find_ohif()
    except vw.ViewerMissingError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def view(pacs):
    """`ptxseg view` as a user runs it: its own process, credentials from the environment."""
    server, _studies, dist, root = pacs
    port = free_port()
    env = dict(os.environ, **server.env, PTXSEG_OHIF_DIST=str(dist))
    env["PYTHONPATH"] = os.pathsep.join([str(Path("src").resolve()), *sys.path])
    log = root / "view.log"
    command = [sys.executable, "-m", "ptxseg", "view", "--url", server.dicomweb, "--port",
               str(port), "--no-browser"]  # fmt: skip
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/app-config.js", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            pytest.fail(f"ptxseg view did not answer:\n{log.read_text()}")
        yield base
    finally:
        process.terminate()
        process.wait(20)


try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the browser fixture skips
    PlaywrightTimeout = TimeoutError


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    path = chromium.find()
    if path is None:
        pytest.skip("chromium not found: run scripts/install-browser.sh")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=path, args=chromium.ARGS)
        yield launched
        launched.close()


def _open(browser, base: str, study: Study):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(vw.study_url(base, [study.uid]))
    page.wait_for_selector('[data-cy="study-browser-thumbnail"]', timeout=60_000)
    page.wait_for_function("() => window.cornerstone && window.cornerstone.getRenderingEngines()"
                           ".length > 0", timeout=60_000)  # fmt: skip
    skip = page.get_by_text("Skip all")  # OHIF's first-visit tour
    if skip.count():
        skip.first.click()
    _settle(page)
    return page, errors


def _settle(page, seconds: float = 2.0) -> None:
    page.wait_for_load_state("networkidle")
    time.sleep(seconds)


def _screenshot(page, name: str) -> np.ndarray:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return cv2.imread(str(path))


def _screen_box(page, box) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    (sx0, sy0), (sx1, sy1) = page.evaluate(TO_SCREEN, [[x0, y0], [x1, y1]])
    return int(round(sx0)), int(round(sy0)), int(round(sx1)), int(round(sy1))


def _inside_outside(change: np.ndarray, box, margin: int = 6) -> tuple[float, float]:
    """Mean change strictly inside the box and in a band just outside it."""
    x0, y0, x1, y1 = box
    inside = change[y0 + margin : y1 - margin, x0 + margin : x1 - margin].mean()
    band = np.zeros(change.shape, bool)
    band[y0 - 40 : y1 + 40, x0 - 40 : x1 + 40] = True
    band[y0 - margin : y1 + margin, x0 - margin : x1 + margin] = False
    return float(inside), float(change[band].mean())


@pytest.mark.parametrize("name", ["real", "synthetic"])
def test_seg_overlay_and_sr_outline_are_shown_where_the_mask_is(pacs, view, browser, name):
    server, studies, _dist, _root = pacs
    if name not in studies:
        pytest.skip(f"real SIIM files not found at {SIIM_REAL}")
    study = studies[name]
    page, errors = _open(browser, view, study)
    thumbnails = page.inner_text('[data-cy="studyBrowser-panel"]')
    assert SEG_LABEL in thumbnails and SR_LABEL in thumbnails

    page.locator('[data-cy="panelSegmentation-btn"]').click()
    _settle(page)
    before = _screenshot(page, f"{name}-0-image")
    page.get_by_text(SEG_LABEL).first.dblclick()
    page.get_by_role("button", name="Yes").click(timeout=30_000)  # "open this Segmentation?"
    page.wait_for_selector("text=Pneumothorax", timeout=60_000)
    _settle(page, 4)
    panel = page.inner_text("body")
    assert SEG_LABEL in panel and "Pneumothorax" in panel  # the segment in the panel
    after = _screenshot(page, f"{name}-1-seg")
    box = _screen_box(page, study.box)
    change = np.abs(after.astype(int) - before.astype(int)).sum(axis=2)
    inside, outside = _inside_outside(change, box)
    red = after[box[1] + 8 : box[3] - 8, box[0] + 8 : box[2] - 8].astype(int)
    assert inside > 40 and outside < 5, (inside, outside, box)
    assert (red[..., 2] - red[..., 1]).mean() > 20  # BGR: the overlay is red

    page.get_by_text(SR_LABEL).first.dblclick()
    with contextlib.suppress(PlaywrightTimeout):  # "continue tracking measurements?"
        page.get_by_role("button", name="No").click(timeout=10_000)
    page.wait_for_selector("svg text", timeout=60_000)
    _settle(page, 3)
    shot = _screenshot(page, f"{name}-2-sr")
    labels = " ".join(page.eval_on_selector_all("svg text", "all => all.map(e => e.textContent)"))
    report = read_report(server.file(_instance(server, study.uid, "SR")))
    [region] = report["regions"]
    assert f"Area: {region['area_cm2']:.2f} cm2" in labels
    # the outline is drawn on the mask's border: green on the box's edges, not in its middle
    box = _screen_box(page, study.box)
    assert _green_share_on_border(shot, box) > 0.3
    x0, y0, x1, y1 = box
    middle = shot[(y0 + y1) // 2 - 5 : (y0 + y1) // 2 + 5, (x0 + x1) // 2 - 5 : (x0 + x1) // 2 + 5]
    assert _green(middle).mean() < 0.05
    assert not [e for e in errors if "ImageOrientationPatient" in e]
    page.close()


def test_a_negative_has_no_seg_and_its_sr_is_listed(pacs, view, browser):
    server, studies, _dist, _root = pacs
    study = studies["negative"]
    modalities = sorted(t["Modality"] for t in map(server.tags, server.instance_ids())
                        if t.get("StudyInstanceUID") == study.uid)  # fmt: skip
    assert "SR" in modalities and "SEG" not in modalities and len(modalities) == 2
    assert read_report(server.file(_instance(server, study.uid, "SR")))["pneumothorax"] is False
    page, _errors = _open(browser, view, study)
    thumbnails = page.inner_text('[data-cy="studyBrowser-panel"]')
    assert SR_LABEL in thumbnails and SEG_LABEL not in thumbnails
    page.get_by_text(SR_LABEL).first.dblclick()
    _settle(page, 4)
    shot = _screenshot(page, "negative-sr")
    # What OHIF 3.13 shows of it: no measurement, a blank viewport and its error notice.
    assert page.locator("svg text").count() == 0
    assert "Something went wrong" in page.inner_text("body")
    x0, y0, x1, y1 = _viewport_rect(page)
    assert shot[y0 + 20 : (y0 + y1) // 2, x0 + 20 : x1 - 20].max() < 30  # above the notice
    page.close()


def test_stored_results_pass_the_validator(pacs):
    if dciodvfy_binary() is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed: run scripts/install-dicom3tools.sh")
    server, studies, _dist, root = pacs
    folder = root / "stored"
    folder.mkdir(exist_ok=True)
    verdicts = []
    for modality in ("SEG", "SR"):
        for index, blob in enumerate(server.by_modality(modality).values()):
            path = folder / f"{modality}-{index}.dcm"
            path.write_bytes(blob)
            verdicts.append(validate(path))
    positives = len(server.by_modality("SEG"))
    assert positives == len(studies) - 1 and len(verdicts) == 2 * positives + 1  # + negative SR
    assert [v.errors for v in verdicts] == [[]] * len(verdicts)


def _instance(server, study_uid: str, modality: str) -> str:
    for instance in server.instance_ids():
        tags = server.tags(instance)
        if tags.get("StudyInstanceUID") == study_uid and tags.get("Modality") == modality:
            return instance
    raise AssertionError(f"no {modality} in study {study_uid}")


def _green(pixels: np.ndarray) -> np.ndarray:
    b, g, r = (pixels[..., i].astype(int) for i in range(3))
    return (g > 150) & (g - r > 60) & (g - b > 60)


def _green_share_on_border(shot: np.ndarray, box, reach: int = 3) -> float:
    """The share of points along the box's four edges with a green pixel within `reach`."""
    x0, y0, x1, y1 = box
    points = [(x, y) for x in np.linspace(x0, x1, 40) for y in (y0, y1)]
    points += [(x, y) for y in np.linspace(y0, y1, 40) for x in (x0, x1)]
    hits = [
        _green(shot[int(y) - reach : int(y) + reach + 1, int(x) - reach : int(x) + reach + 1]).any()
        for x, y in points
    ]
    return float(np.mean(hits))


def _viewport_rect(page) -> tuple[int, int, int, int]:
    rect = page.locator('[data-cy="viewport-pane"]').first.bounding_box()
    return (int(rect["x"]), int(rect["y"]), int(rect["x"] + rect["width"]),
            int(rect["y"] + rect["height"]))  # fmt: skip
