"""The page in a real browser (Debian's chromium driven by Playwright): upload, overlay, numbers.

Needs `scripts/install-browser.sh` (chromium from apt, Playwright from pip; no browser download).
The predictor is an oracle that returns the synthetic radiograph's true mask, so the picture and
the numbers are known. Set PTXSEG_SCREENSHOT=docs/images/serve.png to refresh the README image.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import chromium
import numpy as np
import pytest
from serve_helpers import (  # noqa: F401
    FakePrediction,
    FakePredictor,
    FakeSegRenderer,
    LocalServer,
    restore_library_loggers,
)

from ptxseg.data.dicom import read_image
from ptxseg.inference.findings import compute_findings
from ptxseg.serving.app import ServeSettings, create_app
from ptxseg.serving.card import LIMITATIONS

pytestmark = pytest.mark.browser

CHROMIUM = chromium.find() or "/usr/bin/chromium"
SIZE = 512
OP = {"top": 0.6, "bottom": 0.4, "min_area": 20}


class OraclePredictor:
    """Returns a fixed mask (the synthetic ground truth) as if a model had found it."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask

    def predict(self, image, metadata):
        findings = compute_findings(self.mask, 0.934, metadata, OP, "demo")
        return FakePrediction(self.mask.astype(np.float32), self.mask, findings)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A synthetic SIIM-style DICOM (the largest pneumothorax of a few) and its true mask."""
    from ptxseg.data import synth

    specs = synth.plan_cases(6, seed=11, positive_fraction=1.0)
    rendered = [(spec, *synth.render_case(spec, SIZE)) for spec in specs]
    spec, image, masks = max(rendered, key=lambda r: int(np.sum(r[2])))
    spec = dataclasses.replace(spec, view_position="PA")
    mask = np.logical_or.reduce(masks)
    path = tmp_path_factory.mktemp("browser") / "chest.dcm"
    path.write_bytes(synth.dicom_bytes(spec, image))
    return path, mask


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: run scripts/install-browser.sh")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium.ARGS)
        yield browser
        browser.close()


def canvas_pixel(page, x: int, y: int) -> list[int]:
    return page.evaluate(
        "([x, y]) => Array.from(document.getElementById('canvas')"
        ".getContext('2d').getImageData(x, y, 1, 1).data)",
        [x, y],
    )


def test_upload_a_dicom_and_read_the_findings(browser, case, tmp_path):
    path, mask = case
    # No invented metrics: the card says what serves the page here, a stand-in for a model.
    card = {"encoder": "demo (synthetic ground truth)", "input_size": [SIZE, SIZE]}
    card["limitations"] = LIMITATIONS
    settings = ServeSettings(model_card=card, max_upload_mb=2)
    app = create_app(OraclePredictor(mask), settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with LocalServer(app) as url:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            script_errors: list[str] = []
            page.on("pageerror", lambda error: script_errors.append(str(error)))
            page.goto(url + "/")
            assert page.get_by_text("Research use only — not a diagnosis.").is_visible()
            page.wait_for_selector("#model-facts dd")
            assert "synthetic ground truth" in page.inner_text("#model-facts")

            page.set_input_files("#file", str(path))
            page.wait_for_selector("#results:not([hidden])", timeout=30_000)
            area_px = int(mask.sum())
            assert page.inner_text("#verdict") == "Pneumothorax suspected"
            assert page.inner_text("#probability").startswith("0.934")
            assert f"{area_px:,} px" in page.inner_text("#area")
            assert "cm²" in page.inner_text("#area")
            expected_side = "right" if np.argwhere(mask)[:, 1].mean() < SIZE / 2 else "left"
            assert page.inner_text("#side") == f"patient's {expected_side}"
            assert (
                page.inner_text("#operating-point")
                == "default: top 0.6, min area 20 px, bottom 0.4"
            )
            assert "Raw model score" in page.inner_text("#probability-note")  # no calibrator
            f = compute_findings(mask, 0.934, read_image(path)[1], OP, "demo")
            assert page.inner_text("#size-estimate") == (
                f"BTS {f['bts_class_est']} (rim {f['bts_rim_mm_est'] / 10:.1f} cm) · "
                f"ACCP {f['accp_class_est']} (apex {f['accp_apex_mm_est'] / 10:.1f} cm)"
            )
            assert "estimated from the mask" in page.inner_text("#size-note")
            assert page.is_visible("#dl-seg") and page.is_visible("#dl-overlay")
            assert page.get_attribute("#dl-mask", "href").startswith("data:image/png")

            y, x = np.argwhere(mask)[len(np.argwhere(mask)) // 2]
            with_mask = canvas_pixel(page, int(x), int(y))
            page.fill("#opacity", "100")
            page.dispatch_event("#opacity", "input")
            assert canvas_pixel(page, int(x), int(y))[:3] == [230, 40, 40]
            page.uncheck("#show-mask")
            plain = canvas_pixel(page, int(x), int(y))
            assert plain[0] == plain[1] == plain[2] != with_mask[0]  # gray without the mask
            page.check("#show-mask")
            page.fill("#opacity", "45")
            page.dispatch_event("#opacity", "input")

            shot = Path(os.environ.get("PTXSEG_SCREENSHOT") or tmp_path / "serve.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            bad = tmp_path / "notes.dcm"
            bad.write_text("not an image " * 30)
            page.click("#another")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#error:not([hidden])")
            assert "not a DICOM, PNG or JPEG" in page.inner_text("#error")

            big = {"name": "big.dcm", "mimeType": "application/dicom", "buffer": b"0" * 3 * 2**20}
            page.set_input_files("#file", files=[big])
            page.wait_for_selector("#error:not([hidden])")
            assert "upload limit of 2 MB" in page.inner_text("#error")
            page.close()
            assert script_errors == []
    assert requested and all(r.startswith(url) or r.startswith("blob:") for r in requested)
