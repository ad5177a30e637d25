"""DICOMweb logic on a fake server: what is pending, idempotent reruns, refusals, paging, auth."""

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
