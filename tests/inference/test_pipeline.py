"""Folder prediction: every output, corrupt files reported, shards, reruns, the CLI."""

import csv
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
from dicom_files import chest_like, tiny_bomb, write_dicom
from predict_helpers import RegionModel, TinyUnet, make_checkpoint

from ptxseg.cli import main
from ptxseg.data.rle import rle_decode
from ptxseg.inference import main_loop, workers
from ptxseg.inference.device_batch import pack_bits, pack_bits_many, use_device_decoder
from ptxseg.inference.inputs import collect_inputs, parse_outputs, resume_batches
from ptxseg.inference.main_loop import LOOP_STEPS, predict_files
from ptxseg.inference.outputs import read_mask
from ptxseg.inference.predictor import Predictor
from ptxseg.inference.run_record import write_run_record
from ptxseg.inference.sr import read_report
from ptxseg.util import schemas


def _pngs(folder: Path, n: int, shape=(80, 96)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), (rng.random(shape) * 255).astype(np.uint8))
        paths.append(path)
    return paths


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_run_writes_every_output_and_reports_a_corrupt_file(tmp_path):
    _pngs(tmp_path / "in" / "sub", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    files = collect_inputs([tmp_path / "in"])
    assert [p.name for p in files] == ["broken.png", "img0.png", "img1.png", "img2.png"]
    result = predict_files(Predictor(RegionModel()), files, tmp_path / "out", progress=False)
    assert (result.predicted, result.errors) == (3, 1)
    rows = {r["image_id"]: r for r in _rows(tmp_path / "out" / "summary.csv")}
    assert rows["broken"]["status"] == "error" and "broken.png" in rows["broken"]["error"]
    sub = {r["ImageId"]: r["EncodedPixels"] for r in _rows(tmp_path / "out" / "submission.csv")}
    assert set(sub) == {"img0", "img1", "img2"}
    for image_id in sub:
        mask = read_mask(tmp_path / "out" / "masks" / f"{image_id}.png")
        assert mask.shape == (80, 96) and mask.any()
        np.testing.assert_array_equal(rle_decode(sub[image_id], 80, 96), mask)
        findings = json.loads((tmp_path / "out" / "findings" / f"{image_id}.json").read_text())
        assert findings["pneumothorax"] is True and findings["area_px"] == int(mask.sum())
        assert rows[image_id]["status"] == "ok" and rows[image_id]["side"] == findings["side"]
        overlay = cv2.imread(str(tmp_path / "out" / "overlays" / f"{image_id}.png"))
        assert overlay.shape == (80, 96, 3)
    assert not list((tmp_path / "out").rglob("*.tmp"))


class BatchSensitiveModel(RegionModel):
    """RegionModel whose logits move with the mean of the whole batch, as real kernels move a
    little with the batch they run in."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.scale.fill_(0.25)  # logits +-2, where the probability still moves

    def forward(self, x):
        per_image = 0.0 * x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return self.pattern * self.scale + (x.mean() - 0.5) + per_image


def test_resume_batches_keeps_the_batches_of_an_uninterrupted_run():
    order = [Path(f"f{i}") for i in range(7)]
    todo = [order[1], order[6]]
    assert resume_batches(order, todo, 3) == order[0:3] + order[6:7]
    assert resume_batches(order, order, 3) == order
    assert resume_batches(order, [], 3) == []
    assert resume_batches(order, todo, 1) == todo


def test_rerun_after_an_interruption_gives_what_an_uninterrupted_run_gives(tmp_path):
    (tmp_path / "in").mkdir()
    files = []
    for i, level in enumerate((20, 60, 100, 140, 180)):  # batches of different brightness
        files.append(tmp_path / "in" / f"img{i}.png")
        image = np.full((80, 96), level, np.uint8)
        image[:, :8] += 10  # not constant: a constant image is refused
        cv2.imwrite(str(files[-1]), image)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    for out in (clean, resumed):
        predict_files(Predictor(BatchSensitiveModel(), batch_size=2), files, out, progress=False)
    # as if killed: img1 (batched with img0) and img4 (alone in the last batch) not finished
    for image_id in ("img1", "img4"):
        (resumed / "findings" / f"{image_id}.json").unlink()
    stamp = (resumed / "findings" / "img0.json").stat().st_mtime_ns
    again = predict_files(
        Predictor(BatchSensitiveModel(), batch_size=2), files, resumed, progress=False
    )
    assert (again.predicted, again.skipped, again.errors) == (2, 3, 0)
    assert (resumed / "findings" / "img0.json").stat().st_mtime_ns == stamp  # not rewritten
    for image_id in ("img1", "img4"):
        name = f"findings/{image_id}.json"
        assert _without_paths(resumed / name) == _without_paths(clean / name)
    # the same two files predicted in a batch of their own would not have been the same
    alone = tmp_path / "alone"
    predict_files(
        Predictor(BatchSensitiveModel(), batch_size=2), [files[1], files[4]], alone, progress=False
    )
    img1 = "findings/img1.json"
    assert _without_paths(alone / img1) != _without_paths(clean / img1)


def _without_paths(path: Path) -> dict:
    findings = json.loads(path.read_text())
    findings.pop("input_file")
    return findings


def test_rerun_skips_finished_images(tmp_path):
    files = _pngs(tmp_path / "in", 3)
    out = tmp_path / "out"
    predict_files(Predictor(RegionModel()), files, out, progress=False)
    (out / "findings" / "img1.json").unlink()
    stamp = (out / "masks" / "img0.png").stat().st_mtime_ns
    again = predict_files(Predictor(RegionModel()), files, out, progress=False)
    assert (again.predicted, again.skipped, again.errors) == (1, 2, 0)
    assert (out / "masks" / "img0.png").stat().st_mtime_ns == stamp
    assert len(_rows(out / "summary.csv")) == 3 and len(_rows(out / "submission.csv")) == 3


def test_cli_on_real_dicoms_with_seg_and_sr(siim_real, tmp_path):
    src = siim_real / "vishakhnair16-stage2-test"
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("ID_0011fe81e.dcm", "ID_004d6fbb6.dcm"):
        shutil.copy(src / name, inputs / name)
    txv = next((siim_real / "torchxrayvision").glob("1.2.276*.dcm"))
    ckpt = make_checkpoint(
        tmp_path / "m.ckpt", "resnet50", 64, {"top": 0.0, "bottom": 0.0, "min_area": 0}
    )
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(
            [
                "predict",
                str(inputs),
                str(txv),
                "-c",
                str(ckpt),
                "-o",
                str(out),
                "--seg",
                "--sr",
                "--shard",
                "0/1",
            ]
        )
    assert done.value.code in (0, None)
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["ok"] * 3
    for row in rows:  # threshold 0: everything positive, so each DICOM gets a SEG
        findings = json.loads((out / "findings" / f"{row['image_id']}.json").read_text())
        assert findings["area_cm2"] == pytest.approx(
            1024 * 1024 * findings["pixel_spacing_mm"][0] ** 2 / 100, rel=1e-3
        )
        assert Path(findings["seg_file"]).is_file()
        report = read_report(findings["sr_file"])  # every DICOM gets an SR, referencing its SEG
        assert report["pneumothorax"] is True and report["area_cm2"] == findings["area_cm2"]
        assert report["source_sop_instance_uid"] == findings["seg_referenced_sop_instance_uid"]
        seg = pydicom.dcmread(findings["seg_file"])
        assert report["segmentation_sop_instance_uid"] == seg.SOPInstanceUID


def test_header_warnings_stay_with_their_image_with_several_workers(tmp_path):
    """With 4 decoding threads, each findings JSON lists its own file's warnings only."""
    folder = tmp_path / "in"
    folder.mkdir()
    ids = [f"ID_{i:09x}" for i in range(24)]
    for i, image_id in enumerate(ids):
        write_dicom(folder / f"{image_id}.dcm", chest_like(64, i), SOPInstanceUID=image_id)
    for i in range(8):
        write_dicom(folder / f"clean{i}.dcm", chest_like(64, i))
    files = collect_inputs([folder])
    result = predict_files(
        Predictor(RegionModel(), batch_size=2), files, tmp_path / "out", workers=4, progress=False
    )
    assert result.errors == 0
    for path in files:
        findings = json.loads((tmp_path / "out" / "findings" / f"{path.stem}.json").read_text())
        text = " ".join(findings.get("header_warnings", []))
        assert [i for i in ids if i in text] == ([path.stem] if path.stem in ids else [])


def test_cli_bomb_is_a_per_file_error_and_the_exit_code_is_1(tmp_path, capsys):
    _pngs(tmp_path / "in", 2)
    (tmp_path / "in" / "bomb.jpg").write_bytes(tiny_bomb("jpeg"))
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(["predict", str(tmp_path / "in"), "-c", str(ckpt), "-o", str(out), "--workers", "2"])
    assert done.value.code == 1
    rows = {r["image_id"]: r for r in _rows(out / "summary.csv")}
    assert [rows[i]["status"] for i in ("bomb", "img0", "img1")] == ["error", "ok", "ok"]
    assert "30000x30000 pixels" in rows["bomb"]["error"]
    assert "bomb.jpg" in capsys.readouterr().err
    # a lower limit refuses the ordinary images too
    with pytest.raises(SystemExit) as done:
        main(
            [
                "predict",
                str(tmp_path / "in" / "img0.png"),
                "-c",
                str(ckpt),
                "-o",
                str(tmp_path / "out2"),
                "--max-megapixels",
                "0.001",
            ]
        )
    assert done.value.code == 1
    assert "limit of 0.001 MP" in _rows(tmp_path / "out2" / "summary.csv")[0]["error"]


def test_cli_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    _pngs(tmp_path / "in", 1)
    (tmp_path / "taken.txt").write_text("x")
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64)
    with pytest.raises(SystemExit) as done:
        main(["predict", str(tmp_path / "in"), "-c", str(ckpt), "-o", str(tmp_path / "taken.txt")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "taken.txt is a file" in err and len(err.splitlines()) == 1


# --- archive scale: outputs to choose, the device path, the run record ---


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_mask(p) for p in sorted((folder / "masks").glob("*.png"))}


def _real_dicoms(siim_real: Path) -> list[Path]:
    return sorted(siim_real.rglob("*.dcm"))


def test_outputs_are_chosen_and_checked(tmp_path):
    assert parse_outputs("overlay") == ("mask", "findings", "overlay")
    assert parse_outputs("seg,mask") == ("mask", "findings", "seg")
    with pytest.raises(ValueError, match="unknown output"):
        parse_outputs("mask,heatmap")
    files = _pngs(tmp_path / "in", 2)
    out = tmp_path / "out"
    result = predict_files(
        Predictor(RegionModel()), files, out, outputs=("mask",), workers=0, progress=False
    )
    assert result.predicted == 2 and result.images_per_s > 0 and result.first_result_s > 0
    assert not (out / "overlays").exists() and len(list((out / "findings").iterdir())) == 2


@pytest.mark.filterwarnings("ignore::ptxseg.data.dicom.DicomHeaderWarning")
def test_the_device_path_on_the_cpu_writes_the_cpu_paths_results(siim_real, tmp_path):
    """Batched decoding and resizing on the model's device (here the CPU: libjpeg-turbo and the
    exact area shrink) gives the CPU path's masks and findings."""
    files = _real_dicoms(siim_real)
    runs = {}
    for decode in ("cpu", "device"):
        predictor = Predictor(TinyUnet(256), batch_size=4)
        runs[decode] = predict_files(
            predictor, files, tmp_path / decode, decode=decode, workers=0, progress=False
        )
    assert (runs["cpu"].decoder, runs["device"].decoder) == ("cpu", "device")
    assert runs["device"].predicted == len(files) and runs["device"].errors == 0
    cpu, device = _masks(tmp_path / "cpu"), _masks(tmp_path / "device")
    assert cpu.keys() == device.keys()
    for key in cpu:
        np.testing.assert_array_equal(cpu[key], device[key])
        a = json.loads((tmp_path / "cpu" / "findings" / f"{key}.json").read_text())
        b = json.loads((tmp_path / "device" / "findings" / f"{key}.json").read_text())
        assert a["probability"] == b["probability"] and a["area_px"] == b["area_px"]


@pytest.mark.filterwarnings("ignore::ptxseg.data.dicom.DicomHeaderWarning")
def test_frames_the_device_cannot_decode_fall_back_to_the_cpu_reader(
    siim_real, tmp_path, monkeypatch
):
    from ptxseg.data import device_images

    files = _real_dicoms(siim_real)[:3]
    real = device_images.decode_frames

    def first_fails(frames, device):
        out = real(frames, device)
        return [ValueError("nvJPEG refused it")] + out[1:]

    predict_files(Predictor(TinyUnet(256)), files, tmp_path / "ref", decode="cpu", workers=0)
    monkeypatch.setattr(device_images, "decode_frames", first_fails)
    result = predict_files(
        Predictor(TinyUnet(256)), files, tmp_path / "dev", decode="device", workers=0
    )
    assert (result.predicted, result.errors) == (3, 0)
    ref, got = _masks(tmp_path / "ref"), _masks(tmp_path / "dev")
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_decoder_choice_without_cuda():
    torch_predictor = Predictor(RegionModel())
    assert use_device_decoder(torch_predictor, "auto") is torch.cuda.is_available()
    assert use_device_decoder(torch_predictor, "cpu") is False
    assert use_device_decoder(torch_predictor, "device") is True
    with pytest.raises(ValueError, match="expected one of"):
        use_device_decoder(torch_predictor, "gpu")
    onnx_like = type("P", (), {"runtime": "onnxruntime", "device": "cpu"})()
    with pytest.raises(ValueError, match="needs the torch runtime"):
        use_device_decoder(onnx_like, "device")


def test_the_run_says_what_bounds_its_main_loop(tmp_path, monkeypatch):
    """Slow writers show as the main loop's largest wait, in the result and in run.json."""
    real_write = workers.write_outputs

    def slow_write(task):
        time.sleep(0.1)
        return real_write(task)

    monkeypatch.setattr(workers, "write_outputs", slow_write)
    files = _pngs(tmp_path / "in", 4)
    out = tmp_path / "out"
    result = predict_files(
        Predictor(RegionModel()), files, out, outputs=("mask",), workers=0, progress=False
    )
    spent = result.loop_s
    assert set(spent) == set(LOOP_STEPS) and min(spent.values()) >= 0
    assert max(spent, key=spent.get) == "writers" and spent["writers"] >= 0.25
    assert sum(spent.values()) <= result.seconds
    write_run_record(result, out / "run.json", {})
    record = json.loads((out / "run.json").read_text())
    assert record["main_loop_s"] == spent and record["schema_version"] == schemas.PREDICT_RUN


def test_a_task_that_dies_fails_its_own_files_only(tmp_path, monkeypatch):
    """Files travel to the workers in groups; a group whose worker dies (here: raises) gives
    each of its files an error row, and the other groups are predicted and written."""
    real_read, real_write = main_loop.read_inputs, main_loop.write_many

    def read_or_die(paths, *args):
        if any(p.endswith("img3.png") for p in paths):
            raise RuntimeError("reader process died")
        return real_read(paths, *args)

    def write_or_die(tasks):
        if any(t.image_id == "img5" for t in tasks):
            raise RuntimeError("writer process died")
        return real_write(tasks)

    monkeypatch.setattr(main_loop, "read_inputs", read_or_die)
    monkeypatch.setattr(main_loop, "write_many", write_or_die)
    files = _pngs(tmp_path / "in", 8)
    result = predict_files(
        Predictor(RegionModel(), batch_size=4),
        files,
        tmp_path / "out",
        workers=0,
        progress=False,
        per_task=2,  # as the device path groups them (the CPU path sends files one by one)
    )
    errors = {r["image_id"]: r["error"] for r in result.rows if r["status"] == "error"}
    assert errors == {
        "img2": "RuntimeError: reader process died",
        "img3": "RuntimeError: reader process died",
        "img4": "RuntimeError: writer process died",
        "img5": "RuntimeError: writer process died",
    }
    assert result.predicted == 4 and result.errors == 4
    done = sorted(p.stem for p in (tmp_path / "out" / "findings").iterdir())
    assert done == ["img0", "img1", "img6", "img7"]


def test_an_empty_device_mask_travels_without_its_bits(tmp_path):
    describer = {"operating_point": {}, "encoder": "x", "runtime": "torch", "precision": "fp32"}
    task = workers.WriteTask(
        path="a.png",
        image_id="a",
        out_dir=str(tmp_path),
        outputs=("mask", "findings"),
        meta={},
        shape=(6, 10),
        describer=describer,
        empty=True,
        peak=0.31,
    )
    (result,) = workers.write_many([task])
    assert result.error is None and result.rle == "-1"
    assert result.findings["pneumothorax"] is False and result.findings["probability"] == 0.31
    mask = read_mask(tmp_path / "masks" / "a.png")
    assert mask.shape == (6, 10) and not mask.any()


class _SlowRegionModel(RegionModel):
    def forward(self, x):
        time.sleep(0.3)
        return super().forward(x)


def test_first_results_are_written_while_later_batches_run_on_the_cpu(tmp_path):
    """On the CPU the writers get a batch as soon as the model has run, and the first result is
    timed when its findings were written (the writer's clock), not when this process looked."""
    files = _pngs(tmp_path / "in", 6)
    result = predict_files(
        Predictor(_SlowRegionModel(), batch_size=2),
        files,
        tmp_path / "out",
        outputs=("mask",),
        workers=1,
        progress=False,
    )
    assert result.predicted == 6
    # written after the first of three 0.3 s batches: the two others ran after it
    assert result.steady_seconds >= 0.45  # 0.6 s; handed out a batch late it would be 0.3 s
    assert result.steady_seconds < result.seconds


def test_files_per_task_keeps_a_batch_on_two_workers_at_least():
    assert [main_loop.files_per_task(b) for b in (1, 2, 4, 16, 32, 64)] == [1, 1, 2, 8, 8, 8]


def test_bits_packed_on_the_device_unpack_on_the_host():
    rng = np.random.default_rng(0)
    for shape in ((7, 9), (16, 16), (1, 3)):
        mask = rng.random(shape) > 0.5
        packed = pack_bits(torch.from_numpy(mask)).numpy()
        np.testing.assert_array_equal(packed, np.packbits(mask.ravel()))


def test_a_batch_of_masks_packs_as_each_mask_would():
    rng = np.random.default_rng(1)
    for shapes in (((16, 16), (8, 24), (16, 16)), ((7, 9), (16, 16), (1, 3))):
        masks = [rng.random(shape) > 0.5 for shape in shapes]
        packed = pack_bits_many([torch.from_numpy(m) for m in masks]).numpy()
        expected = np.concatenate([np.packbits(m.ravel()) for m in masks])
        np.testing.assert_array_equal(packed, expected)


def test_cli_reports_speed_and_writes_the_run_record(tmp_path, capsys):
    _pngs(tmp_path / "in", 3)
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64)
    out = tmp_path / "out"
    args = ["predict", str(tmp_path / "in"), "-c", str(ckpt), "-o", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*args, "--outputs", "mask,findings", "--workers", "0", "--decode", "cpu"])
    assert done.value.code in (0, None)
    record = json.loads((out / "run.json").read_text())
    assert record["predicted"] == 3 and record["decoder"] == "cpu" and record["workers"] == 0
    assert record["images_per_s"] > 0 and record["first_result_after_start_s"] > 0
    assert record["outputs"] == ["mask", "findings"] and not (out / "overlays").exists()
    steps = record["startup_after_command_s"]  # on the CPU: no CUDA context to wait for
    assert 0 <= steps["workers_launched_s"] <= steps["torch_imported_s"]
    assert steps["torch_imported_s"] <= steps["predictor_imported_s"]
    assert steps["predictor_imported_s"] <= record["model_ready_after_command_s"]
    assert "cuda_ready_s" not in steps
    assert "images/s end to end" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main([*args, "--outputs", "mask,heatmap"])
    assert refused.value.code == 2


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore::ptxseg.data.dicom.DicomHeaderWarning")
def test_nvjpeg_run_agrees_with_the_cpu_run(siim_real, tmp_path):
    files = _real_dicoms(siim_real)
    cpu = predict_files(Predictor(TinyUnet(256)), files, tmp_path / "cpu", decode="cpu")
    gpu = predict_files(
        Predictor(TinyUnet(256), device="cuda", batch_size=8), files, tmp_path / "gpu"
    )
    assert gpu.decoder == "device" and gpu.predicted == cpu.predicted == len(files)
    a, b = _masks(tmp_path / "cpu"), _masks(tmp_path / "gpu")
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    total = sum(int(a[k].sum() + b[k].sum()) for k in a)
    assert total == 0 or 2 * inter / total >= 0.99
