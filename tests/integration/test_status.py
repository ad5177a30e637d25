"""`ptxseg listen-status` (no model, no destination) and the `listen` checks made before a model
is loaded: a spool in use, bad durations and limits."""

import json

import pytest

from ptxseg.cli import main
from ptxseg.integration.spool import Spool
from ptxseg.integration.status import render_status, spool_status

BLOB = b"\0" * 128 + b"DICM" + b"x" * 100


def _cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out, captured.err


@pytest.fixture
def filled(tmp_path):
    """A spool with 2 queued, 1 pending delivery and 1 failed item, not locked."""
    with Spool(tmp_path / "spool") as spool:
        for i in range(4):
            spool.receive(BLOB, f"img-{i}")
        queued = spool.queued()
        spool.to_outbox(queued[0], [("SR", b"sr")], "img-0: no pneumothorax; SR")
        spool.fail_queued(queued[1], "img-1: failed: ImageReadError: truncated pixel data")
        spool.write_status({"last_delivery_error": "could not open an association", "pid": 1})
    return spool


def test_status_counts_the_folders(filled):
    status = spool_status(filled)
    assert (status["queued"], status["pending_delivery"], status["failed"]) == (2, 1, 1)
    assert not status["listener_running"]
    assert status["failures"][0]["image"] == "img-1"
    text = render_status(status)
    assert "queued for analysis: 2" in text and "pending delivery: 1" in text
    assert "last error: could not open an association" in text
    assert "truncated pixel data" in text and "listener: not running" in text


def test_listen_status_command(filled, capsys):
    code, out, _ = _cli(["listen-status", str(filled.root)], capsys)
    assert code == 0 and "failed: 1" in out
    code, out, _ = _cli(["listen-status", str(filled.root), "--json"], capsys)
    assert code == 0 and json.loads(out)["queued"] == 2
    with filled:  # a listener holds it
        _, out, _ = _cli(["listen-status", str(filled.root)], capsys)
        assert "listener: running (pid 1" in out


def test_listen_status_finds_the_default_spool(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    Spool(tmp_path / "ptxseg/listen/NODE-104").open().close()
    code, out, _ = _cli(["listen-status", "--ae-title", "NODE", "--port", "104"], capsys)
    assert code == 0 and "queued for analysis: 0" in out


def test_listen_status_refuses_a_folder_that_is_not_a_spool(tmp_path, capsys):
    code, _, err = _cli(["listen-status", str(tmp_path)], capsys)
    assert code == 2 and "is not a listener's spool" in err and len(err.splitlines()) == 1


def test_listen_refuses_a_spool_in_use_before_loading_a_model(tmp_path, capsys):
    with Spool(tmp_path / "spool") as held:
        args = ["listen", "-c", str(tmp_path / "missing.ckpt"), "--send-to", "A@127.0.0.1:104",
                "--spool", str(held.root)]  # fmt: skip
        code, _, err = _cli(args, capsys)
    assert code == 2 and "in use by another listener" in err and "--spool" in err


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--retry-for", "soon", "--retry-for 'soon': expected a positive duration"),
        ("--retry-for", "0h", "expected a positive duration"),
        ("--max-megapixels", "nan", "'--max-megapixels': nan: expected a positive number"),
        ("--spool-max-gb", "-1", "--spool-max-gb -1: expected a positive number"),
    ],
)
def test_listen_checks_its_options(tmp_path, capsys, option, value, expected):
    args = ["listen", "-c", str(tmp_path / "m.ckpt"), "--send-to", "A@127.0.0.1:104",
            "--spool", str(tmp_path / "spool"), option, value]  # fmt: skip
    code, _, err = _cli(args, capsys)
    assert code == 2 and expected in " ".join(err.split())
    assert not (tmp_path / "spool").exists()


def test_a_listen_message_suggesting_max_megapixels_names_an_option_it_has(capsys):
    code, out, _ = _cli(["listen", "--help"], capsys)
    assert code == 0 and "--max-megapixels" in out
