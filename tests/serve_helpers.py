"""Helpers of the service tests: a fake predictor and renderer, and a real uvicorn server on a
free local port in a thread, for real-HTTP tests."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn

from ptxseg.inference.findings import compute_findings
from ptxseg.serving.render import DefaultRenderer

OP = {"top": 0.5, "bottom": 0.5, "min_area": 0}
LOCAL = "http://127.0.0.1:8000"  # what a browser on this machine sends as Host
BOX = (slice(10, 20), slice(5, 15))  # rows, cols: left of the image = the patient's right
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-778899"}
FILE_NAME = "Doe_Jane_PID-778899.dcm"


class FakePrediction:
    def __init__(self, probability, mask, findings):
        self.probability, self.mask, self.findings = probability, mask, findings


class FakePredictor:
    """Finds a 10x10 square at BOX in any image; counts calls and concurrent calls."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False):
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.gate = gate
        self.fail = fail
        self.lock = threading.Lock()

    def predict(self, image, metadata):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            if self.fail:
                raise RuntimeError("secret internal detail")
            mask = np.zeros(image.shape, bool)
            mask[BOX] = True
            prob = mask.astype(np.float32) * 0.9
            return FakePrediction(prob, mask, compute_findings(mask, 0.9, metadata, OP, "fake"))
        finally:
            with self.lock:
                self.active -= 1


class FakeSegRenderer(DefaultRenderer):
    def seg_dicom(self, dicom: bytes, prediction) -> bytes:
        return b"SEG:" + str(int(prediction.mask.sum())).encode()


def local_client(app):
    """A TestClient that sends `Host: 127.0.0.1:8000`, as a page opened on this machine does (the
    service refuses TestClient's default `testserver`)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=LOCAL)


class LocalServer:
    """`with LocalServer(app) as url:` serves `app` on 127.0.0.1 until the block ends."""

    def __init__(self, app, timeout: float = 20.0):
        self.app = app
        self.timeout = timeout

    def __enter__(self) -> str:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
        self.sock.close()


@pytest.fixture(autouse=True)
def restore_library_loggers():
    """`create_app` silences pydicom's and highdicom's loggers process-wide; undo it per test."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
