"""Stage `serve`: seconds from `ptxseg serve` to its first answer, and the first request's
latency."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptxseg.benchmarks.gpu.bench import StageContext, child_env, gpu_stage
from ptxseg.benchmarks.gpu.predict_stage import model_for_predict

NOTES = (
    "ready_s: from starting the command to the first answer of /healthz (the model is "
    "loaded and has run once by then). Requests: one DICOM, findings and RLE only."
)


@gpu_stage("serve")
def stage_serve(ctx: StageContext) -> None:
    bench, s = ctx.bench, ctx.bench.s
    title = f"ptxseg serve start-up: U-Net-{s.encoder} at {s.size} px"
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        bench.write("serve", "ptxseg serve start-up", [{"error": f"not installed: {err}"}])
        return
    model = model_for_predict(bench, ctx.model)
    port = 18000 + os.getpid() % 1000
    command = [sys.executable, "-m", "ptxseg", "serve", "-c", str(model), "--port", str(port)]
    command += ["--device", s.device]
    log_path = bench.logs / "serve.log"
    sample = next(iter(sorted(ctx.data.predict_inputs.glob("*.dcm"))))
    with open(log_path, "w") as log:
        start = time.perf_counter()
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env())
        try:
            row = _serve_row(f"http://127.0.0.1:{port}", server, start, sample)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    if row["ready_s"] is None:
        row["error"] = f"no answer within 120 s (log {log_path})"
    bench.write("serve", title, [{"device": s.device, **row}], NOTES)


def _serve_row(url: str, server: subprocess.Popen, start: float, sample: Path) -> dict[str, Any]:
    """ready_s from `start`, then two requests with `sample` and how long each took."""
    ready = _wait_for(url + "/healthz", timeout=120, alive=lambda: server.poll() is None)
    row: dict[str, Any] = {"ready_s": round(time.perf_counter() - start, 2) if ready else None}
    if ready:
        t0 = time.perf_counter()
        status = _post_file(url + "/v1/predict?include=none", sample)
        row["first_request_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        _post_file(url + "/v1/predict?include=none", sample)
        row["second_request_s"] = round(time.perf_counter() - t0, 3)
        row["status"] = status
    return row


def _wait_for(url: str, timeout: float, alive: Callable[[], bool]) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _post_file(url: str, path: Path) -> int:
    boundary = "ptxsegbenchmarkboundary"
    body = (
        (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/dicom\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        answer.read()
        return answer.status
