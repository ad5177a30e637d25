"""prepare end to end on small DICOM folders: manifest, split reuse, cache, unmatched files."""

import json
import os

import pytest
from dicom_files import chest_like, write_dicom
from siim_folders import make_siim_folder

from ptxseg.cli import main
from ptxseg.data.dataset import SegmentationDataset, read_manifest, read_splits
from ptxseg.data.prepare import make_split, prepare


@pytest.fixture()
def siim_folder(tmp_path):
    return make_siim_folder(tmp_path / "siim")


def test_prepare_writes_manifest_split_and_cache(siim_folder, tmp_path):
    images, csv_path, masks = siim_folder
    work = tmp_path / "work"
    result = prepare(images, csv_path, work, size=32, val=0.2, test=0.2)
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
    prepare(images, csv_path, work, size=32)
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    again = prepare(images, csv_path, work, size=32)
    assert not again.cache_written
    assert stamps == {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="differs from this run"):
        prepare(images, csv_path, work, size=32, seed=1)
    # a second size reuses the manifest and the split
    prepare(images, csv_path, work, size=64)
    assert len(SegmentationDataset(work, "train", 64)) == len(
        SegmentationDataset(work, "train", 32)
    )


def test_split_is_stratified_and_reproducible():
    from ptxseg.data.prepare import Record

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
    prepare(images, csv_path, tmp_path / "w", size=32)
    problems = json.loads((tmp_path / "w" / "unmatched.json").read_text())
    assert [os.path.basename(p) for p in problems["images_without_annotations"]] == ["stray.dcm"]
    assert [os.path.basename(p) for p in problems["unreadable"]] == ["broken.dcm"]
    assert problems["annotations_without_images"] == ["9.9.9.9"]


def test_nothing_matching_is_a_clear_error(siim_folder, tmp_path):
    images, _, _ = siim_folder
    other = tmp_path / "other.csv"
    other.write_text("ImageId,EncodedPixels\nx,-1\n")
    with pytest.raises(ValueError, match="none of the 20 DICOMs"):
        prepare(images, other, tmp_path / "w", size=32)
    with pytest.raises(ValueError, match="multiple of 32"):
        prepare(images, other, tmp_path / "w", size=50)


def test_header_uid_fallback(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    write_dicom(folder / "renamed.dcm", chest_like(64), SOPInstanceUID="1.2.840.99")
    (tmp_path / "a.csv").write_text("ImageId,EncodedPixels\n1.2.840.99,-1\n")
    prepare(folder, tmp_path / "a.csv", tmp_path / "w", size=32, val=0, test=0)
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
