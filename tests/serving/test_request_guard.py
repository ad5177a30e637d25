"""Only the service's own page drives it: Host names, cross-origin POSTs, the browser headers.

Before: `Host: attacker.example` got 200 (what DNS rebinding needs to read the answers), a
cross-origin multipart POST was analysed, and no response had a CSP, nosniff or frame-ancestors.
"""

from __future__ import annotations

import re
import socket

import cv2
import httpx
import pytest
from dicom_files import chest_like
from fastapi.testclient import TestClient
from serve_helpers import (  # noqa: F401  (restore_library_loggers is autouse)
    FakePredictor,
    FakeSegRenderer,
    LocalServer,
    restore_library_loggers,
)

from ptxseg.serving.request_guard import (
    CONTENT_SECURITY_POLICY,
    HostRule,
    normalise_name,
    split_host,
)
from ptxseg.serving.webapp import STATIC_DIR, ServeSettings, create_app

PNG = cv2.imencode(".png", chest_like(64))[1].tobytes()


def client_for(base_url: str = "http://127.0.0.1:8000", **settings) -> tuple[TestClient, object]:
    predictor = FakePredictor()
    app = create_app(predictor, ServeSettings(**settings), renderer=FakeSegRenderer())
    return TestClient(app, base_url=base_url), predictor


def post(client, headers=None):
    files = {"file": ("x.png", PNG, "image/png")}
    return client.post("/v1/predict?include=none", files=files, headers=headers or {})


# --- Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:8000",
        "localhost",
        "localhost:8000",
        "LocalHost.:8000",
        "[::1]",
        "[::1]:8000",
    ],
)
def test_loopback_names_with_or_without_port_are_answered(host):
    client, predictor = client_for()
    assert client.get("/healthz", headers={"Host": host}).status_code == 200
    assert post(client, {"Host": host}).status_code == 200
    assert predictor.calls == 1


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",
        "attacker.example:8000",
        "127.0.0.1.attacker.example",
        "localhost.attacker.example:8000",
        "::1",  # an IPv6 address in a Host header needs its brackets
        "user@127.0.0.1",
        "127.0.0.1:80:80",
        "",
    ],
)
def test_any_other_host_is_400_before_the_body_is_read(host):
    client, predictor = client_for()
    for response in (client.get("/", headers={"Host": host}), post(client, {"Host": host})):
        assert response.status_code == 400, host
        body = response.json()
        assert body["code"] == "host_not_allowed" and "--allowed-host" in body["detail"]
        assert response.headers["x-request-id"] == body["request_id"]
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert predictor.calls == 0


def test_allowed_host_adds_names_and_a_specific_address_answers_only_to_itself():
    client, _ = client_for(host="192.168.1.5", allowed_hosts=("PTXSEG.clinic.example",))
    for host in ("192.168.1.5:8000", "ptxseg.clinic.example", "ptxseg.clinic.example:443"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("localhost:8000", "127.0.0.1", "clinic.example"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 400, host
    v6, _ = client_for(host="::1")
    assert v6.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
    assert v6.get("/healthz", headers={"Host": "localhost"}).status_code == 200


def test_bound_to_every_interface_it_answers_to_its_own_names_and_addresses():
    """On 0.0.0.0 the address a connection came in on is the server's own: `Host: 10.1.2.3`
    through 10.1.2.3 is answered; a name it does not have is not."""
    client, _ = client_for("http://10.1.2.3:8000", host="0.0.0.0")
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": socket.gethostname()}).status_code == 200
    assert client.get("/healthz", headers={"Host": "10.9.9.9"}).status_code == 400
    refused = client.get("/healthz", headers={"Host": "attacker.example"})
    assert refused.status_code == 400
    # a rebound page can read the refusal: it names no machine name
    detail = refused.json()["detail"]
    listed = re.search(r"answers only to (.*?);", detail).group(1)
    assert listed == "127.0.0.1, [::1], localhost, this machine's names and addresses"


def test_host_values_are_parsed_and_bad_allowed_hosts_refused():
    assert split_host("[::1]:8000") == ("::1", 8000)
    assert split_host("LOCALHOST.") == ("localhost", None)
    assert split_host("evil.example:x") is None and split_host("a/b") is None
    assert normalise_name("::1") == "::1" and normalise_name("Clinic.Example") == "clinic.example"
    for bad in ("http://clinic.example/", "two words", "a@b"):
        with pytest.raises(ValueError, match="is not a host name or address"):
            HostRule("127.0.0.1", [bad])


def test_a_real_server_refuses_a_rebound_host():
    """Over real HTTP (uvicorn): the request of a page at attacker.example whose name now points
    to 127.0.0.1 carries `Host: attacker.example:PORT`."""
    predictor = FakePredictor()
    app = create_app(predictor, ServeSettings(), renderer=FakeSegRenderer())
    with LocalServer(app) as url:
        port = url.rsplit(":", 1)[1]
        with httpx.Client(base_url=url, timeout=30) as client:
            rebound = client.get("/v1/model", headers={"Host": f"attacker.example:{port}"})
            assert rebound.status_code == 400 and "attacker.example" in rebound.json()["detail"]
            files = {"file": ("x.png", PNG, "image/png")}
            sent = client.post("/v1/predict", files=files, headers={"Host": "attacker.example"})
            assert sent.status_code == 400
            assert client.post("/v1/predict", files=files).status_code == 200  # curl-like
    assert predictor.calls == 1


# --- Origin ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example"},
        {"Origin": "null"},  # sandboxed frames and file: pages
        {"Origin": "http://127.0.0.1:3000"},  # another port is another origin
        {"Origin": "https://127.0.0.1:8000"},  # another scheme too
        {"Origin": "http://localhost:8000"},  # another name too, even for the same server
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_cross_origin_post_is_403_and_not_analysed(headers):
    client, predictor = client_for()
    for path in ("/v1/predict", "/v1/seg"):
        files = {"file": ("x.png", PNG, "image/png")}
        response = client.post(path, files=files, headers=headers)
        assert response.status_code == 403, (path, headers)
        body = response.json()
        assert body["code"] == "cross_origin" and "another web page" in body["detail"]
    assert predictor.calls == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, httpx, scripts: neither header
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"},  # the page
        {"Origin": "http://127.0.0.1:8000"},
        {"Origin": "http://127.0.0.1"},  # the default port
        {"Sec-Fetch-Site": "none"},  # typed by the user
    ],
)
def test_same_origin_and_plain_clients_are_served(headers):
    base = "http://127.0.0.1" if headers.get("Origin") == "http://127.0.0.1" else None
    client, predictor = client_for(base) if base else client_for()
    assert post(client, headers).status_code == 200
    assert predictor.calls == 1


def test_a_cross_origin_get_is_still_answered():
    """Reading needs CORS, which the service never grants: a GET changes nothing."""
    client, _ = client_for()
    response = client.get("/v1/model", headers={"Origin": "http://attacker.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


# --- headers ---------------------------------------------------------------------------------


def test_every_answer_carries_the_policy_headers():
    client, _ = client_for()
    answers = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/static/style.css"),
        client.get("/v1/model"),
        client.get("/openapi.json"),
        client.get("/no-such-page"),
        client.post("/v1/predict", content=b"not an image"),
        post(client),
    ]
    for response in answers:
        headers = response.headers
        assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY, response.url
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    policy = dict(p.strip().split(" ", 1) for p in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_the_page_has_no_inline_script_or_style():
    """The policy forbids inline code; the page must not need any (the browser test runs it)."""
    html = (STATIC_DIR / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=|javascript:", html, re.I)
    code = (STATIC_DIR / "app.js").read_text()
    assert not re.search(r"setAttribute\(\s*[\"']style|eval\(|new Function", code)
