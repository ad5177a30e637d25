"""`ptxseg view`: the OHIF viewer against a DICOMweb PACS, both under one origin on 127.0.0.1.

OHIF (npm's `@ohif/app`, a prebuilt static app) is not shipped with ptxseg: `make viewer` fetches
the version pinned by `viewer/package-lock.json` (sha512) into `viewer/node_modules`. This module
serves that build, an `app-config.js` that points OHIF at `/dicom-web` on the same origin, and
forwards `/dicom-web/...` to the PACS's DICOMweb root. The browser never sees the PACS or its
credentials: those come from the environment only, by the rule of `ptxseg dicomweb`
(`PTXSEG_DICOMWEB_TOKEN`, or `PTXSEG_DICOMWEB_USER` and `PTXSEG_DICOMWEB_PASSWORD`), and the
forwarder adds them. Only GET and HEAD are forwarded: the viewer reads, it never writes.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"  # the version viewer/package-lock.json pins (a test holds them equal)
OHIF_ENV = "PTXSEG_OHIF_DIST"
HOST = "127.0.0.1"
DICOMWEB_PREFIX = "/dicom-web"
FORWARDED_REQUEST_HEADERS = ("Accept", "Range", "If-None-Match", "If-Modified-Since")
FORWARDED_ANSWER_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
)
CHUNK = 1 << 16
INSTALL_HINT = (
    "run `make viewer` in a ptxseg checkout (npm ci of viewer/package-lock.json: "
    f"{OHIF_PACKAGE} {OHIF_VERSION}, pinned by its sha512), then rerun from the checkout, or "
    f"point {OHIF_ENV} (or --ohif) at the build's dist/ folder"
)


class ViewerMissingError(FileNotFoundError):
    """The OHIF build is not where ptxseg looks for it; the message says how to fetch it."""


def candidate_dists(
    cwd: Path | None = None, environ: Mapping[str, str] | None = None
) -> list[Path]:
    """Where an OHIF build is looked for, in order: $PTXSEG_OHIF_DIST, ./viewer, the checkout's."""
    env = os.environ if environ is None else environ
    found = [Path(env[OHIF_ENV])] if env.get(OHIF_ENV) else []
    inside = Path("viewer") / "node_modules" / "@ohif" / "app" / "dist"
    found.append((cwd or Path.cwd()) / inside)
    checkout = Path(__file__).resolve().parents[3]  # src/ptxseg/integration -> the checkout
    found.append(checkout / inside)
    return list(dict.fromkeys(found))


def find_ohif(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The OHIF dist/ folder (it holds index.html), or `ViewerMissingError` with the hint."""
    places = [explicit] if explicit is not None else candidate_dists(environ=environ)
    for place in places:
        if (place / "index.html").is_file():
            return place
    looked = ", ".join(str(p) for p in places)
    raise ViewerMissingError(
        f"the OHIF viewer is not installed (looked in {looked}): {INSTALL_HINT}"
    )


def ohif_version(dist: Path) -> str | None:
    """The version in the package.json beside an npm-installed dist/ (None when not there)."""
    try:
        return json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def app_config(title: str = "ptxseg") -> str:
    """OHIF's `app-config.js`: one DICOMweb data source at /dicom-web on the page's own origin."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": title,
            "name": "ptxseg",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    root = f"window.location.origin + {json.dumps(DICOMWEB_PREFIX)}"
    return (
        "// Written by ptxseg view: OHIF reads DICOMweb from this page's own origin.\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function (c) {\n"
        f"  var root = {root};\n"
        "  c.wadoUriRoot = root; c.qidoRoot = root; c.wadoRoot = root;\n"
        "})(window.config.dataSources[0].configuration);\n"
    )


def study_url(base: str, studies: Sequence[str]) -> str:
    """The page that opens these studies in OHIF's basic viewer (the study list without any)."""
    if not studies:
        return f"{base}/"
    return f"{base}/viewer?StudyInstanceUIDs={quote(','.join(studies), safe=',.')}"


class ViewerServer(ThreadingHTTPServer):
    """OHIF's files, its configuration and a DICOMweb forwarder, on 127.0.0.1."""

    daemon_threads = True

    def __init__(self, dist: Path, upstream: str, session, port: int = 0, title: str = "ptxseg"):
        self.dist = dist.resolve()
        self.upstream = upstream.rstrip("/")
        self.session = session
        self.config_js = app_config(title).encode()
        super().__init__((HOST, port), ViewerHandler)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="ptxseg-view", daemon=True)
        thread.start()
        return thread


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        """Quiet: request lines name studies (identifiers) and would flood the terminal."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.route(head=False)

    def do_HEAD(self):  # noqa: N802
        self.route(head=True)

    def do_POST(self):  # noqa: N802
        self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "ptxseg view only reads from the PACS")

    do_PUT = do_DELETE = do_POST  # noqa: N815

    def route(self, head: bool) -> None:
        path = urlsplit(self.path).path
        if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
            self.forward(head)
        elif path == "/app-config.js":
            self.send_bytes(self.server.config_js, "application/javascript", head)
        else:
            self.send_static(path, head)

    def refuse(self, status: HTTPStatus, text: str) -> None:
        body = f"{status.value} {status.phrase}: {text}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_bytes(self, data: bytes, media_type: str, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def send_static(self, path: str, head: bool) -> None:
        """A file of the build; any other path is the single-page app's index.html."""
        dist = self.server.dist
        target = (dist / path.lstrip("/")).resolve()
        if not target.is_relative_to(dist):
            return self.refuse(HTTPStatus.NOT_FOUND, "no such file")
        if not target.is_file():
            if Path(path).suffix:  # a missing asset, not a route of the app
                return self.refuse(HTTPStatus.NOT_FOUND, "no such file")
            target = dist / "index.html"
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            media_type = "application/wasm"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.end_headers()
        if not head:
            with open(target, "rb") as handle:
                shutil.copyfileobj(handle, self.wfile, CHUNK)

    def forward(self, head: bool) -> None:
        """The same request to the PACS (credentials added), its answer streamed back."""
        import requests

        rest = self.path[len(DICOMWEB_PREFIX) :]
        headers = {k: self.headers[k] for k in FORWARDED_REQUEST_HEADERS if self.headers.get(k)}
        headers["Accept-Encoding"] = "identity"  # pass bytes through untouched
        try:
            answer = self.server.session.request(
                "HEAD" if head else "GET",
                self.server.upstream + rest,
                headers=headers,
                stream=True,
                timeout=120,
            )
        except requests.RequestException as err:
            why = f"the PACS did not answer ({type(err).__name__})"
            return self.refuse(HTTPStatus.BAD_GATEWAY, why)
        with answer:
            self.send_response(answer.status_code)
            for name in FORWARDED_ANSWER_HEADERS:
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            chunked = "Content-Length" not in answer.headers and not head
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head:
                return
            for block in answer.raw.stream(CHUNK, decode_content=False):
                if chunked:
                    self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                else:
                    self.wfile.write(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")


def make_server(
    dist: Path,
    upstream: str,
    port: int = 0,
    environ: Mapping[str, str] | None = None,
) -> ViewerServer:
    """A viewer server for `upstream` (a DICOMweb root) with the environment's credentials."""
    import requests

    from ptxseg.integration.dicomweb import DicomwebError, auth_session

    if not upstream.startswith(("http://", "https://")):
        raise DicomwebError(
            f"--url {upstream!r}: expected http://... or https://... (the DICOMweb root)"
        )
    session = auth_session(environ) or requests.Session()
    return ViewerServer(dist, upstream, session, port)


@dataclass(frozen=True)
class PredictedImage:
    """One image of a `ptxseg predict --sr` run: its source file, its SEG (positives), its SR."""

    source: Path
    seg: Path | None
    sr: Path


def run_results(folder: Path) -> list[PredictedImage]:
    """The images of a predict run folder that have an SR (from its findings/*.json)."""
    found = []
    for path in sorted((folder / "findings").glob("*.json")):
        findings = json.loads(path.read_text())
        if findings.get("sr_file") and findings.get("input_file"):
            seg = findings.get("seg_file")
            found.append(
                PredictedImage(Path(findings["input_file"]), Path(seg) if seg else None,
                          Path(findings["sr_file"]))
            )  # fmt: skip
    if not found:
        raise ValueError(
            f"{folder}: no image with an SR in findings/*.json; expected the output folder of "
            "`ptxseg predict INPUTS -c MODEL -o FOLDER --seg --sr` on DICOM inputs"
        )
    return found


def studies_of(results: Sequence[PredictedImage]) -> list[str]:
    """The Study Instance UIDs of the results' SRs, in order, once each."""
    import pydicom

    uids = [str(pydicom.dcmread(r.sr, stop_before_pixels=True).StudyInstanceUID) for r in results]
    return list(dict.fromkeys(uids))


def store_results(client, results: Sequence[PredictedImage], report=lambda line: None) -> int:
    """STOW-RS each result with its source image (repaired as the SEG and SR reference it, the
    copy `repair-uids` makes); the number of images stored. A refusal raises `StoreRefused`."""
    import pydicom

    from ptxseg.data.uids import repaired_copy
    from ptxseg.integration.analysis import image_ref
    from ptxseg.integration.dicomweb import store

    for result in results:
        source, _notes = repaired_copy(result.source)
        derived = [pydicom.dcmread(p) for p in (result.seg, result.sr) if p is not None]
        ref = image_ref(str(source.SOPInstanceUID))
        kinds = store(client, [source, *derived], ref)
        report(f"{ref}: stored {' + '.join(kinds)}")
    return len(results)


def studies_to_open(
    results: Path | None, studies: Sequence[str], url: str, store: bool, report=print
) -> list[str]:
    """The studies `ptxseg view` opens: those given, then those of a predict RESULTS folder
    (stored first in the PACS at `url` with their results when `store`)."""
    studies = list(studies)
    if results is None:
        return studies
    found = run_results(results)
    if store:
        from ptxseg.integration.dicomweb import make_client

        stored = store_results(make_client(url), found, report=report)
        report(f"stored {stored} images with their results in {url}")
    return studies + [uid for uid in studies_of(found) if uid not in studies]
