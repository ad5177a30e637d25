"""The web service: a FastAPI app that segments uploaded chest X-rays, and the page that uses it.

`create_app(predictor, settings)` takes any object with `predict(image, metadata) -> Prediction`
(the real `ptxseg.inference.predictor.Predictor`, or a fake in tests), loaded once by the caller.
Inference runs in worker threads bounded by `settings.workers`, so the event loop keeps answering.
Uploads stay in memory and are dropped after the response unless `settings.keep_uploads` names a
folder (`ptxseg.serving.kept`: owner-only). Logs carry a request id and a content hash, never file
names or DICOM identifiers. Only this server's own page may drive it
(`ptxseg.serving.request_guard`: the Host names it is bound to, no cross-origin POSTs, a strict
Content-Security-Policy).

Endpoints (see also /openapi.json):
- `POST /v1/predict[?include=image,overlay,mask,seg]`: findings JSON, the mask as relative
  column-major RLE and as PNG, the input and overlay images as PNG data URLs; `seg` adds a DICOM
  SEG (base64) for a DICOM input (`{"error": ...}` when its header cannot make one, `null` for
  PNG/JPEG). `include=none` returns findings and RLE only.
- `POST /v1/seg`: the DICOM SEG itself (`application/dicom`) for a DICOM upload.
- `GET /v1/model`: the model card. `GET /healthz`: liveness. `GET /`: the page.
- `GET /openapi.json`: the schema (works offline). There is no `/docs` page: FastAPI's Swagger
  UI runs scripts from cdn.jsdelivr.net in this server's origin, which its policy forbids; open
  the schema in any OpenAPI viewer instead.
"""

from __future__ import annotations

import base64
import logging
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread
import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ptxseg.data.dicom import (
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    ImageReadError,
    ImageTooLargeError,
    ImageTooSmallError,
    read_image,
)
from ptxseg.data.rle import rle_encode
from ptxseg.serving.card import INTENDED_USE
from ptxseg.serving.kept import keep, open_keep_folder
from ptxseg.serving.render import (
    SegBuildError,
    SegUnavailableError,
    default_renderer,
    keep_identifiers_out_of_logs,
)
from ptxseg.serving.request_guard import HostRule, LocalOnly
from ptxseg.serving.upload import Upload, UploadError, read_upload

STATIC_DIR = Path(__file__).parent / "static"
INCLUDE_CHOICES = ("image", "overlay", "mask", "seg")
DEFAULT_INCLUDE = "image,overlay,mask"
log = logging.getLogger("ptxseg.serving.webapp")


class PredictorLike(Protocol):
    def predict(self, image: np.ndarray, metadata: dict[str, Any]) -> Any: ...


class Renderer(Protocol):
    """Turns a prediction into the files a reader downloads."""

    def overlay_png(self, image: np.ndarray, prediction: Any) -> bytes: ...

    def seg_dicom(self, dicom: bytes, prediction: Any) -> bytes: ...


@dataclass
class ServeSettings:
    """How the service runs; the CLI fills it from `ptxseg serve` options."""

    max_upload_mb: float = 50.0
    max_megapixels: float = DEFAULT_MAX_PIXELS / 1e6
    workers: int = 1
    keep_uploads: Path | None = None
    model_card: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the address it is bound to: the Host names it answers follow
    allowed_hosts: tuple[str, ...] = ()  # more Host names it answers (`--allowed-host`)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 gray (H, W) or RGB (H, W, 3) array as PNG."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)


def parse_include(include: str) -> set[str]:
    """The optional parts a client asked for; unknown names are a 422 naming the valid ones."""
    names = {n.strip().lower() for n in include.split(",") if n.strip()}
    if names == {"none"}:
        return set()
    unknown = names - set(INCLUDE_CHOICES)
    if unknown:
        raise UploadError(
            422,
            "bad_include",
            f"include={include!r} names {sorted(unknown)}: expected a comma-separated subset of "
            f"{', '.join(INCLUDE_CHOICES)}, or 'none'",
        )
    return names


def _keep(upload: Upload, folder: Path, request_id: str) -> None:
    """Store an upload under its request id (never its original name), atomically, owner-only."""
    try:
        keep(folder, f"{request_id}{upload.suffix}", upload.data)
    except OSError as err:
        log.error("request %s: the upload could not be kept: %s", request_id, err.strerror)
        raise UploadError(
            507,
            "keep_failed",
            "This server is configured to keep a copy of every upload and could not write it "
            f"({err.strerror or 'write error'}); the image was not analysed. Tell the "
            "administrator (the server log names the request id).",
        ) from None


class _Service:
    """The request handling behind the routes: reading, inference, rendering."""

    def __init__(self, predictor: PredictorLike, renderer: Renderer, settings: ServeSettings):
        self.predictor = predictor
        self.renderer = renderer
        self.settings = settings
        self.limiter: anyio.CapacityLimiter | None = None

    def _limiter(self) -> anyio.CapacityLimiter:
        if self.limiter is None:  # created inside the event loop, on first use
            self.limiter = anyio.CapacityLimiter(self.settings.workers)
        return self.limiter

    async def run(self, fn, *args) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter())

    def infer(self, upload: Upload, request_id: str) -> tuple[np.ndarray, dict, Any]:
        """Read and segment one upload (runs in a worker thread)."""
        if self.settings.keep_uploads is not None:
            _keep(upload, self.settings.keep_uploads, request_id)
        # A stable, non-identifying name: the same file always gets the same image id.
        name = f"upload-{upload.sha256[:12]}{upload.suffix}"
        try:
            image, metadata = read_image(
                upload.data, name=name, max_pixels=int(self.settings.max_megapixels * 1e6)
            )
        except ImageTooSmallError as err:
            raise UploadError(
                422,
                "image_too_small",
                f"The uploaded image is {err.height}x{err.width} pixels: expected a single chest "
                f"X-ray of at least {MIN_SIDE}x{MIN_SIDE} pixels.",
            ) from None
        except ImageTooLargeError as err:
            raise UploadError(
                413,
                "image_too_large",
                f"The uploaded image claims {err.height}x{err.width} pixels, more than this "
                f"server's limit of {self.settings.max_megapixels:g} megapixels; it was not "
                "decoded. Send a single chest X-ray, or ask the administrator to raise "
                "--max-megapixels.",
            ) from None
        except ImageReadError as err:
            what = "DICOM" if upload.kind == "dicom" else upload.kind.upper()
            raise UploadError(
                422,
                "unreadable_image",
                f"The uploaded {what} file could not be read "
                f"({str(err).replace(name, 'the file')}). "
                "Check that it is a complete, uncorrupted chest X-ray and try again.",
            ) from None
        prediction = self.predictor.predict(image, metadata)
        return image, metadata, prediction

    def respond(
        self,
        upload: Upload,
        image: np.ndarray,
        metadata: dict[str, Any],
        prediction: Any,
        include: set[str],
        request_id: str,
    ) -> dict[str, Any]:
        """The JSON answer for one prediction (runs in a worker thread: PNG encoding is work)."""
        mask = np.asarray(prediction.mask, dtype=bool)
        findings = dict(prediction.findings)
        body: dict[str, Any] = {
            "request_id": request_id,
            "input": {
                "kind": upload.kind,
                "bytes": len(upload.data),
                "sha256": upload.sha256,
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
                "pixel_spacing_mm": metadata.get("PixelSpacing"),
                "view_position": metadata.get("ViewPosition"),
                "header_warnings": list(metadata.get("HeaderWarnings", [])),
            },
            "findings": findings,
            "mask": {
                "rle": rle_encode(mask),
                "rle_format": "relative starts, column-major (SIIM-ACR); '-1' when empty",
                "height": int(mask.shape[0]),
                "width": int(mask.shape[1]),
            },
            "intended_use": INTENDED_USE,
        }
        if "mask" in include:
            body["mask"]["png"] = data_url(png_bytes(mask.astype(np.uint8) * 255))
        if "image" in include:
            body["image_png"] = data_url(png_bytes(to_uint8(image)))
        if "overlay" in include:
            body["overlay_png"] = data_url(self.renderer.overlay_png(image, prediction))
        if "seg" in include:
            body["seg"] = self.seg_entry(upload, prediction, request_id)
            if upload.kind == "dicom":  # what the SEG repaired in the copied header
                from ptxseg.data.uids import header_repairs

                known = body["input"]["header_warnings"]
                known += [n for n in header_repairs(upload.data) if n not in known]
        return body

    def seg_entry(self, upload: Upload, prediction: Any, request_id: str) -> dict[str, Any] | None:
        if upload.kind != "dicom":
            return None
        try:
            data = self.renderer.seg_dicom(upload.data, prediction)
        except (SegBuildError, SegUnavailableError) as err:
            return {"error": str(err)}
        return {
            "filename": f"ptxseg-seg-{request_id}.dcm",
            "media_type": "application/dicom",
            "base64": base64.b64encode(data).decode("ascii"),
        }


def _error(status: int, code: str, message: str, request_id: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message, "code": code, "request_id": request_id},
        status_code=status,
        headers={"X-Request-ID": request_id},
    )


def create_app(
    predictor: PredictorLike,
    settings: ServeSettings | None = None,
    renderer: Renderer | None = None,
) -> FastAPI:
    """The FastAPI application around an already loaded predictor."""
    settings = settings or ServeSettings()
    if settings.workers < 1:
        raise ValueError(f"workers={settings.workers}: expected at least 1 inference worker")
    if settings.max_megapixels <= 0:
        raise ValueError(f"max_megapixels={settings.max_megapixels}: expected a positive limit")
    if settings.keep_uploads is not None:
        settings.keep_uploads = open_keep_folder(settings.keep_uploads)
    rule = HostRule(settings.host, settings.allowed_hosts)
    if renderer is None:
        renderer = default_renderer()
    # Header problems are returned to the client in `input.header_warnings`; a warning in the log
    # would print DICOM identifiers (such as an invalid SOPInstanceUID).
    keep_identifiers_out_of_logs()
    service = _Service(predictor, renderer, settings)
    app = FastAPI(
        title="ptxseg",
        summary="Pneumothorax segmentation of chest X-rays. Research use only, not a diagnosis.",
        version=_version(),
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(LocalOnly, rule=rule)
    app.state.service = service
    _add_routes(app, service)
    return app


def _add_routes(app: FastAPI, service: _Service) -> None:
    """The page at /, /healthz, the model card at /v1/model, and the two upload routes."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/healthz", summary="Liveness: the model is loaded and the service answers")
    async def healthz() -> dict[str, Any]:
        limiter = service._limiter()
        return {
            "status": "ok",
            "model_loaded": True,
            "workers": service.settings.workers,
            "busy": int(limiter.borrowed_tokens),
        }

    @app.get("/v1/model", summary="Model card: encoder, input size, metrics, intended use")
    async def model_card() -> dict[str, Any]:
        card = dict(service.settings.model_card)
        card.setdefault("intended_use", INTENDED_USE)
        card["max_upload_mb"] = service.settings.max_upload_mb
        card["max_megapixels"] = service.settings.max_megapixels
        card["uploads_kept"] = service.settings.keep_uploads is not None
        return card

    @app.post(
        "/v1/predict",
        summary="Segment one chest X-ray (DICOM, PNG or JPEG)",
        description="Send the file as multipart form field `file`, or as the raw request body. "
        "`include` is a comma-separated subset of image, overlay, mask, seg (default "
        f"{DEFAULT_INCLUDE}); `seg` adds a DICOM SEG (base64) for DICOM input; `none` returns "
        "the findings and the RLE only. Errors: 413 too large (bytes, or pixels claimed by the "
        "header), 415 not DICOM/PNG/JPEG, 422 unreadable.",
        openapi_extra=_UPLOAD_BODY,
    )
    async def predict(
        request: Request, include: str = Query(DEFAULT_INCLUDE, description="parts to return")
    ) -> JSONResponse:
        return await handle_upload(service, request, include, as_seg=False)

    @app.post(
        "/v1/seg",
        summary="The DICOM SEG of the predicted mask for a DICOM upload",
        response_class=Response,
        responses={200: {"content": {"application/dicom": {}}}},
        openapi_extra=_UPLOAD_BODY,
    )
    async def seg(request: Request) -> Response:
        return await handle_upload(service, request, "none", as_seg=True)


async def handle_upload(
    service: _Service, request: Request, include: str, as_seg: bool
) -> Response:
    """One upload to /v1/predict or /v1/seg: its answer, or the error that names the problem
    (413, 415, 422, 501, 500 with a request id and nothing of the upload in the message)."""
    request_id = uuid.uuid4().hex[:12]
    start = time.perf_counter()
    upload: Upload | None = None
    try:
        parts = parse_include(include)
        upload = await read_upload(request, service.settings.max_upload_bytes)
        if as_seg and upload.kind != "dicom":
            raise UploadError(
                415,
                "seg_needs_dicom",
                f"A DICOM SEG refers to its source DICOM image; this upload is a "
                f"{upload.kind.upper()}. Upload the original DICOM file to get a SEG.",
            )
        image, metadata, prediction = await service.run(service.infer, upload, request_id)
        response = await _answer(
            service, upload, (image, metadata, prediction), parts, as_seg, request_id
        )
        response.headers["X-Request-ID"] = request_id
        _log(request_id, upload, 200, start, bool(prediction.findings.get("pneumothorax")))
        return response
    except UploadError as err:
        _log(request_id, upload, err.status, start, None, err.code)
        return _error(err.status, err.code, err.message, request_id)
    except SegBuildError as err:
        _log(request_id, upload, 422, start, None, "seg_failed")
        return _error(422, "seg_failed", str(err), request_id)
    except SegUnavailableError as err:
        _log(request_id, upload, 501, start, None, "seg_unavailable")
        return _error(501, "seg_unavailable", str(err), request_id)
    except Exception as err:
        # The traceback's frames, not its message: messages can quote header values.
        frames = "".join(traceback.format_tb(err.__traceback__))
        log.error("request %s failed: %s\n%s", request_id, type(err).__name__, frames)
        _log(request_id, upload, 500, start, None, "internal_error")
        return _error(
            500,
            "internal_error",
            f"The analysis failed on the server (request {request_id}). The administrator can "
            "find the cause in the server log under this request id.",
            request_id,
        )


async def _answer(
    service: _Service, upload: Upload, predicted, parts, as_seg, request_id
) -> Response:
    """The 200 answer: the SEG file, or the JSON of findings and the parts asked for."""
    image, metadata, prediction = predicted
    if as_seg:
        data = await service.run(service.renderer.seg_dicom, upload.data, prediction)
        response: Response = Response(
            data,
            media_type="application/dicom",
            headers={"Content-Disposition": f'attachment; filename="ptxseg-seg-{request_id}.dcm"'},
        )
    else:
        body = await service.run(
            service.respond, upload, image, metadata, prediction, parts, request_id
        )
        response = JSONResponse(body)
    return response


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _log(
    request_id: str,
    upload: Upload | None,
    status: int,
    start: float,
    positive: bool | None,
    code: str = "ok",
) -> None:
    """One line per request: id, content hash and size, outcome. No names, no identifiers."""
    ms = (time.perf_counter() - start) * 1000
    if upload is None:
        log.info("request %s status=%d code=%s ms=%.0f", request_id, status, code, ms)
        return
    log.info(
        "request %s status=%d code=%s kind=%s bytes=%d sha256=%s pneumothorax=%s ms=%.0f",
        request_id,
        status,
        code,
        upload.kind,
        len(upload.data),
        upload.sha256[:12],
        positive,
        ms,
    )


def startup_warnings(host: str, allowed_hosts: Sequence[str], keep_uploads: Path | None) -> list:
    """What `ptxseg serve` checks before the model loads (a wrong option costs a second, not a
    model load): ValueError for a bad --allowed-host or --keep-uploads; the warnings to show
    (a kept-uploads folder others can list; listening beyond this machine)."""
    from ptxseg.serving.kept import KeepFolderError, others_can_read
    from ptxseg.serving.request_guard import is_loopback

    try:
        HostRule(host, allowed_hosts)
    except ValueError as err:
        raise ValueError(f"--allowed-host {err}") from None
    found = []
    if keep_uploads is not None:
        try:
            open_keep_folder(keep_uploads)
        except KeepFolderError as err:
            raise ValueError(str(err)) from None
        if others_can_read(keep_uploads):
            found.append(
                f"warning: --keep-uploads {keep_uploads} can be listed by other users; the "
                "kept files are readable by this user only, but their folder should be too "
                f"(chmod 700 {keep_uploads})"
            )
    if not is_loopback(host):
        found.append(
            f"Listening on {host}: the service has no authentication and is for research use "
            "only. Expose it only on a trusted network."
        )
    return found


def load_app(model: Any, settings: ServeSettings | None = None, **options: Any) -> FastAPI:
    """Load the model once (and run it once, so the first request is not slower), then the app.

    `model` is a `PredictorSpec` (what `ptxseg serve` builds), or any model the Predictor takes
    (a path, an ensemble file, or a list of paths whose probabilities are averaged) with the
    spec's fields as `options` (runtime and precision default to torch fp32 there).
    `runtime`/`precision` may be `auto` (`ptxseg.inference.choice`); int8 only as a file made by
    `ptxseg export --int8`, since the service has no images to check it on. The model card is
    read from the model loaded for the Predictor (`LoadedModel`), not from its path again."""
    import time

    from ptxseg.inference.choice import ChoiceHooks, build_predictor
    from ptxseg.inference.spec import PredictorSpec
    from ptxseg.model.acceleration import DeviceWarmUp
    from ptxseg.serving.card import build_model_card

    if isinstance(model, PredictorSpec):
        spec = model.replace(**options)
    else:
        spec = PredictorSpec(model, **{"runtime": "torch", "precision": "fp32", **options})
    settings = settings or ServeSettings()
    # the CUDA context is made while the model's libraries import and the model loads
    torch_runtime = spec.runtime in ("torch", "auto")
    warm = DeviceWarmUp(spec.device if torch_runtime else "cpu", time.perf_counter())
    predictor = build_predictor(spec, ChoiceHooks(int8_on_the_fly=False))
    warm.wait()
    size = int(getattr(predictor, "input_size", 256))
    predictor.predict(np.zeros((size, size), np.float32), {})
    settings.model_card = build_model_card(predictor.loaded, predictor=predictor)
    return create_app(predictor, settings)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ptxseg")
    except Exception:
        return "0"
