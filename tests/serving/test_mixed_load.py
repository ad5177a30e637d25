"""A mixed load against a real server: concurrent clients send good and hostile uploads.

Good uploads (DICOMs with their own invalid UIDs, PNG, JPEG, a malformed PixelSpacing) must get
exactly their reference answer; hostile ones (decompression bombs, truncated files, wrong types,
oversized bodies, a client that hangs up mid-upload) a 4xx whose message says what is wrong in
words. The server's memory must stay bounded and no request may see another's data. The default
suite runs a few seconds of it; `-m slow` a minute with more clients.
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import pytest
from dicom_files import chest_like, replace_bytes, tiny_bomb, write_dicom
from predict_helpers import make_checkpoint
from serve_helpers import LocalServer, restore_library_loggers  # noqa: F401

from ptxseg.inference.predictor import Predictor
from ptxseg.serving.webapp import ServeSettings, create_app

INTERNALS = re.compile(
    r"not supported between|has no attribute|NoneType|Traceback|<class |unhashable|struct\."
)
MAX_UPLOAD_MB = 1.0


@dataclass
class Case:
    name: str
    data: bytes
    path: str = "/v1/predict?include=mask"
    expect: int = 200  # 200: equal to the reference; otherwise the exact 4xx status
    own_uid: str | None = None


@dataclass
class Tally:
    sent: int = 0
    good_checked: int = 0
    bad_checked: int = 0
    disconnects: int = 0
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _cases(folder: Path) -> list[Case]:
    cases = []
    for i in range(4):
        uid = f"ID_{i:09x}"
        path = write_dicom(
            folder / f"{uid}.dcm", chest_like(64, i), jpeg=i % 2 == 0, SOPInstanceUID=uid
        )
        cases.append(Case(f"dicom {uid}", path.read_bytes(), own_uid=uid))
    spacing = write_dicom(folder / "spacing.dcm", chest_like(64, 9), jpeg=True)
    replace_bytes(spacing, b"0.168\\0.168", b"abc        ")
    cases.append(Case("malformed PixelSpacing", spacing.read_bytes()))
    cases.append(Case("png", cv2.imencode(".png", chest_like(80, 5))[1].tobytes()))
    cases.append(Case("jpeg", cv2.imencode(".jpg", chest_like(72, 6))[1].tobytes()))
    good_dicom = cases[0].data
    nopix = write_dicom(folder / "nopix.dcm", chest_like(64), pixel_data=False).read_bytes()
    big = write_dicom(folder / "big.dcm", chest_like(64), Rows=30000, Columns=30000).read_bytes()
    cases += [
        Case("jpeg bomb", tiny_bomb("jpeg"), expect=413),
        Case("png bomb", tiny_bomb("png"), expect=413),
        Case("dicom header bomb", big, expect=413),
        Case("oversized body", b"\xff\xd8\xff" + b"\x00" * int(1.2 * 2**20), expect=413),
        Case("truncated dicom", good_dicom[: len(good_dicom) // 2], expect=422),
        Case("truncated png", cases[5].data[:60], expect=422),
        Case("dicom without pixels", nopix, expect=422),
        Case("text", b"hello, not an image at all" * 20, expect=415),
        Case("empty", b"", expect=422),
        Case("seg of a png", cases[5].data, path="/v1/seg", expect=415),
        Case("bad include", good_dicom, path="/v1/predict?include=everything", expect=422),
    ]
    return cases


def _comparable(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "request_id"}


def _hang_up(url: str) -> None:
    """Announce 100 kB, send 1 kB, close: a client that disconnects mid-upload."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/dicom\r\n"
            "Content-Length: 100000\r\n\r\n"
        )
        sock.sendall(head.encode() + b"\x00" * 1000)


def _client(url: str, cases: list[Case], reference: dict, stop: float, tally: Tally, seed: int):
    order = itertools.cycle(cases[seed % len(cases) :] + cases[: seed % len(cases)])
    with httpx.Client(base_url=url, timeout=60) as client:
        for n, case in enumerate(order):
            if time.monotonic() > stop:
                return
            if n % 17 == seed % 17:
                _hang_up(url)
                with tally.lock:
                    tally.disconnects += 1
            response = client.post(case.path, files={"file": ("upload.bin", case.data)})
            problem = _judge(case, response, reference)
            with tally.lock:
                tally.sent += 1
                if problem:
                    tally.wrong.append(f"{case.name}: {problem}")
                elif case.expect == 200:
                    tally.good_checked += 1
                else:
                    tally.bad_checked += 1


def _judge(case: Case, response: httpx.Response, reference: dict) -> str:
    if response.status_code != case.expect:
        return f"status {response.status_code}, expected {case.expect}: {response.text[:200]}"
    body = response.json()
    if case.expect != 200:
        detail = body.get("detail", "")
        if not isinstance(detail, str) or INTERNALS.search(detail) or not body.get("request_id"):
            return f"unclear refusal: {body}"
        return ""
    if _comparable(body) != reference[case.name]:
        return "answer differs from the reference"
    warnings_text = " ".join(body["input"]["header_warnings"])
    others = [u for u in re.findall(r"ID_[0-9a-f]{9}", warnings_text) if u != case.own_uid]
    return f"another upload's warnings: {others}" if others else ""


class _Memory:
    """Peak resident memory of this process while the load runs (the server is in it)."""

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_mixed_load(tmp_path: Path, seconds: float, clients: int) -> tuple[Tally, _Memory]:
    cases = _cases(tmp_path)
    predictor = Predictor(make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64), batch_size=1)
    settings = ServeSettings(workers=2, max_upload_mb=MAX_UPLOAD_MB)
    app = create_app(predictor, settings)
    tally = Tally()
    with LocalServer(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:  # references, one at a time
            reference = {}
            for case in cases:
                if case.expect == 200:
                    answer = client.post(case.path, files={"file": ("upload.bin", case.data)})
                    assert answer.status_code == 200, (case.name, answer.text)
                    reference[case.name] = _comparable(answer.json())
        stop = time.monotonic() + seconds
        with _Memory() as memory, ThreadPoolExecutor(clients) as pool:
            futures = [
                pool.submit(_client, url, cases, reference, stop, tally, seed)
                for seed in range(clients)
            ]
            for future in futures:
                future.result()
        assert httpx.get(f"{url}/healthz").json()["busy"] == 0
    return tally, memory


def _report(tally: Tally, memory: _Memory, caplog) -> None:
    print(
        f"\nmixed load: {tally.sent} requests, {tally.good_checked} good answers equal to their "
        f"reference, {tally.bad_checked} refusals checked, {tally.disconnects} hang-ups, "
        f"{len(tally.wrong)} wrong; RSS {memory.start:.0f} MB -> peak {memory.peak:.0f} MB"
    )
    assert tally.wrong == [], tally.wrong[:5]
    assert tally.good_checked > 0 and tally.bad_checked > 0
    assert memory.peak - memory.start < 400, "a bomb or a leak grew the server's memory"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [] and "status=500" not in caplog.text
    assert "code=client_disconnected" in caplog.text or tally.disconnects == 0


def test_mixed_load_for_a_few_seconds(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ptxseg.serving.webapp"):
        tally, memory = run_mixed_load(tmp_path, seconds=4, clients=6)
    _report(tally, memory, caplog)


@pytest.mark.slow
def test_mixed_load_for_a_minute(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ptxseg.serving.webapp"):
        tally, memory = run_mixed_load(tmp_path, seconds=60, clients=16)
    _report(tally, memory, caplog)
