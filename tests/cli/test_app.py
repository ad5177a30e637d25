"""Exit codes shared by every command: 0 done, 1 some inputs failed, 2 usage error, 3 a bug."""

import pytest

from ptxseg.cli import main
from ptxseg.cli.app import EXIT_INPUTS_FAILED, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE


def test_the_codes():
    assert (EXIT_OK, EXIT_INPUTS_FAILED, EXIT_USAGE, EXIT_INTERNAL) == (0, 1, 2, 3)


def test_an_unexpected_error_is_exit_code_3_with_its_traceback(tmp_path, monkeypatch, capsys):
    import ptxseg.reporting.html as html

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {encoder: resnet18}\n")
    (run / "metrics.csv").write_text("epoch\n0\n")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the report writer")

    monkeypatch.setattr(html, "write_report", broken)
    with pytest.raises(SystemExit) as done:
        main(["report", str(run)])
    assert done.value.code == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug in the report writer" in err


def test_a_usage_error_is_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path / "missing")])
    assert done.value.code == EXIT_USAGE
    assert capsys.readouterr().err.startswith("error: ")
