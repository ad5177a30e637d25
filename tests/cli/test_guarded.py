"""Every command that writes, with its output set to each of its inputs and inside each input
folder: refused in one line with every input unchanged, or, inside a folder the command walks,
run for real twice with the output skipped by the walk (the second run gives the same result).

The commands come from the typer app, so a new command cannot be left out: each must declare its
inputs and outputs (`ptxseg.cli.guarded`), every path option among them, and a writing command
with inputs needs its base arguments in `BASE` below.
"""

from __future__ import annotations

import hashlib
import shutil
import typing
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from predict_helpers import make_checkpoint

from ptxseg.cli import app, main

ALLOWED_AT = {("report", "--out", "equal")}
"""Cases that write inside a walked folder although the option names the folder itself: report
writes FOLDER/report.html, and the report's walk does not read it."""
VOLATILE = ("run.json",)  # predict's timings: the only output that differs between two runs


def commands() -> dict[str, typing.Any]:
    """Command name -> its registered callback, as the typer app has them."""
    return {
        info.name or typer.main.get_command_name(info.callback.__name__): info.callback
        for info in app.registered_commands
    }


def _mentions_path(annotation) -> bool:
    if annotation is Path:
        return True
    return any(_mentions_path(a) for a in typing.get_args(annotation))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Inputs of every kind: DICOMs, a SIIM dataset and its work folder, checkpoints, model
    folders, an ensemble, PNGs, a run folder and a config file."""
    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder
    from ptxseg.inference.ensemble import write_ensemble
    from ptxseg.model.checkpoint import export_inference_model

    w = tmp_path_factory.mktemp("world")
    generate_dataset(w / "siim", n_images=8, size=64, seed=0, positive_fraction=0.5)
    (w / "scans").mkdir()
    for path in sorted((w / "siim").rglob("*.dcm"))[:3]:
        shutil.copy(path, w / "scans" / path.name)
    prepare_work_folder(
        w / "siim" / "dicom-images-train",
        w / "siim" / "train-rle.csv",
        w / "work",
        PrepareOptions(size=64),
    )
    make_checkpoint(w / "m.ckpt", "resnet18", 64)
    make_checkpoint(w / "m2.ckpt", "resnet18", 64)
    export_inference_model(w / "m.ckpt", w / "model")
    export_inference_model(w / "m2.ckpt", w / "model2")
    write_ensemble(w / "ens" / "ensemble.json", [w / "model", w / "model2"])
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    cv2.imwrite(str(w / "image.png"), image)
    cv2.imwrite(str(w / "mask.png"), (image > 200).astype(np.uint8) * 255)
    (w / "run").mkdir()
    (w / "run" / "config.yaml").write_text("model: {encoder: resnet18}\n")
    (w / "run" / "metrics.csv").write_text("epoch,val_dice\n0,0.5\n")
    shutil.copy(Path(__file__).parents[2] / "src/ptxseg/presets/demo.yaml", w / "config.yaml")
    for name, model in (("eval-a", w / "model"), ("eval-b", w / "model2")):
        argv = ["evaluate", "--checkpoint", model, "--data", w / "work", "--out", w / name]
        assert call([*argv, "--split", "train", "--threshold", "0.5", "--bootstrap", "0"]) == 0
    return w


def BASE(w: Path, o: dict[str, Path]) -> dict[str, list]:
    """Arguments of each writing command with inputs; `o` holds the output options' values."""
    images, csv = w / "siim" / "dicom-images-train", w / "siim" / "train-rle.csv"
    return {
        "augment-preview": ["--out", o["out"], "--image", w / "image.png"]
        + ["--mask", w / "mask.png", "--n", "1", "--size", "32"],
        "train": ["--data", w / "work", "--out", o["out"], "--config", w / "config.yaml"],
        "benchmark-training": ["--data", w / "work", "--out", o["out"]],
        "cv": ["--data", w / "work", "--folds", "2", "--out", o["out"]]
        + ["--config", w / "config.yaml"],
        "average-checkpoints": [w / "m.ckpt", w / "m2.ckpt", "--out", o["out"], "--bn-batches"]
        + ["0"],
        "ensemble": [w / "model", w / "model2", "--out", o["out"]],
        "prepare": ["--images", images, "--annotations", csv, "--out", o["out"], "--size", "64"]
        + ["--workers", "1"],
        "benchmark-data": ["--out", o["out"], "--real-dicoms", w / "scans"],
        "evaluate": ["--checkpoint", w / "ens" / "ensemble.json", "--data", w / "work"]
        + ["--out", o["out"]],
        "repair-uids": [w / "scans", "--out", o["out"]],
        "predict": [w / "scans", "-c", w / "model", "-o", o["out"], "--workers", "0"]
        + ["--batch-size", "2", "--outputs", "mask,findings,overlay,seg,sr"],
        "export": ["-c", w / "m.ckpt", "--out", o["out"]],
        "benchmark-runtime": ["-c", w / "m.ckpt", "--out", o["out"], "--work", w / "work"]
        + ["--dicom-dir", w / "scans"],
        "benchmark-gpu": ["--out", o["out"], "--work", o["work"], "--dicoms", w / "scans"],
        "report": [w / "run", "--out", o["out"]],
        "compare": [w / "eval-a", w / "eval-b", "--out", o["out"], "--bootstrap", "100"],
        "ablate": ["--data", w / "work", "--out", o["out"], "--config", w / "config.yaml"],
        "serve": ["-c", w / "model", "--keep-uploads", o["keep_uploads"]],
        "listen": ["-c", w / "model", "--send-to", "PACS@127.0.0.1:104", "--spool", o["spool"]],
        "load-test": ["--file", w / "image.png", "--out", o["out"]],
    }


class Fresh(dict):
    """Output values: the ones given, else a new path under `tmp` for any option asked for."""

    def __init__(self, tmp: Path, given: dict | None = None):
        super().__init__(given or {})
        self.tmp = tmp

    def __missing__(self, option: str) -> Path:
        return self.tmp / f"fresh-{option}"


_HASHES: dict[tuple, str] = {}


def sha256(path: Path) -> str:
    """A file's sha256, computed again only when its inode, size or mtime changed (a write in
    place or a rename changes one of them; hashing the checkpoints every time is slow)."""
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def digest(folder: Path, skip: Path | None = None, volatile: tuple[str, ...] = ()) -> dict:
    """sha256 of every file and the list of folders under `folder` (not under `skip`)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if skip is not None and (path == skip or path.is_relative_to(skip)):
            continue
        if path.name in volatile:
            continue
        key = str(path.relative_to(folder))
        found[key] = sha256(path) if path.is_file() else "dir"
    return found


def call(argv: list) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def cases(name: str, declaration, world: Path, tmp: Path):
    """(output option, case, argv, input, value) for each output option and each input."""
    fresh = Fresh(tmp)
    base = BASE(world, fresh)
    if name not in base:
        pytest.fail(f"{name} writes and reads: add its base arguments to BASE in {__file__}")
    params = (
        typer.main.get_command(app)
        .commands[name]
        .make_context(name, [str(a) for a in base[name]])
        .params
    )
    inputs = declaration.input_paths(params)
    assert inputs, f"{name}: its declared inputs name no path in BASE"
    for option in declaration.outputs:
        for given in inputs:
            targets = [("equal", given.path)]
            if given.path.is_dir() or given.path.is_file():
                targets.append(("inside", given.path / "sub"))
            for case, value in targets:
                argv = [name, *BASE(world, Fresh(tmp, {option: value}))[name]]
                yield declaration.labels[option], case, argv, given, value


def test_every_command_declares_its_inputs_and_outputs():
    found = commands()
    assert {"predict", "prepare", "repair-uids", "synth", "export", "ensemble"} <= set(found)
    for name, callback in found.items():
        declaration = getattr(callback, "guarded", None)
        assert declaration is not None, f"{name}: declare its paths with @guarded"
        hints = typing.get_type_hints(declaration.body)
        undeclared = [
            p
            for p, annotation in hints.items()
            if _mentions_path(annotation)
            and p not in declaration.inputs
            and p not in declaration.outputs
        ]
        assert not undeclared, f"{name}: path options {undeclared} are neither input nor output"


def test_every_writing_command_refuses_its_inputs_as_outputs(world, tmp_path, monkeypatch, capsys):
    """Refusals run with the command's body replaced, so a guard that let one through fails
    here without doing the command's work; the walked cases are the next test's."""
    tried = {}
    for name, callback in sorted(commands().items()):
        declaration = callback.guarded
        if not declaration.outputs or not declaration.inputs:
            continue
        ran: list[dict] = []
        monkeypatch.setattr(declaration, "body", lambda ran=ran, **params: ran.append(params))
        for option, case, argv, given, _ in cases(name, declaration, world, tmp_path):
            if given.walked and (case == "inside" or (name, option, case) in ALLOWED_AT):
                continue
            before = digest(world)
            capsys.readouterr()
            code = call(argv)
            err = capsys.readouterr().err
            what = f"{name} {option}={case} {given.label} {given.path}"
            assert code == 2 and not ran, f"{what}: not refused (exit {code})"
            assert err.startswith("error: ") and err.count("\n") == 1, f"{what}: {err!r}"
            assert digest(world) == before, f"{what}: something changed"
            tried[name] = tried.get(name, 0) + 1
        monkeypatch.undo()
    assert {"predict", "export", "average-checkpoints", "ensemble", "repair-uids"} <= set(tried)
    print(f"\n{sum(tried.values())} refusals over {len(tried)} commands: {tried}")


WALKED_RUNS = ["predict", "prepare", "repair-uids", "report"]


@pytest.mark.parametrize("name", WALKED_RUNS)
def test_an_output_inside_a_walked_input_is_skipped_and_a_rerun_gives_the_same(
    world, tmp_path, name
):
    declaration = commands()[name].guarded
    walked = [
        (option, case, argv, given, value)
        for option, case, argv, given, value in cases(name, declaration, world, tmp_path)
        if given.walked and (case == "inside" or (name, option, case) in ALLOWED_AT)
    ]
    assert walked, f"{name} walks no input folder"
    for option, case, argv, given, out in walked:
        before = digest(given.path, skip=out)
        first = call(argv)
        assert first in (0, 1), f"{name} {option}={case}: exit {first}"
        written = digest(out, volatile=VOLATILE)
        assert call(argv) == first
        assert digest(out, volatile=VOLATILE) == written, f"{name}: the rerun differs"
        assert digest(given.path, skip=out) == before, f"{name}: an input changed"
        assert not (out / "sub").exists()
        if out != given.path:
            shutil.rmtree(out)


# ------------------------------------------------------------------ the failures that were seen


def refused(argv: list, capsys, match: str, *keep: Path) -> None:
    """`argv` exits 2 with one line naming `match`, and every path in `keep` is unchanged."""
    before = {p: digest(p) if p.is_dir() else sha256(p) for p in keep}
    capsys.readouterr()
    assert call(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert {p: digest(p) if p.is_dir() else sha256(p) for p in keep} == before


def test_export_average_and_ensemble_never_overwrite_their_models(world, tmp_path, capsys):
    ckpt, model = world / "m.ckpt", world / "model"
    refused(["export", "-c", ckpt, "--out", ckpt], capsys, "also the input", ckpt)
    # a folder export replaces its target whole: a folder holding the checkpoint is refused
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoints" / "best.ckpt")
    argv = ["export", "-c", run / "checkpoints" / "best.ckpt", "--format", "safetensors"]
    refused([*argv, "--out", run], capsys, "would delete the input", run)
    refused(
        ["average-checkpoints", ckpt, world / "m2.ckpt", "--out", world / "m2.ckpt"],
        capsys,
        "also the input",
        world / "m2.ckpt",
    )
    argv = ["ensemble", model, world / "model2", "--out", model / "ptxseg.json"]
    refused(argv, capsys, "inside the model folder", model)


def test_repair_uids_copies_beside_or_inside_its_inputs_never_over_them(world, tmp_path, capsys):
    scans = tmp_path / "scans"
    shutil.copytree(world / "scans", scans)
    refused(["repair-uids", scans, "--out", scans], capsys, "also the input", scans)
    first = next(iter(sorted(scans.glob("*.dcm"))))
    refused(["repair-uids", first, "--out", scans], capsys, "overwrite the input", scans)
    for _ in range(3):  # run again and again: one copy, never a copy of the copy
        assert call(["repair-uids", scans, "--out", scans / "fixed"]) == 0
    copies = sorted(p.relative_to(scans).as_posix() for p in scans.rglob("*.dcm"))
    originals = sorted(p.name for p in (world / "scans").glob("*.dcm"))
    assert copies == sorted([f"fixed/{n}" for n in originals] + originals)


def test_synth_overwrite_replaces_only_its_own_dataset(tmp_path, capsys):
    real = tmp_path / "real"
    (real / "dicom-images-train" / "1" / "2").mkdir(parents=True)
    (real / "dicom-images-train" / "1" / "2" / "x.dcm").write_bytes(b"a real image")
    (real / "train-rle.csv").write_text("ImageId, EncodedPixels\nx, -1\n")
    argv = ["synth", real, "--n-images", "2", "--size", "32", "--overwrite"]
    refused(argv, capsys, "not written by synth", real)
    own = tmp_path / "own"
    assert call(["synth", own, "--n-images", "2", "--size", "32"]) == 0
    assert call(["synth", own, "--n-images", "3", "--size", "32", "--overwrite"]) == 0
    assert len(list(own.rglob("*.dcm"))) == 3


def test_a_second_run_into_a_folder_being_written_is_refused(world, tmp_path, capsys):
    from ptxseg.util import path_guard

    out = tmp_path / "out"
    out.mkdir()
    argv = ["predict", world / "scans", "-c", world / "m.ckpt", "-o", out, "--workers", "0"]
    with path_guard.claim(out):  # a running predict holds it
        refused(argv, capsys, "being written by another run", out)
    # shards of one run write one folder together: each holds its own lock
    with path_guard.claim(out, ".ptxseg.shard-0-of-2.lock"):
        assert call([*argv, "--shard", "1/2"]) == 0
    assert len(list((out / "findings").glob("*.json"))) == 1
