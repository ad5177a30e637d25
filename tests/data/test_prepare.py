"""prepare end to end on small DICOM folders: manifest, split reuse, cache, unmatched files."""

import json
import os

import numpy as np
import pytest
from dicom_files import chest_like, replace_bytes, write_dicom
from siim_folders import make_siim_folder

from ptxseg.cli import main
from ptxseg.data.dataset import SegmentationDataset, read_manifest, read_splits
from ptxseg.data.split_plan import make_split
from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder


@pytest.fixture()
def siim_folder(tmp_path):
    return make_siim_folder(tmp_path / "siim")


def test_prepare_writes_manifest_split_and_cache(siim_folder, tmp_path):
    images, csv_path, masks = siim_folder
    work = tmp_path / "work"
    result = prepare_work_folder(images, csv_path, work, PrepareOptions(size=32, val=0.2, test=0.2))
    rows = read_manifest(work)
    assert len(rows) == 20 and sum(r["has_pneumothorax"] == "1" for r in rows) == 7
    by_id = {r["image_id"]: r for r in rows}
    assert int(by_id["1.2.3.0"]["mask_area"]) == masks["1.2.3.0"].sum()
    assert by_id["1.2.3.0"]["pixel_spacing"] == "0.168"
    assert sum(c["images"] for c in result.counts.values()) == 20
    # every image lands in exactly one split, and patients are not split across them
    splits = read_splits(work)
    assert sorted(i for s in ("train", "val", "test") for i in splits[s]) == sorted(by_id)
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values())
    # the cache holds every split with aligned masks
    train = SegmentationDataset(work, "train", 32)
    item = train[0]
    assert item["image"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0, 1}
    assert train.has_pneumothorax.sum() == sum(
        by_id[i]["has_pneumothorax"] == "1" for i in train.image_ids
    )
    for i, image_id in enumerate(train.image_ids):
        assert (train[i]["mask"].sum().item() > 0) == masks[image_id].any()


def test_rerun_changes_nothing_and_reuses_the_split(siim_folder, tmp_path):
    images, csv_path, _ = siim_folder
    work = tmp_path / "work"
    prepare_work_folder(images, csv_path, work, PrepareOptions(size=32))
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    again = prepare_work_folder(images, csv_path, work, PrepareOptions(size=32))
    assert not again.cache_written
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="differs from this run"):
        prepare_work_folder(images, csv_path, work, PrepareOptions(size=32, seed=1))
    # a second size reuses the manifest and the split
    prepare_work_folder(images, csv_path, work, PrepareOptions(size=64))
    assert len(SegmentationDataset(work, "train", 64)) == len(
        SegmentationDataset(work, "train", 32)
    )


def test_split_is_stratified_and_reproducible():
    from ptxseg.data.discovery import Record

    records = [
        Record(f"id{i}", None, ["1 1"] if i < 30 else [], 8, 8, None, "", "", "", "")
        for i in range(100)
    ]
    a, b = make_split(records, 3, 0.1, 0.2), make_split(records, 3, 0.1, 0.2)
    assert a == b and a != make_split(records, 4, 0.1, 0.2)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (70, 10, 20)
    positives = {f"id{i}" for i in range(30)}
    assert (
        sum(i in positives for i in a["test"]) == 6 and sum(i in positives for i in a["val"]) == 3
    )


def test_unmatched_files_are_listed_not_fatal(siim_folder, tmp_path):
    images, csv_path, _ = siim_folder
    write_dicom(images / "stray.dcm", chest_like(64))
    (images / "broken.dcm").write_bytes(b"not a dicom")
    with csv_path.open("a") as f:
        f.write("9.9.9.9, -1\n")
    prepare_work_folder(images, csv_path, tmp_path / "w", PrepareOptions(size=32))
    problems = json.loads((tmp_path / "w" / "unmatched.json").read_text())
    assert [os.path.basename(p) for p in problems["images_without_annotations"]] == ["stray.dcm"]
    assert [os.path.basename(p["file"]) for p in problems["skipped"]] == ["broken.dcm"]
    assert "not a readable DICOM file" in problems["skipped"][0]["reason"]
    assert problems["annotations_without_images"] == ["9.9.9.9"]


def test_conflicting_annotation_rows_are_listed_and_their_image_skipped(siim_folder, tmp_path):
    """1.2.3.1 is a negative (line 3); a region row for it is added on line 22."""
    images, csv_path, _ = siim_folder
    with csv_path.open("a") as f:
        f.write("1.2.3.1, 100 20\n")  # line 22
    result = prepare_work_folder(images, csv_path, tmp_path / "w", PrepareOptions(size=32))
    problems = json.loads((tmp_path / "w" / "unmatched.json").read_text())
    [conflict] = problems["conflicting_annotations"]
    assert conflict["image_id"] == "1.2.3.1" and conflict["lines"] == [3, 22]
    [skipped] = problems["skipped"]
    assert os.path.basename(skipped["file"]) == "1.2.3.1.dcm"
    assert "lines 3, 22, ImageId 1.2.3.1: listed both as -1" in skipped["reason"]
    assert "1.2.3.1" not in {r["image_id"] for r in read_manifest(tmp_path / "w")}
    assert "1.2.3.1" not in problems["annotations_without_images"]
    assert sum(c["images"] for c in result.counts.values()) == 19
    assert sum(c["positive"] for c in result.counts.values()) == 7


def test_an_empty_or_tiny_dicom_is_skipped_with_its_reason(siim_folder, tmp_path):
    images, csv_path, _ = siim_folder
    (images / "empty.dcm").write_bytes(b"")
    write_dicom(images / "tiny.dcm", np.array([[3, 4]], np.uint8))
    with csv_path.open("a") as f:
        f.write("empty, -1\ntiny, -1\n")
    prepare_work_folder(images, csv_path, tmp_path / "w", PrepareOptions(size=32))
    problems = json.loads((tmp_path / "w" / "unmatched.json").read_text())
    reasons = {os.path.basename(p["file"]): p["reason"] for p in problems["skipped"]}
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert "1x2 pixels, smaller than the least that is read (32x32)" in reasons["tiny.dcm"]


def test_nothing_matching_is_a_clear_error(siim_folder, tmp_path):
    images, _, _ = siim_folder
    other = tmp_path / "other.csv"
    other.write_text("ImageId,EncodedPixels\nx,-1\n")
    with pytest.raises(ValueError, match="none of the 20 DICOMs"):
        prepare_work_folder(images, other, tmp_path / "w", PrepareOptions(size=32))
    with pytest.raises(ValueError, match="multiple of 32"):
        prepare_work_folder(images, other, tmp_path / "w", PrepareOptions(size=50))


def test_header_uid_fallback(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    write_dicom(folder / "renamed.dcm", chest_like(64), SOPInstanceUID="1.2.840.99")
    (tmp_path / "a.csv").write_text("ImageId,EncodedPixels\n1.2.840.99,-1\n")
    prepare_work_folder(
        folder, tmp_path / "a.csv", tmp_path / "w", PrepareOptions(size=32, val=0, test=0)
    )
    assert read_manifest(tmp_path / "w")[0]["image_id"] == "1.2.840.99"


def test_cli_prepare_with_two_workers(siim_folder, tmp_path, capsys):
    images, csv_path, _ = siim_folder
    work = tmp_path / "w"
    args = ["prepare", "--images", str(images), "--annotations", str(csv_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(work), "--size", "32", "--workers", "2"])
    assert exit_info.value.code == 0
    assert "positive share" in capsys.readouterr().out
    assert len(SegmentationDataset(work, "val", 32)) > 0
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "prepare",
                "--images",
                str(tmp_path / "nope"),
                "--annotations",
                str(csv_path),
                "--out",
                str(work),
            ]
        )
    assert exit_info.value.code == 2


def _bad_files(images, csv_path):
    """Files that each used to stop prepare, all listed in the CSV, and a mask past its end."""
    good = write_dicom(images / "template.dcm", chest_like(64), jpeg=True).read_bytes()
    (images / "template.dcm").unlink()
    (images / "trunc.dcm").write_bytes(good[: len(good) * 2 // 3])
    write_dicom(images / "nopix.dcm", chest_like(64), pixel_data=False)
    write_dicom(images / "small.dcm", chest_like(32), Rows=64)  # 32 rows of pixels, header: 64
    write_dicom(images / "spacing.dcm", chest_like(64), jpeg=True)
    replace_bytes(images / "spacing.dcm", b"0.168\\0.168", b"abc        ")
    write_dicom(images / "pastend.dcm", chest_like(64), jpeg=True)
    with csv_path.open("a") as f:
        for stem in ("trunc", "nopix", "small", "spacing"):
            f.write(f"{stem}, -1\n")
        f.write("pastend, 4000 200\n")  # line 26 of the CSV; 64x64 = 4096 pixels


def test_bad_files_are_skipped_with_their_reason_and_the_rest_is_prepared(siim_folder, tmp_path):
    images, csv_path, _ = siim_folder
    _bad_files(images, csv_path)
    work = tmp_path / "w"
    result = prepare_work_folder(
        images, csv_path, work, PrepareOptions(size=32, val=0.2, test=0.2, workers=2)
    )
    problems = json.loads((work / "unmatched.json").read_text())
    reasons = {os.path.basename(p["file"]): p["reason"] for p in problems["skipped"]}
    assert sorted(reasons) == ["nopix.dcm", "pastend.dcm", "small.dcm", "trunc.dcm"]
    assert "no pixel data" in reasons["nopix.dcm"] and "truncated" in reasons["trunc.dcm"]
    assert (
        "train-rle.csv, line 26, ImageId pastend: RLE runs reach pixel 4200"
        in reasons["pastend.dcm"]
    )
    assert "small.dcm" not in reasons["small.dcm"] and reasons["small.dcm"]
    # a malformed PixelSpacing is a warning: the image is used, its spacing left empty
    by_id = {r["image_id"]: r for r in read_manifest(work)}
    assert by_id["spacing"]["pixel_spacing"] == "" and len(by_id) == 21
    assert any(
        "PixelSpacing 'abc'" in w for w in problems["header_warnings"][str(images / "spacing.dcm")]
    )
    splits = read_splits(work)
    assert sorted(i for s in ("train", "val", "test") for i in splits[s]) == sorted(by_id)
    assert sum(c["images"] for c in result.counts.values()) == 21
    for split in ("train", "val", "test"):
        data = SegmentationDataset(work, split, 32)
        assert len(data) == len(splits[split]) and sorted(data.image_ids) == splits[split]
    assert not list(work.rglob("*.tmp"))
    # a rerun finds everything up to date, and the skipped files stay out of the same split
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    again = prepare_work_folder(images, csv_path, work, PrepareOptions(size=32, val=0.2, test=0.2))
    assert not again.cache_written and again.problems == result.problems
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}


def test_a_failed_prepare_leaves_nothing_behind(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_dicom(images / "nopix.dcm", chest_like(64), pixel_data=False)
    write_dicom(images / "small.dcm", chest_like(32), Rows=64)
    (tmp_path / "a.csv").write_text("ImageId,EncodedPixels\nnopix,-1\nsmall,-1\n")
    work = tmp_path / "w"
    with pytest.raises(ValueError, match="none of the 2 images could be read"):
        prepare_work_folder(images, tmp_path / "a.csv", work, PrepareOptions(size=32))
    assert [p.name for p in work.rglob("*") if p.is_file()] == []


def test_out_that_is_a_file_is_a_one_line_usage_error(siim_folder, tmp_path, capsys):
    images, csv_path, _ = siim_folder
    (tmp_path / "taken").write_text("x")
    args = ["prepare", "--images", str(images), "--annotations", str(csv_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "taken")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --out" in err and "is a file" in err and len(err.strip().splitlines()) == 1


def test_cli_exit_code_1_when_files_were_skipped(siim_folder, tmp_path, capsys):
    images, csv_path, _ = siim_folder
    write_dicom(images / "nopix.dcm", chest_like(64), pixel_data=False)
    with csv_path.open("a") as f:
        f.write("nopix, -1\n")
    args = ["prepare", "--images", str(images), "--annotations", str(csv_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "w"), "--size", "32"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "1 skipped" in out and "nopix.dcm" in out


def test_cache_records_its_decoder_and_device_decoding_without_a_gpu(siim_folder, tmp_path):
    """auto takes nvJPEG only with a GPU; device without one is the batched path on the CPU,
    which writes the CPU workers' bytes."""
    import torch

    images, csv_path, _ = siim_folder
    caches = {}
    for decode in ("auto", "device", "cpu"):
        work = tmp_path / decode
        options = PrepareOptions(size=32, workers=1, decode=decode)
        prepare_work_folder(images, csv_path, work, options)
        info = json.loads((work / "cache" / "32" / "info.json").read_text())
        on_gpu = torch.cuda.is_available() and decode != "cpu"
        assert info["decoder"] == ("nvjpeg" if on_gpu else "opencv")
        caches[decode] = np.load(work / "cache" / "32" / "train-images.npy")
    if not torch.cuda.is_available():
        np.testing.assert_array_equal(caches["device"], caches["cpu"])
    with pytest.raises(ValueError, match="--decode 'gpu': expected one of auto, device, cpu"):
        prepare_work_folder(images, csv_path, tmp_path / "w2", PrepareOptions(decode="gpu"))
    assert not (tmp_path / "w2").exists()


def test_cli_decode_and_the_deprecated_device_alias(siim_folder, tmp_path, capsys):
    images, csv_path, _ = siim_folder
    args = ["prepare", "--images", str(images), "--annotations", str(csv_path), "--size", "32"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "a"), "--decode", "device", "--workers", "1"])
    assert exit_info.value.code == 0
    assert "deprecated" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "b"), "--device", "cpu", "--workers", "1"])
    assert exit_info.value.code == 0
    err = capsys.readouterr().err
    assert "DeprecationWarning: --device is deprecated for prepare" in err
    assert "use --decode (cpu)" in err
    assert (tmp_path / "b" / "cache" / "32" / "info.json").is_file()
    for name in ("images", "masks"):
        a = np.load(tmp_path / "a" / "cache" / "32" / f"train-{name}.npy")
        b = np.load(tmp_path / "b" / "cache" / "32" / f"train-{name}.npy")
        if not __import__("torch").cuda.is_available():
            np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit) as exit_info:  # both: which one is meant is unclear
        main([*args, "--out", str(tmp_path / "c"), "--device", "cuda", "--decode", "auto"])
    assert exit_info.value.code == 2
    assert "give --decode only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "c"), "--decode", "gpu"])
    assert exit_info.value.code == 2
    assert "--decode 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_frames_decoded_in_batches_give_the_workers_bytes(siim_folder):
    """The GPU path of the cache (frames from the workers, decoded and shrunk in a batch) run
    on the CPU: the same images as decoding in the workers."""
    from ptxseg.data.cache_builder import decode_loaded, load_for_cache

    images, _, masks = siim_folder
    paths = sorted(images.rglob("*.dcm"))[:4]
    jobs = [(str(p), [], 64, 64, 32, "relative") for p in paths]
    framed = [load_for_cache((*job, True)) for job in jobs]
    plain = [load_for_cache((*job, False)) for job in jobs]
    assert all(f.frame is not None and f.image is None for f in framed)
    decode_loaded(framed, 32, "cpu")
    for f, p in zip(framed, plain, strict=True):
        assert f.frame is None
        np.testing.assert_array_equal(f.image, p.image)


def test_chunks_come_back_whole_and_in_order_with_two_in_flight(tmp_path):
    """The workers get the next chunk before this process takes the last one's results."""
    from concurrent.futures import ProcessPoolExecutor

    from ptxseg.data.cache_builder import CHUNK, _chunks_loaded

    jobs = []
    for i in range(2 * CHUNK + 5):  # every 7th file a readable DICOM, the others not
        path = tmp_path / f"f{i:03d}.dcm"
        if i % 7:
            path.write_text("not a DICOM")
        else:
            write_dicom(path, chest_like(32, seed=i))
        jobs.append((str(path), [], 32, 32, 8, "relative", False))
    with ProcessPoolExecutor(2) as pool:
        chunks = list(_chunks_loaded(jobs, pool))
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, 5]
    loaded = [one for chunk in chunks for one in chunk]
    read = [i for i, one in enumerate(loaded) if not isinstance(one, str)]
    assert read == list(range(0, len(jobs), 7))
    assert all(loaded[i].path == jobs[i][0] for i in read)
    assert [one if isinstance(one, str) else one.path for one in loaded] == [
        one if isinstance(one, str) else one.path
        for chunk in _chunks_loaded(jobs, None)
        for one in chunk
    ]
