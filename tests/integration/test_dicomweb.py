"""DICOMweb logic on a fake server: what is pending, idempotent reruns, refusals, paging, auth."""

import json

import pytest
import requests
from pacs_helpers import NEGATIVE_OP, FakeDicomweb, analyzer, cr_blob, read

from ptxseg.integration import dicomweb as dw
from ptxseg.integration.analysis import image_ref


def _pacs(tmp_path, n=3, **fake):
    images = [read(cr_blob(tmp_path, f"cr{i}.dcm")) for i in range(n)]
    other = read(cr_blob(tmp_path, "ct.dcm", Modality="CT"))
    return FakeDicomweb([*images, other], **fake), images


def test_a_pass_stores_seg_and_sr_and_a_rerun_stores_nothing(tmp_path):
    pacs, images = _pacs(tmp_path)
    a = analyzer()
    first = dw.run_pass(pacs, a, report=lambda line: None)
    assert (first.studies, first.radiographs, first.analysed, first.errors) == (3, 3, 3, [])
    assert first.stored == {"SEG": 3, "SR": 3}
    reports = [ds for ds in pacs.stored if ds.Modality == "SR"]
    assert {r.SOPInstanceUID for r in reports} == {a.report_uid(i.SOPInstanceUID) for i in images}
    stored = len(pacs.stored)
    pacs.calls.clear()
    second = dw.run_pass(pacs, a, report=lambda line: None)
    assert (second.analysed, second.done_before, second.stored) == (0, 3, {"SEG": 0, "SR": 0})
    assert len(pacs.stored) == stored and "wado" not in pacs.calls and "stow" not in pacs.calls


def test_another_model_is_another_result(tmp_path):
    pacs, _ = _pacs(tmp_path, n=2)
    dw.run_pass(pacs, analyzer(key="model-a"), report=lambda line: None)
    other = dw.run_pass(pacs, analyzer(NEGATIVE_OP, key="model-b"), report=lambda line: None)
    assert other.analysed == 2 and other.stored == {"SEG": 0, "SR": 2}


def test_only_the_given_study_is_processed(tmp_path):
    pacs, images = _pacs(tmp_path)
    summary = dw.run_pass(pacs, analyzer(), [images[1].StudyInstanceUID], report=lambda x: None)
    assert summary.analysed == 1 and "qido-studies" not in pacs.calls


def test_refused_objects_are_named_and_the_image_is_tried_again(tmp_path):
    pacs, images = _pacs(tmp_path, n=1, refuse={"SR"})
    lines = []
    summary = dw.run_pass(pacs, analyzer(), report=lines.append)
    assert summary.stored["SR"] == 0 and len(summary.errors) == 1
    error = summary.errors[0]
    assert image_ref(images[0].SOPInstanceUID) in error
    assert "did not store SR (failure reason 0xc000)" in error and "rerun" in error
    assert "Doe" not in error and error in lines
    pacs.refuse.clear()
    assert dw.run_pass(pacs, analyzer(), report=lambda x: None).stored == {"SEG": 1, "SR": 1}


def test_http_refusal_quotes_the_server_and_hints_at_invalid_uids(tmp_path):
    class Refusing(FakeDicomweb):
        def store_instances(self, datasets, **_):
            response = requests.Response()
            response.status_code, response.reason = 400, "Bad Request"
            response._content = b'{"Details": "missing StudyInstanceUID"}'
            raise requests.HTTPError(response=response)

    ds = read(cr_blob(tmp_path))
    ds.StudyInstanceUID = ""
    with pytest.raises(dw.StoreRefused) as refused:
        dw.store(Refusing(), [ds], "img-x")
    message = str(refused.value)
    assert "HTTP 400 Bad Request: missing StudyInstanceUID" in message
    assert "invalid StudyInstanceUID" in message and "ptxseg repair-uids" in message


def test_paging_follows_capped_answers_and_stops_when_offset_is_ignored(tmp_path):
    pacs, _ = _pacs(tmp_path, n=5, page_size=2)
    assert len(dw.find_studies(pacs, None)) == 5
    stuck, _ = _pacs(tmp_path, n=5, page_size=2, ignore_offset=True)
    assert len(dw.find_studies(stuck, None)) == 2  # and no endless loop


def test_unreachable_server_is_one_clear_error():
    client = dw.make_client("http://127.0.0.1:9/dicom-web", environ={}, timeout=2, attempts=1)
    with pytest.raises(dw.DicomwebError, match="cannot reach the DICOMweb server"):
        dw.find_studies(client, None)


def test_watch_runs_passes_until_stopped_and_survives_a_failed_pass(tmp_path):
    pacs, _ = _pacs(tmp_path, n=1)
    calls = {"n": 0}
    original = pacs.search_for_studies

    def flaky(**kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise requests.ConnectionError("down")
        return original(**kwargs)

    pacs.search_for_studies = flaky
    lines, sleeps = [], []
    summaries = dw.watch(
        pacs,
        analyzer(),
        None,
        5,
        report=lines.append,
        should_stop=lambda: len(sleeps) >= 3,
        sleep=sleeps.append,
    )
    assert "pass failed" in lines[0] and sleeps == [5, 5, 5]
    assert [s.analysed for s in summaries] == [1, 0]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({dw.TOKEN_ENV: "t0k"}, ("header", "Bearer t0k")),
        ({dw.USER_ENV: "u", dw.PASSWORD_ENV: "p"}, ("auth", ("u", "p"))),
    ],
)
def test_credentials_come_from_the_environment(env, expected):
    session = dw.auth_session(env)
    if expected is None:
        assert session is None
    elif expected[0] == "header":
        assert session.headers["Authorization"] == expected[1]
    else:
        assert session.auth == expected[1]


@pytest.mark.parametrize(
    "env",
    [
        {dw.TOKEN_ENV: "t", dw.USER_ENV: "u", dw.PASSWORD_ENV: "p"},
        {dw.USER_ENV: "u"},
    ],
)
def test_ambiguous_or_incomplete_credentials_are_refused(env):
    with pytest.raises(dw.DicomwebError, match="set"):
        dw.auth_session(env)


def test_bad_url_is_refused():
    with pytest.raises(dw.DicomwebError, match="http"):
        dw.make_client("127.0.0.1:8042", environ={})


@pytest.mark.parametrize(
    "url",
    [
        "http://ptxseg:planted-s3cret@127.0.0.1:8042/dicom-web",
        "http://planted-s3cret@127.0.0.1:8042/dicom-web",
        "https://ptxseg:planted-s3cret@pacs.example.org/dicom-web",
    ],
)
def test_a_url_with_user_info_is_refused_without_repeating_it(url):
    with pytest.raises(dw.DicomwebError) as refused:
        dw.make_client(url, environ={})
    message = str(refused.value)
    assert "planted-s3cret" not in message
    assert dw.USER_ENV in message and dw.PASSWORD_ENV in message and dw.TOKEN_ENV in message


def test_a_url_with_a_query_is_refused_without_repeating_it():
    with pytest.raises(dw.DicomwebError, match="no query string") as refused:
        dw.make_client("http://127.0.0.1:8042/dicom-web?access_token=planted-s3cret", environ={})
    assert "planted-s3cret" not in str(refused.value)


def test_secrets_are_scrubbed_in_their_plain_and_basic_auth_forms():
    env = {dw.USER_ENV: "ptxseg", dw.PASSWORD_ENV: "planted-s3cret"}
    basic = "cHR4c2VnOnBsYW50ZWQtczNjcmV0"  # base64 of ptxseg:planted-s3cret
    text = f"server said: Authorization: Basic {basic}, password planted-s3cret"
    scrubbed = dw.Secrets(env).scrub(text)
    assert "planted-s3cret" not in scrubbed and basic not in scrubbed
    assert dw.Secrets({dw.TOKEN_ENV: "t0ken-xyz"}).scrub("Bearer t0ken-xyz") == "Bearer <secret>"


class DropsAfter(FakeDicomweb):
    """A PACS that goes away after `n` STOW requests: every later call is refused."""

    def __init__(self, *args, n=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.n, self.down = n, False

    def _maybe_down(self):
        if self.down:
            raise requests.ConnectionError("Connection refused")

    def store_instances(self, datasets, **kwargs):
        self._maybe_down()
        if self.n == 0:
            self.down = True
            raise requests.ConnectionError("Connection reset by peer")
        self.n -= 1
        return super().store_instances(datasets, **kwargs)

    def retrieve_instance(self, *args, **kwargs):
        self._maybe_down()
        return super().retrieve_instance(*args, **kwargs)

    def search_for_instances(self, *args, **kwargs):
        self._maybe_down()
        return super().search_for_instances(*args, **kwargs)


def test_a_lost_connection_ends_the_pass_and_a_rerun_finishes(tmp_path):
    pacs, _ = _pacs(tmp_path, n=4)
    pacs = DropsAfter(pacs.instances.values(), n=2)
    a = analyzer()
    with pytest.raises(dw.ConnectionLost, match="cannot reach the DICOMweb server") as lost:
        dw.run_pass(pacs, a, batch_size=1, report=lambda line: None)
    assert lost.value.summary.analysed == 3 and lost.value.summary.stored["SR"] == 2
    pacs.down, pacs.n = False, 100  # the PACS is back
    rerun = dw.run_pass(pacs, a, report=lambda line: None)
    assert (rerun.done_before, rerun.analysed, rerun.errors) == (2, 2, [])


@pytest.mark.parametrize("status", [502, 503, 504])
def test_an_unavailable_server_is_a_lost_connection(status):
    def unavailable(**_):
        response = requests.Response()
        response.status_code, response.reason = status, "Unavailable"
        raise requests.HTTPError(response=response)

    with pytest.raises(dw.ConnectionLost, match=f"HTTP {status}"):
        dw.call("QIDO-RS studies", unavailable)


def _cli(args, capsys):
    from ptxseg.cli import main

    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out + captured.err


def test_the_command_reports_a_lost_server_in_one_line_with_exit_1(tmp_path, capsys, monkeypatch):
    from ptxseg.cli import pacs as cli_pacs

    pacs, _ = _pacs(tmp_path, n=3)
    pacs = DropsAfter(pacs.instances.values(), n=1)
    monkeypatch.setattr(dw, "make_client", lambda url: pacs)
    monkeypatch.setattr(cli_pacs, "_analyzer", lambda *args: analyzer())
    args = ["dicomweb", "--url", "http://127.0.0.1:9/dicom-web", "-c", str(tmp_path / "m.ckpt"),
            "--new", "--batch-size", "1"]  # fmt: skip
    code, out = _cli(args, capsys)
    errors = [line for line in out.splitlines() if "error" in line]
    assert code == 1 and len(errors) == 1 and "Traceback" not in out
    assert "cannot reach the DICOMweb server" in errors[0] and "run the same command" in errors[0]
    pacs.down, pacs.n = False, 100
    code, out = _cli(args, capsys)
    assert code == 0 and "1 had a result, 2 analysed" in " ".join(out.split())


class EchoingServer:
    """A real HTTP server on 127.0.0.1 that answers 401 and quotes the request's headers back,
    as a badly behaved proxy might: what ptxseg prints must still hold no secret."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the standard library's name
                body = json.dumps({"Details": f"denied {self.path} {dict(self.headers)}"})
                self.send_response(401, "Unauthorized")
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_a_planted_secret_never_reaches_the_output(tmp_path, capsys, monkeypatch, kind):
    from ptxseg.cli import pacs as cli_pacs

    secret = "planted-s3cret-4711"
    if kind == "basic":
        monkeypatch.setenv(dw.USER_ENV, "ptxseg")
        monkeypatch.setenv(dw.PASSWORD_ENV, secret)
    else:
        monkeypatch.setenv(dw.TOKEN_ENV, secret)
    monkeypatch.setattr(cli_pacs, "_analyzer", lambda *args: analyzer())
    server = EchoingServer()
    try:
        outputs = []
        for url in (server.url, server.url.replace("http://", f"http://u:{secret}@")):
            code, out = _cli(["dicomweb", "--url", url, "-c", "m.ckpt", "--new"], capsys)
            assert code == 2, out
            outputs.append(out)
    finally:
        server.close()
    log = "\n".join(outputs)
    assert "HTTP 401" in outputs[0] and "<secret>" in outputs[0]  # the server did quote it
    assert "user name or password in the URL is refused" in outputs[1]
    basic = __import__("base64").b64encode(f"ptxseg:{secret}".encode()).decode()
    assert secret not in log and basic not in log
