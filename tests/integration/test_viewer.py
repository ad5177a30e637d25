"""`ptxseg view` without a browser: finding the pinned OHIF, the files and configuration it serves,
the DICOMweb forwarder (credentials from the environment only), a predict run's results."""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from dicom_files import chest_like, write_dicom
from pacs_helpers import FakeDicomweb

from ptxseg.cli import main
from ptxseg.data.dicom import read_image
from ptxseg.inference.findings import compute_findings
from ptxseg.inference.seg import write_segmentation
from ptxseg.inference.sr import write_report
from ptxseg.integration import viewer as vw

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dist(tmp_path) -> Path:
    folder = tmp_path / "ohif" / "dist"
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<html>OHIF</html>")
    (folder / "app.bundle.js").write_text("console.log('ohif')")
    (folder / "codec.wasm").write_bytes(b"\0asm")
    (folder.parent / "package.json").write_text(json.dumps({"version": vw.OHIF_VERSION}))
    (tmp_path / "secret.txt").write_text("outside the build")
    return folder


class Upstream(BaseHTTPRequestHandler):
    """A DICOMweb server that answers every GET with a fixed body and records the request."""

    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        Upstream.seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"),
             "accept": self.headers.get("Accept")}
        )  # fmt: skip
        body = b'[{"00080060": {"vr": "CS", "Value": ["CR"]}}]'
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()


@pytest.fixture
def viewer(dist, upstream):
    env = {"PTXSEG_DICOMWEB_USER": "reader", "PTXSEG_DICOMWEB_PASSWORD": "s3cret"}
    server = vw.make_server(dist, upstream, environ=env)
    server.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_viewer_binds_loopback_and_serves_the_build(viewer):
    assert viewer.server_address[0] == "127.0.0.1"
    base = viewer.base_url
    assert requests.get(f"{base}/").text == "<html>OHIF</html>"
    assert requests.get(f"{base}/viewer?StudyInstanceUIDs=1.2.3").text == "<html>OHIF</html>"
    assert requests.get(f"{base}/app.bundle.js").text == "console.log('ohif')"
    assert requests.get(f"{base}/codec.wasm").headers["Content-Type"] == "application/wasm"
    assert requests.get(f"{base}/missing.js").status_code == 404
    connection = http.client.HTTPConnection("127.0.0.1", viewer.server_address[1])
    connection.request("GET", "/../secret.txt")  # sent as is, not normalised by a client
    answer = connection.getresponse()
    assert answer.status == 404 and b"outside the build" not in answer.read()


def test_the_configuration_points_ohif_at_its_own_origin(viewer):
    config = requests.get(f"{viewer.base_url}/app-config.js").text
    assert 'window.location.origin + "/dicom-web"' in config
    assert '"defaultDataSourceName": "dicomweb"' in config
    assert "127.0.0.1" not in config  # the PACS's address stays on the server


def test_dicomweb_is_forwarded_with_the_environments_credentials(viewer, upstream):
    answer = requests.get(
        f"{viewer.base_url}/dicom-web/studies?PatientID=x&limit=5",
        headers={"Accept": "application/dicom+json", "Authorization": "Bearer browser-token"},
    )
    assert answer.status_code == 200 and answer.json()[0]["00080060"]["Value"] == ["CR"]
    assert answer.headers["Content-Type"] == "application/dicom+json"
    [seen] = Upstream.seen
    assert seen["path"] == "/dicom-web/studies?PatientID=x&limit=5"
    assert seen["accept"] == "application/dicom+json"
    assert seen["auth"].startswith("Basic ") and seen["auth"] != "Bearer browser-token"
    assert requests.post(f"{viewer.base_url}/dicom-web/studies", data=b"x").status_code == 405
    assert len(Upstream.seen) == 1  # nothing written through the viewer


def test_a_token_from_the_environment_is_sent_as_bearer(dist, upstream):
    server = vw.make_server(dist, upstream, environ={"PTXSEG_DICOMWEB_TOKEN": "t0ken"})
    server.start()
    try:
        requests.get(f"{server.base_url}/dicom-web/studies")
    finally:
        server.shutdown()
        server.server_close()
    assert Upstream.seen[-1]["auth"] == "Bearer t0ken"


def test_an_absent_viewer_is_refused_with_how_to_fetch_it(tmp_path, capsys):
    with pytest.raises(vw.ViewerMissingError, match="make viewer"):
        vw.find_ohif(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["view", "--url", "http://127.0.0.1:9/dicom-web", "--ohif", str(tmp_path)])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "make viewer" in err and vw.OHIF_VERSION in err


def test_the_environment_names_the_build(dist):
    assert vw.find_ohif(environ={vw.OHIF_ENV: str(dist)}) == dist
    assert vw.ohif_version(dist) == vw.OHIF_VERSION


def test_the_pinned_version_is_the_same_in_the_lock_and_the_code():
    package = json.loads((ROOT / "viewer" / "package.json").read_text())
    lock = json.loads((ROOT / "viewer" / "package-lock.json").read_text())
    entry = lock["packages"]["node_modules/@ohif/app"]
    assert package["dependencies"]["@ohif/app"] == entry["version"] == vw.OHIF_VERSION
    assert lock["packages"][""]["dependencies"]["@ohif/app"] == vw.OHIF_VERSION
    assert entry["integrity"].startswith("sha512-") and entry["resolved"].endswith(
        f"app-{vw.OHIF_VERSION}.tgz"
    )


def test_study_urls_open_the_studies_or_the_list():
    assert vw.study_url("http://h", []) == "http://h/"
    assert vw.study_url("http://h", ["1.2", "3.4"]) == "http://h/viewer?StudyInstanceUIDs=1.2,3.4"


def _predict_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A folder as `ptxseg predict --seg --sr` writes it, for one positive DICOM."""
    src = write_dicom(tmp_path / "cr.dcm", chest_like(64), PatientAge="62")  # repaired on store
    mask = np.zeros((64, 64), bool)
    mask[10:40, 5:20] = True
    _, meta = read_image(src)
    findings = compute_findings(mask, 0.9, meta, {"top": 0.5}, "resnet50")
    out = tmp_path / "run"
    findings["input_file"] = str(src)
    findings["seg_file"] = str(write_segmentation(src, mask, out / "seg" / "cr.dcm"))
    findings["sr_file"] = str(write_report(src, findings, out / "sr" / "cr.dcm", mask=mask))
    (out / "findings").mkdir()
    (out / "findings" / "cr.json").write_text(json.dumps(findings))
    return out, src


def test_a_predict_run_names_its_studies_and_stores_them_with_the_sources(tmp_path):
    import pydicom

    out, src = _predict_folder(tmp_path)
    results = vw.run_results(out)
    assert [r.source for r in results] == [src] and results[0].seg is not None
    assert vw.studies_of(results) == [str(pydicom.dcmread(src).StudyInstanceUID)]
    pacs = FakeDicomweb()
    assert vw.store_results(pacs, results) == 1
    kinds = sorted(str(ds.Modality) for ds in pacs.stored)
    assert kinds == ["CR", "SEG", "SR"]
    [source] = [ds for ds in pacs.stored if ds.Modality == "CR"]
    assert "PatientAge" not in source  # the copy the SEG and SR describe


def test_a_folder_without_reports_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--seg --sr"):
        vw.run_results(tmp_path)
