"""The load test: local targets only, client lists, counts, correctness checks, written tables."""

from __future__ import annotations

import cv2
import pytest
from dicom_files import chest_like
from serve_helpers import (  # noqa: F401
    FakePrediction,
    FakePredictor,
    FakeSegRenderer,
    LocalServer,
    restore_library_loggers,
)

from ptxseg.benchmarks.load import (
    LoadTestError,
    check_local_url,
    parse_clients,
    run_load_test,
    write_load_report,
)
from ptxseg.cli import main
from ptxseg.serving.webapp import ServeSettings, create_app


@pytest.mark.parametrize(
    "url", ["http://example.com:8000", "http://10.1.2.3:8000", "ftp://127.0.0.1/", "nonsense"]
)
def test_only_local_servers_can_be_targeted(url):
    with pytest.raises(LoadTestError, match="this machine|not a URL"):
        check_local_url(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:1234/", "http://[::1]:80"]
)
def test_local_urls_are_accepted(url):
    assert check_local_url(url).host in ("127.0.0.1", "localhost", "::1")


def test_parse_clients():
    assert parse_clients("4") == [4] and parse_clients("1, 2,4") == [1, 2, 4]
    for bad in ("0", "two", "", "1,-2"):
        with pytest.raises(LoadTestError, match="--clients"):
            parse_clients(bad)


@pytest.fixture()
def image_file(tmp_path):
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), chest_like(64))
    return path


class DriftingPredictor(FakePredictor):
    """Answers differently from the third call on: the load test must notice."""

    def predict(self, image, metadata):
        prediction = super().predict(image, metadata)
        if self.calls > 2:
            prediction.findings["probability"] = 0.5
        return prediction


def serve(predictor, workers=2):
    return LocalServer(
        create_app(predictor, ServeSettings(workers=workers), renderer=FakeSegRenderer())
    )


def test_load_test_counts_requests_and_writes_tables(image_file, tmp_path):
    predictor = FakePredictor()
    with serve(predictor) as url:
        report = run_load_test(url, image_file, "1,3", 30.0, max_requests=6, show_progress=False)
    assert [r.clients for r in report.results] == [1, 3]
    for result in report.results:
        row = result.row()
        assert row["requests"] == row["ok"] == 6 and row["errors"] == 0
        assert row["mismatches"] == 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
    assert predictor.calls == 1 + 12  # the reference request, then 6 per client count
    assert report.reference["area_px"] == 100
    table = write_load_report(report, tmp_path / "out")
    assert "| clients | requests |" in table
    csv_lines = (tmp_path / "out" / "load-test.csv").read_text().splitlines()
    assert csv_lines[0].startswith("clients,requests,ok") and len(csv_lines) == 3
    written = (tmp_path / "out" / "load-test.md").read_text()
    assert written.startswith("# Load test of ptxseg serve") and "instruction sets:" in written
    assert table.split("\n\n", 1)[1] in written and "- baseline: 1 client(s)" in written


def test_load_test_reports_answers_that_differ(image_file):
    with serve(DriftingPredictor()) as url:
        report = run_load_test(url, image_file, 1, 30.0, max_requests=4, show_progress=False)
    assert report.mismatches == 3  # calls 3, 4 and 5 differ from the reference (call 1)


def test_load_test_stops_at_the_duration(image_file):
    with serve(FakePredictor()) as url:
        report = run_load_test(url, image_file, 2, 0.3, show_progress=False)
    result = report.results[0]
    assert result.ok > 0 and result.seconds < 5


def test_load_test_errors_are_clear(image_file, tmp_path):
    with pytest.raises(LoadTestError, match="file not found"):
        run_load_test("http://127.0.0.1:9", tmp_path / "missing.dcm", show_progress=False)
    with pytest.raises(LoadTestError, match="no ptxseg server answers"):
        run_load_test("http://127.0.0.1:9", image_file, duration=0.1, show_progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_text("hello " * 50)
    with serve(FakePredictor()) as url, pytest.raises(LoadTestError, match="HTTP 415"):
        run_load_test(url, bad, duration=0.1, show_progress=False)


def test_load_test_command(image_file, tmp_path, capsys):
    with serve(FakePredictor()) as url, pytest.raises(SystemExit) as exit_info:
        main(
            [
                "load-test",
                "--url",
                url,
                "--file",
                str(image_file),
                "--clients",
                "2",
                "--duration",
                "5",
                "--max-requests",
                "4",
                "--out",
                str(tmp_path / "lt"),
            ]
        )
    assert exit_info.value.code in (0, None)
    assert "requests_per_s" in capsys.readouterr().out
    assert (tmp_path / "lt" / "load-test.csv").is_file()
    with pytest.raises(SystemExit) as refused:
        main(["load-test", "--url", "http://example.org", "--file", str(image_file)])
    assert refused.value.code == 2


def test_serve_command_refuses_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--checkpoint", str(tmp_path / "none.ckpt")])
    assert exit_info.value.code == 2
    assert "none.ckpt" in capsys.readouterr().err


def test_serve_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for option in ("--checkpoint", "--host", "--workers", "--max-upload-mb", "--keep-uploads"):
        assert option in out


@pytest.mark.slow
def test_serve_and_load_test_commands_with_a_trained_checkpoint(tmp_path, capsys):
    """synth -> prepare -> train (2 tiny epochs) -> `ptxseg serve` process -> `ptxseg load-test`."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    syn, work, run = tmp_path / "syn", tmp_path / "work", tmp_path / "run"
    prepare = ["prepare", "--images", str(syn), "--annotations", str(syn / "train-rle.csv")]
    for argv in (
        ["synth", str(syn), "--n-images", "24", "--size", "128", "--positive-fraction", "0.5"],
        prepare + ["--out", str(work), "--size", "64", "--workers", "1"],
        ["train", "--data", str(work), "--out", str(run), "--encoder", "resnet18"]
        + ["--encoder-weights", "none", "--size", "64", "--epochs", "2", "--batch-size", "8"]
        + ["--workers", "0", "--no-progress"],
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code in (0, None), argv
    checkpoint = run / "checkpoints" / "best.ckpt"
    dicom = next(syn.rglob("*.dcm"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "ptxseg", "serve", "--checkpoint", str(checkpoint)]
        + ["--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ptxseg serve did not come up"
            time.sleep(0.5)
        assert httpx.get(url + "/v1/model").json()["encoder"] == "resnet18"
        argv = ["load-test", "--url", url, "--file", str(dicom), "--clients", "1,2"]
        argv += ["--duration", "3", "--max-requests", "10", "--out", str(tmp_path / "lt")]
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code in (0, None)
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0].decode()
    rows = (tmp_path / "lt" / "load-test.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:5] for r in rows] == [
        ["1", "10", "10", "0", "0"],
        ["2", "10", "10", "0", "0"],
    ]
    assert "status=200" in log and dicom.stem not in log
