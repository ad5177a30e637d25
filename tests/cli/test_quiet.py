"""Third-party banners, tips and deprecation warnings stay off the terminal; ptxseg's own stay."""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from ptxseg.cli.quiet import BANNER_LOGGERS, CHILD_WARNING_OPTIONS, quiet_third_party

SRC = Path(__file__).resolve().parents[2] / "src"

# What a plain `ptxseg train` printed before: Lightning's accelerator lines and its advertisement
# for a cloud logger, its closing note, and torch's deprecation of LeafSpec raised in Lightning.
BANNERS = (
    "💡",
    "Tip:",
    "litlogger",
    "LitLogger",
    "GPU available",
    "TPU available",
    "`Trainer.fit` stopped",
    "LOCAL_RANK",
    "deprecated",
    "Warning:",
)
# How the warnings module prints a warning: `file.py:LINE: ...`.
WARNING_LINE = re.compile(r"\.py:\d+: ")


@pytest.fixture
def restored(monkeypatch):
    """The process-wide settings that quiet_third_party changes, put back after the test."""
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    levels = {name: logging.getLogger(name).level for name in BANNER_LOGGERS}
    root_filters = list(logging.getLogger().filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().filters[:] = root_filters


def _warn(category, module: str, text: str = "something") -> None:
    warnings.warn_explicit(text, category, f"{module.replace('.', '/')}.py", 1, module=module)


def test_third_party_deprecations_are_silenced_and_ptxseg_warnings_stay(restored):
    from ptxseg.data.dicom import DicomHeaderWarning

    quiet_third_party()
    _warn(FutureWarning, "lightning.pytorch.utilities._pytree")
    _warn(DeprecationWarning, "timm.models")
    _warn(PendingDeprecationWarning, "torch.utils")
    _warn(UserWarning, "highdicom.base", "single component person name")
    _warn(UserWarning, "pydicom.valuerep", "Invalid value for VR UI")
    _warn(FutureWarning, "ptxseg.cli.data", "--device is deprecated: use --decode")
    _warn(DicomHeaderWarning, "ptxseg.data.dicom", "read despite invalid header values")
    _warn(UserWarning, "torch.nn.modules", "not a deprecation: stays")
    assert [str(w.message) for w in restored] == [
        "--device is deprecated: use --decode",
        "read despite invalid header values",
        "not a deprecation: stays",
    ]


def test_lightning_banners_and_root_logged_advice_are_silenced(restored):
    quiet_third_party()
    for name in BANNER_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger(name).isEnabledFor(logging.WARNING)
    root = logging.getLogger()
    advice = root.makeRecord(
        "root",
        logging.WARNING,
        "/x/site-packages/onnxruntime/q.py",
        1,
        "Please consider pre-processing",
        None,
        None,
    )
    own = root.makeRecord("root", logging.WARNING, "/x/src/ptxseg/a.py", 1, "own", None, None)
    assert [root.filter(advice), bool(root.filter(own))] == [False, True]


def test_child_processes_inherit_the_filters_once(restored):
    os.environ["PYTHONWARNINGS"] = "error::ResourceWarning"
    quiet_third_party()
    quiet_third_party()
    options = os.environ["PYTHONWARNINGS"].split(",")
    assert options == ["error::ResourceWarning", *CHILD_WARNING_OPTIONS]
    code = "import warnings; warnings.warn('old', DeprecationWarning); print('ran')"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert (done.stdout, done.stderr) == ("ran\n", "")


def test_a_plain_train_prints_no_third_party_banner(tmp_path):
    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    generate_dataset(tmp_path / "siim", n_images=16, size=64, seed=0, positive_fraction=0.5)
    work = tmp_path / "work"
    prepare_work_folder(
        tmp_path / "siim" / "dicom-images-train",
        tmp_path / "siim" / "train-rle.csv",
        work,
        PrepareOptions(size=64, val=0.25, test=0.1),
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    args = ["train", "--data", str(work), "--out", str(tmp_path / "run"), "--epochs", "1"]
    args += ["--encoder", "resnet18", "--encoder-weights", "none", "--batch-size", "4"]
    args += ["--workers", "0", "--limit-batches", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "ptxseg", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "done:" in out
    assert [line for line in out.splitlines() if any(b in line for b in BANNERS)] == []
    assert [line for line in out.splitlines() if WARNING_LINE.search(line)] == []
