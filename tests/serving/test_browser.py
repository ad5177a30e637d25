"""The page in a real browser (Debian's chromium driven by Playwright): upload, overlay, numbers,
all under the service's Content-Security-Policy; and a page of another origin that posts an image
to the service is refused.

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
from ptxseg.serving.card import LIMITATIONS
from ptxseg.serving.webapp import ServeSettings, create_app

pytestmark = pytest.mark.browser

CHROMIUM = chromium.find() or "/usr/bin/chromium"
SIZE = 512
OP = {"top": 0.6, "bottom": 0.4, "min_area": 20}


class OraclePredictor:
    """Returns a fixed mask (the synthetic ground truth) as if a model had found it."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask
        self.calls = 0

    def predict(self, image, metadata):
        self.calls += 1
        findings = compute_findings(self.mask, 0.934, metadata, OP, "demo")
        return FakePrediction(self.mask.astype(np.float32), self.mask, findings)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A synthetic SIIM-style DICOM (the largest pneumothorax of a few) and its true mask."""
    from ptxseg.data import synthetic

    specs = synthetic.plan_cases(6, seed=11, positive_fraction=1.0)
    rendered = [(spec, *synthetic.render_case(spec, SIZE)) for spec in specs]
    spec, image, masks = max(rendered, key=lambda r: int(np.sum(r[2])))
    spec = dataclasses.replace(spec, view_position="PA")
    mask = np.logical_or.reduce(masks)
    path = tmp_path_factory.mktemp("browser") / "chest.dcm"
    path.write_bytes(synthetic.dicom_bytes(spec, image))
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
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            answer = page.goto(url + "/")
            policy = answer.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
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
            # the policy blocked nothing the page needs: no violation was reported
            assert not [m for m in console if "Content Security Policy" in m], console
    assert requested and all(r.startswith(url) or r.startswith("blob:") for r in requested)


ATTACK_PAGE = """<!doctype html><title>waiting</title><script>
const bytes = Uint8Array.from(atob("%s"), (c) => c.charCodeAt(0));
const form = new FormData();
form.append("file", new Blob([bytes], {type: "image/png"}), "chest.png");
fetch("%s/v1/predict", {method: "POST", mode: "no-cors", body: form})
  .then(() => { document.title = "sent"; }, () => { document.title = "failed"; });
</script>"""


def test_a_page_of_another_origin_cannot_post_an_image(browser, case, caplog):
    """A cross-origin multipart POST needs no preflight: the browser sends it. The service
    refuses it by its Origin before reading the upload, so nothing is analysed."""
    import base64
    import logging

    import cv2
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    _, mask = case
    oracle = OraclePredictor(mask)
    service = create_app(oracle, ServeSettings())
    png = cv2.imencode(".png", (np.indices((SIZE, SIZE)).sum(0) // 4).astype(np.uint8))[1].tobytes()
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("ignore")
        with LocalServer(service) as target:
            attacker = FastAPI()
            html = ATTACK_PAGE % (base64.b64encode(png).decode(), target)

            @attacker.get("/")
            async def page() -> HTMLResponse:
                return HTMLResponse(html)

            with LocalServer(attacker) as evil:
                assert evil != target  # another port: another origin
                page = browser.new_page()
                page.goto(evil + "/")
                page.wait_for_function("document.title !== 'waiting'", timeout=30_000)
                page.close()
    # the browser sent it (same-site: another port of 127.0.0.1), and the service refused it
    assert "status=403 code=cross_origin Sec-Fetch-Site is 'same-site'" in caplog.text
    assert oracle.calls == 0
