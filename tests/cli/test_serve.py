"""`ptxseg serve`: options that cannot work are one line and exit 2 before the model loads."""

import os

import pytest

from ptxseg.cli import main


def serve(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--checkpoint", "no-such-model", *args])
    return exit_info.value.code, capsys.readouterr().err


def test_keep_uploads_that_cannot_be_written_is_exit_2_before_the_model_loads(tmp_path, capsys):
    """It used to start, then answer every upload with 500."""
    (tmp_path / "file").write_text("x")
    code, err = serve(["--keep-uploads", str(tmp_path / "file" / "kept")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--keep-uploads {tmp_path / 'file' / 'kept'}: cannot write there" in err
    assert "no-such-model" not in err  # checked before the model is looked for


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_keep_uploads_folder_is_exit_2(tmp_path, capsys):
    folder = tmp_path / "kept"
    folder.mkdir(mode=0o500)
    try:
        code, err = serve(["--keep-uploads", str(folder)], capsys)
    finally:
        folder.chmod(0o700)
    assert code == 2 and "Permission denied" in err


def test_a_bad_allowed_host_is_exit_2(capsys):
    code, err = serve(["--allowed-host", "http://clinic.example/"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--allowed-host 'http://clinic.example/' is not a host name or address" in err


def test_a_usable_keep_uploads_folder_goes_on_to_the_model(tmp_path, capsys):
    code, err = serve(["--keep-uploads", str(tmp_path / "new" / "kept")], capsys)
    assert code == 2 and "no-such-model" in err  # the next check: the model is missing
    assert (tmp_path / "new" / "kept").stat().st_mode & 0o777 == 0o700
