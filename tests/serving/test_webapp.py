"""The web service: every endpoint and every refusal, with a fake predictor and the real one."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pydicom
import pytest
from dicom_files import chest_like, replace_bytes, tiny_bomb, write_dicom
from serve_helpers import (  # noqa: F401  (restore_library_loggers is autouse)
    BOX,
    FILE_NAME,
    LOCAL,
    OP,
    PATIENT,
    FakePrediction,
    FakePredictor,
    FakeSegRenderer,
    LocalServer,
    local_client,
    restore_library_loggers,
)

from ptxseg.data.rle import rle_decode
from ptxseg.model.operating_point import OperatingPoint
from ptxseg.serving.render import DefaultRenderer, keep_identifiers_out_of_logs
from ptxseg.serving.webapp import ServeSettings, create_app


@pytest.fixture()
def dicom_bytes(tmp_path: Path) -> bytes:
    path = write_dicom(tmp_path / FILE_NAME, chest_like(64), **PATIENT)
    return path.read_bytes()


@pytest.fixture()
def png_bytes() -> bytes:
    return cv2.imencode(".png", chest_like(64))[1].tobytes()


@pytest.fixture()
def jpeg_bytes() -> bytes:
    return cv2.imencode(".jpg", chest_like(64))[1].tobytes()


def make_client(predictor=None, **settings):
    predictor = predictor or FakePredictor()
    card = {"encoder": "fake", "input_size": [64, 64]}
    app = create_app(
        predictor, ServeSettings(model_card=card, **settings), renderer=FakeSegRenderer()
    )
    return local_client(app), predictor


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    data = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def upload(client, data: bytes, name: str = FILE_NAME, path="/v1/predict", **params):
    files = {"file": (name, data, "application/octet-stream")}
    return client.post(path, files=files, params=params)


# --- endpoints -----------------------------------------------------------------------------------


def test_healthz_and_model_card():
    client, _ = make_client(max_upload_mb=7)
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model_loaded": True, "workers": 1, "busy": 0}
    card = client.get("/v1/model").json()
    assert card["encoder"] == "fake" and card["input_size"] == [64, 64]
    assert card["intended_use"].startswith("Research use only")
    assert card["max_upload_mb"] == 7 and card["uploads_kept"] is False


def test_page_and_static_files_are_served_without_external_resources():
    client, _ = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Research use only" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert "http://" not in response.text and "https://" not in response.text, asset
    assert "http://" not in page.text and "https://" not in page.text


def test_openapi_schema_lists_the_endpoints():
    client, _ = make_client()
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/seg", "/v1/model", "/healthz"} <= set(schema["paths"])
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/dicom" in body
    assert client.get("/docs").status_code == 404  # Swagger UI would run a CDN's scripts here


def test_predict_dicom_returns_findings_mask_and_images(dicom_bytes):
    client, predictor = make_client()
    response = upload(client, dicom_bytes)
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Request-ID"] == body["request_id"]
    findings = body["findings"]
    assert findings["pneumothorax"] is True and findings["probability"] == 0.9
    assert findings["area_px"] == 100
    assert findings["area_cm2"] == pytest.approx(100 * 0.168**2 / 100, abs=1e-3)
    assert findings["side"] == "right" and findings["bbox"] == [5, 10, 15, 20]
    assert findings["operating_point"] == OP
    assert body["input"]["kind"] == "dicom" and body["input"]["pixel_spacing_mm"] == [0.168] * 2
    expected = np.zeros((64, 64), bool)
    expected[BOX] = True
    assert np.array_equal(rle_decode(body["mask"]["rle"], 64, 64), expected)
    assert np.array_equal(decode_data_url(body["mask"]["png"]) > 127, expected)
    image = decode_data_url(body["image_png"])
    assert image.shape == (64, 64)
    assert np.abs(image.astype(int) - chest_like(64).astype(int)).max() <= 1
    overlay = decode_data_url(body["overlay_png"])
    assert overlay.shape == (64, 64, 3)
    assert "seg" not in body and predictor.calls == 1


def test_the_same_file_gets_the_same_findings(dicom_bytes):
    client, _ = make_client()
    first, second = (upload(client, dicom_bytes).json() for _ in range(2))
    assert first["findings"] == second["findings"]
    assert first["request_id"] != second["request_id"]
    assert FILE_NAME not in str(first)  # the client's file name is never echoed back


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_predict_raster_images_as_form_and_raw_body(kind, png_bytes, jpeg_bytes):
    data = png_bytes if kind == "png" else jpeg_bytes
    client, _ = make_client()
    form = upload(client, data, name="x-ray.bin")  # the name does not matter, the content does
    raw = client.post("/v1/predict", content=data, headers={"content-type": f"image/{kind}"})
    for response in (form, raw):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["input"]["kind"] == kind
        assert body["findings"]["area_px"] == 100 and body["findings"]["area_cm2"] is None


def test_include_selects_the_parts(dicom_bytes, png_bytes):
    client, _ = make_client()
    lean = upload(client, dicom_bytes, include="none").json()
    assert "image_png" not in lean and "overlay_png" not in lean and "png" not in lean["mask"]
    assert lean["mask"]["rle"] != "-1"
    full = upload(client, dicom_bytes, include="image,overlay,mask,seg").json()
    assert base64.b64decode(full["seg"]["base64"]) == b"SEG:100"
    assert full["seg"]["media_type"] == "application/dicom"
    assert full["seg"]["filename"].endswith(".dcm")
    assert upload(client, png_bytes, include="seg").json()["seg"] is None
    bad = upload(client, dicom_bytes, include="image,heatmap")
    assert bad.status_code == 422 and "heatmap" in bad.json()["detail"]


def test_seg_endpoint_returns_dicom_and_refuses_raster_input(dicom_bytes, png_bytes):
    client, _ = make_client()
    response = upload(client, dicom_bytes, path="/v1/seg")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert "attachment" in response.headers["content-disposition"]
    assert response.content == b"SEG:100"
    refused = upload(client, png_bytes, path="/v1/seg")
    assert refused.status_code == 415 and "original DICOM" in refused.json()["detail"]


def siim_like_dicom(size: int = 64, image_id: str = "ID_0a1b2c3d4") -> tuple[bytes, str]:
    """A synthetic SIIM-style DICOM (full patient/study header) with an invalid SOPInstanceUID."""
    import dataclasses

    from ptxseg.data import synthetic

    spec = synthetic.plan_cases(1, seed=3, positive_fraction=1.0)[0]
    spec = dataclasses.replace(spec, image_id=image_id)
    image, _ = synthetic.render_case(spec, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID it is given
        return synthetic.dicom_bytes(spec, image), spec.patient_id


def test_real_dicom_seg_matches_the_mask_even_with_invalid_source_uids(tmp_path, caplog):
    seg_module = pytest.importorskip("ptxseg.inference.seg")
    data, patient_id = siim_like_dicom()
    app = create_app(FakePredictor(), ServeSettings(), renderer=DefaultRenderer())
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a server process shows
        keep_identifiers_out_of_logs()
        caplog.clear()  # making the test file above logs its invalid UID; the server must not
        response = local_client(app).post("/v1/seg", content=data)
    assert response.status_code == 200, response.text
    assert response.content[128:132] == b"DICM"
    (tmp_path / "seg.dcm").write_bytes(response.content)
    expected = np.zeros((64, 64), bool)
    expected[BOX] = True
    assert np.array_equal(seg_module.read_segmentation_mask(tmp_path / "seg.dcm"), expected)
    for secret in ("ID_0a1b2c3d4", patient_id):
        assert secret not in caplog.text
        assert not [w for w in caught if secret in str(w.message)]


def test_the_seg_repairs_are_listed_with_the_header_warnings():
    pytest.importorskip("ptxseg.inference.seg")
    data, _ = siim_like_dicom()
    client = local_client(create_app(FakePredictor(), ServeSettings(), renderer=DefaultRenderer()))
    without = upload(client, data, include="none").json()["input"]["header_warnings"]
    listed = upload(client, data, include="seg").json()["input"]["header_warnings"]
    assert not any("referenced as" in w for w in without)
    assert any(
        "SOPInstanceUID 'ID_0a1b2c3d4' is not a valid UID; referenced as" in w for w in listed
    )
    assert len(listed) == len(set(listed))


def test_seg_from_an_incomplete_header_is_422_and_predict_still_answers(dicom_bytes):
    pytest.importorskip("ptxseg.inference.seg")
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes))
    del ds.SOPClassUID  # a SEG must name the source's SOP class; absent type-2 values are filled
    buffer = io.BytesIO()
    ds.save_as(buffer)
    dicom_bytes = buffer.getvalue()
    client = local_client(create_app(FakePredictor(), ServeSettings(), renderer=DefaultRenderer()))
    refused = client.post("/v1/seg", content=dicom_bytes)
    assert (
        refused.status_code == 422
        and "findings and the mask are still valid" in (refused.json()["detail"])
    )
    answer = upload(client, dicom_bytes, include="seg")
    assert answer.status_code == 200
    assert "could not be made" in answer.json()["seg"]["error"]


def test_seg_unavailable_is_a_clear_501(dicom_bytes, monkeypatch):
    import sys

    # as if highdicom were not installed
    monkeypatch.setitem(sys.modules, "ptxseg.inference.seg", None)
    app = create_app(FakePredictor(), ServeSettings(), renderer=DefaultRenderer())
    response = local_client(app).post("/v1/seg", content=dicom_bytes)
    assert response.status_code == 501 and "highdicom" in response.json()["detail"]


# --- refusals ------------------------------------------------------------------------------------


def test_too_large_is_413_naming_the_limit(dicom_bytes):
    client, predictor = make_client(max_upload_mb=1 / 1024)  # 1 KiB
    response = upload(client, dicom_bytes)
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "upload_too_large" and "limit of 1 KB" in body["detail"]
    raw = client.post("/v1/predict", content=dicom_bytes)
    assert raw.status_code == 413 and predictor.calls == 0


def test_too_large_without_content_length_is_counted_while_reading(dicom_bytes):
    client, predictor = make_client(max_upload_mb=1 / 1024)

    def chunks():
        for i in range(0, len(dicom_bytes), 500):
            yield dicom_bytes[i : i + 500]

    response = client.post("/v1/predict", content=chunks())  # chunked: no Content-Length
    assert response.status_code == 413 and predictor.calls == 0


def test_file_at_the_limit_is_accepted(png_bytes):
    client, _ = make_client(max_upload_mb=len(png_bytes) / 2**20)
    assert upload(client, png_bytes).status_code == 200
    client, _ = make_client(max_upload_mb=(len(png_bytes) - 1) / 2**20)
    assert upload(client, png_bytes).status_code == 413


@pytest.mark.parametrize(
    "data, name",
    [
        (b"PatientName,Doe\n" * 20, "scan.dcm"),  # named DICOM, is text
        (b"%PDF-1.7\n" + b"\0" * 300, "scan.png"),  # named PNG, is PDF
        (b"GIF89a" + b"\0" * 300, "scan.jpg"),
    ],
)
def test_unsupported_content_is_415_whatever_the_name(data, name):
    client, predictor = make_client()
    response = upload(client, data, name=name)
    assert response.status_code == 415
    assert "DICOM, PNG or JPEG" in response.json()["detail"]
    assert predictor.calls == 0


def test_unreadable_files_are_422_with_a_readable_message(dicom_bytes, png_bytes):
    client, predictor = make_client()
    truncated_dicom = dicom_bytes[:200]
    corrupt_png = png_bytes[:40]
    for data, kind in ((truncated_dicom, "DICOM"), (corrupt_png, "PNG")):
        response = upload(client, data)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith(f"The uploaded {kind} file could not be read")
        assert "upload-" not in detail and "Traceback" not in detail
    assert predictor.calls == 0


def test_empty_and_missing_file_are_422(dicom_bytes):
    client, _ = make_client()
    assert upload(client, b"").status_code == 422
    assert client.post("/v1/predict", content=b"").json()["code"] == "empty_upload"
    missing = client.post("/v1/predict", files={"other": ("a.dcm", dicom_bytes)})
    assert missing.status_code == 422 and "'file'" in missing.json()["detail"]


def test_internal_errors_are_500_with_a_request_id_and_no_details(dicom_bytes, caplog):
    client, _ = make_client(FakePredictor(fail=True))
    response = upload(client, dicom_bytes)
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] in body["detail"] and "secret" not in body["detail"]


# --- privacy, storage, concurrency ---------------------------------------------------------------


def test_logs_hold_no_file_names_or_patient_identifiers(dicom_bytes, caplog):
    client, _ = make_client()
    with caplog.at_level(logging.DEBUG):
        ok = upload(client, dicom_bytes)
        upload(client, b"not an image at all" * 10, name="Doe_Jane.txt")
    text = caplog.text
    assert ok.json()["request_id"] in text
    for secret in ("Doe", "Jane", "PID-778899", FILE_NAME):
        assert secret not in text


def test_nothing_is_written_to_disk_unless_configured(dicom_bytes, tmp_path, monkeypatch):
    import tempfile

    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    client, _ = make_client()
    big = dicom_bytes + b"\0" * (3 * 2**20)  # larger than Starlette's 1 MB in-memory spool
    assert upload(client, big).status_code == 200
    assert list(spool.iterdir()) == []


def test_keep_uploads_stores_by_request_id_owner_only(dicom_bytes, tmp_path):
    client, _ = make_client(keep_uploads=tmp_path / "kept")
    assert (tmp_path / "kept").stat().st_mode & 0o777 == 0o700  # made at start, owner-only
    response = upload(client, dicom_bytes)
    kept = list((tmp_path / "kept").iterdir())
    assert [p.name for p in kept] == [f"{response.json()['request_id']}.dcm"]
    assert kept[0].read_bytes() == dicom_bytes
    assert kept[0].stat().st_mode & 0o777 == 0o600  # patient data: this user only
    assert client.get("/v1/model").json()["uploads_kept"] is True


def test_keep_uploads_that_cannot_be_written_is_refused_at_start(tmp_path):
    from ptxseg.serving.kept import KeepFolderError

    (tmp_path / "file").write_text("x")
    for folder in (tmp_path / "file", tmp_path / "file" / "kept"):
        with pytest.raises(KeepFolderError, match=r"--keep-uploads .*: cannot write there"):
            make_client(keep_uploads=folder)


def test_a_kept_upload_that_fails_to_write_is_507_and_not_analysed(dicom_bytes, tmp_path):
    client, predictor = make_client(keep_uploads=tmp_path / "kept")
    (tmp_path / "kept").rmdir()
    (tmp_path / "kept").write_text("the folder was replaced by a file")  # as a full disk would
    response = upload(client, dicom_bytes)
    assert response.status_code == 507 and response.json()["code"] == "keep_failed"
    assert "could not write it" in response.json()["detail"] and predictor.calls == 0


@pytest.mark.parametrize("shape", [(1, 1), (3, 65535), (31, 64)])
def test_an_image_under_32_pixels_on_a_side_is_422(shape):
    client, predictor = make_client()
    pixels = np.tile(np.arange(shape[1]) % 251, (shape[0], 1)).astype(np.uint8)
    pixels[0, 0] = 255
    response = upload(client, cv2.imencode(".png", pixels)[1].tobytes(), name="x.png")
    assert response.status_code == 422 and response.json()["code"] == "image_too_small"
    assert f"{shape[0]}x{shape[1]} pixels" in response.json()["detail"]
    assert predictor.calls == 0


def test_inference_is_bounded_by_workers_and_the_loop_stays_free(png_bytes):
    gate = threading.Event()
    predictor = FakePredictor(gate=gate)
    app = create_app(predictor, ServeSettings(workers=2), renderer=FakeSegRenderer())

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
            posts = [
                asyncio.create_task(client.post("/v1/predict?include=none", content=png_bytes))
                for _ in range(4)
            ]
            for _ in range(200):  # until both workers are busy
                await asyncio.sleep(0.01)
                if predictor.active == 2:
                    break
            health = await client.get("/healthz")  # answered while inference blocks
            gate.set()
            responses = await asyncio.gather(*posts)
            return health, responses

    health, responses = asyncio.run(scenario())
    assert health.json()["busy"] == 2
    assert [r.status_code for r in responses] == [200] * 4
    assert predictor.max_active == 2 and predictor.calls == 4


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers=0"):
        create_app(FakePredictor(), ServeSettings(workers=0))


# --- the real predictor --------------------------------------------------------------------------


def test_real_predictor_end_to_end(tmp_path, dicom_bytes):
    predict = pytest.importorskip("ptxseg.inference.predictor")
    from predict_helpers import make_checkpoint

    from ptxseg.serving.card import build_model_card

    checkpoint = make_checkpoint(tmp_path / "tiny.ckpt", encoder="resnet18", size=64)
    predictor = predict.Predictor(checkpoint)
    card = build_model_card(checkpoint, predictor=predictor)
    client = local_client(create_app(predictor, ServeSettings(model_card=card)))
    model = client.get("/v1/model").json()
    assert model["encoder"] == "resnet18" and model["input_size"] == [64, 64]
    assert model["checkpoint"]["file"] == "tiny.ckpt"
    assert model["runtime"] == {"runtime": "torch", "precision": "fp32", "device": "cpu"}
    assert model["operating_point"] == OperatingPoint().to_dict() and model["tta"] == "none"
    response = upload(client, dicom_bytes)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = predictor.predict(*_read(dicom_bytes)).findings
    assert body["findings"]["probability"] == expected["probability"]
    assert body["findings"]["area_px"] == expected["area_px"]
    mask = rle_decode(body["mask"]["rle"], 64, 64)
    assert int(mask.sum()) == expected["area_px"]
    assert decode_data_url(body["overlay_png"]).shape == (64, 64, 3)


def _read(data: bytes):
    from ptxseg.data.dicom import read_image

    return read_image(io.BytesIO(data).getvalue(), name="upload.dcm")


def test_declared_oversize_is_refused_without_reading_the_body():
    app = create_app(FakePredictor(), ServeSettings(max_upload_mb=1))
    sent = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    scope = _predict_scope((b"content-length", str(2 * 2**20).encode()))
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413


def test_model_card_reads_metrics_and_best_score_from_the_checkpoint():
    from ptxseg.model.checkpoint import info_from_checkpoint
    from ptxseg.serving.card import build_model_card

    ckpt = {
        "epoch": 11,
        "global_step": 1200,
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/dice', 'mode': 'max'}": {
                "monitor": "val/dice",
                "best_model_score": 0.8123456789,
            }
        },
        "ptxseg": {
            "config": {"model": {"encoder": "resnet50", "aux_head": True}, "data": {"size": 512}},
            "operating_point": {"top": 0.7, "bottom": 0.4, "min_area": 300},
            "validation": {"competition_dice": 0.84},
        },
    }
    card = build_model_card(info=info_from_checkpoint(ckpt))
    assert card["encoder"] == "resnet50" and card["input_size"] == [512, 512]
    assert card["classification_head"] is True
    assert card["training"]["epochs_completed"] == 11
    assert card["best_checkpoint_score"] == {"monitor": "val/dice", "value": 0.812346}
    assert card["validation"] == {"competition_dice": 0.84}
    assert card["operating_point"]["min_area"] == 300
    assert "not a diagnosis" in card["intended_use"]


def test_real_siim_dicoms_get_findings_and_a_seg_without_identifiers_in_the_logs(siim_real, caplog):
    pytest.importorskip("ptxseg.inference.seg")
    import pydicom

    files = sorted(siim_real.rglob("*.dcm"))[:3]
    if not files:
        pytest.skip("no real SIIM DICOM files")
    client = local_client(create_app(FakePredictor(), ServeSettings(), renderer=DefaultRenderer()))
    secrets = []
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a server process shows
        keep_identifiers_out_of_logs()
        for path in files:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            secrets += [path.stem, str(header.get("PatientID", "")), str(header.SOPInstanceUID)]
            response = upload(client, path.read_bytes(), name=path.name, include="seg,mask")
            assert response.status_code == 200, (path.name, response.text)
            body = response.json()
            assert body["input"]["kind"] == "dicom" and body["findings"]["area_px"] == 100
            assert body["findings"]["area_cm2"] is not None
            seg = base64.b64decode(body["seg"]["base64"])
            assert seg[128:132] == b"DICM"
    shown = caplog.text + "".join(str(w.message) for w in caught)
    for secret in filter(None, secrets):
        assert secret not in shown


# --- hostile and broken uploads ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jpeg", "png", "dicom"])
def test_a_decompression_bomb_is_413_before_decoding(kind, tmp_path):
    if kind == "dicom":
        data = write_dicom(tmp_path / "b.dcm", chest_like(64), Rows=30000, Columns=30000)
        data = data.read_bytes()
    else:
        data = tiny_bomb(kind)
    client, predictor = make_client()
    response = upload(client, data, name=f"bomb.{kind}")
    assert response.status_code == 413, response.text
    body = response.json()
    assert body["code"] == "image_too_large" and "30000x30000 pixels" in body["detail"]
    assert "60 megapixels" in body["detail"] and predictor.calls == 0
    small_limit, _ = make_client(max_megapixels=0.001)
    assert upload(small_limit, cv2.imencode(".png", chest_like(64))[1].tobytes()).status_code == 413
    assert client.get("/v1/model").json()["max_megapixels"] == 60


def test_malformed_pixel_spacing_is_answered_and_kept_out_of_the_log(tmp_path, caplog):
    path = write_dicom(tmp_path / "sp.dcm", chest_like(64), jpeg=True)
    replace_bytes(path, b"0.168\\0.168", b"abc-header ")
    client, _ = make_client()
    with caplog.at_level(logging.DEBUG):
        response = upload(client, path.read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["input"]["pixel_spacing_mm"] is None
    assert any("abc-header" in w for w in body["input"]["header_warnings"])
    assert "abc-header" not in caplog.text and "Traceback" not in caplog.text


class QuotingPredictor:
    """Fails with a message that quotes a header value, as library errors often do."""

    def predict(self, image, metadata):
        raise ValueError(f"cannot use {metadata['PatientID']!r}")


def test_internal_errors_log_the_type_and_frames_not_the_message(dicom_bytes, caplog):
    client, _ = make_client(QuotingPredictor())
    with caplog.at_level(logging.DEBUG):
        response = upload(client, dicom_bytes)
    assert response.status_code == 500
    assert "ValueError" in caplog.text and "test_webapp.py" in caplog.text
    assert PATIENT["PatientID"] not in caplog.text and PATIENT["PatientID"] not in response.text


def test_a_client_that_disconnects_mid_upload_is_not_a_server_error(caplog):
    app = create_app(FakePredictor(), ServeSettings(max_upload_mb=1))
    sent = []
    messages = iter(
        [
            {"type": "http.request", "body": b"\x00" * 1000, "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    for content_type in (b"application/dicom", b"multipart/form-data; boundary=xyz"):
        scope = _predict_scope((b"content-type", content_type))
        messages = iter(
            [
                {"type": "http.request", "body": b"--xyz\r\n" + b"\x00" * 100, "more_body": True},
                {"type": "http.disconnect"},
            ]
        )
        sent.clear()
        with caplog.at_level(logging.DEBUG):
            asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 400
        assert "code=client_disconnected" in caplog.text
        assert "status=500" not in caplog.text and "Traceback" not in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_concurrent_uploads_get_only_their_own_header_warnings(tmp_path):
    """Four inference threads, 48 uploads in flight from 12 clients: no warning crosses over."""
    uids = [f"ID_{i:09x}" for i in range(16)]
    files = {
        uid: write_dicom(tmp_path / f"{uid}.dcm", chest_like(64, i), SOPInstanceUID=uid)
        for i, uid in enumerate(uids)
    }
    files["clean"] = write_dicom(tmp_path / "clean.dcm", chest_like(64))
    app = create_app(FakePredictor(), ServeSettings(workers=4), renderer=FakeSegRenderer())
    jobs = [(name, path.read_bytes()) for name, path in files.items()] * 3

    def send(url, job):
        name, data = job
        answer = httpx.post(f"{url}/v1/predict?include=none", files={"file": ("x", data)})
        return name, answer.json()["input"]["header_warnings"]

    with LocalServer(app) as url, ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda job: send(url, job), jobs))
    assert len(results) == len(jobs)
    for name, problems in results:
        text = " ".join(problems)
        assert [u for u in uids if u in text] == ([name] if name != "clean" else [])


def _predict_scope(header: tuple[bytes, bytes]) -> dict:
    """The ASGI scope of a POST to /v1/predict from this machine, with `header` and the Host."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [header, (b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
