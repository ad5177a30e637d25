"""Synthetic SIIM-style data: layout, DICOM headers, the stage-1 CSV, masks, determinism, CLI."""

import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ptxseg.cli import main
from ptxseg.data import synthetic
from ptxseg.data.rle import read_annotations, rle_decode
from ptxseg.data.synthetic import dataset_writer
from ptxseg.util.path_guard import MADE_BY, made_by

SIIM_UID = re.compile(r"1\.2\.276\.0\.7230010\.3\.1\.4\.8323329\.\d+\.\d{10}\.\d{6}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out, synthetic.generate_dataset(out, 10, size=64, seed=7, positive_fraction=0.5)


def _dicoms(out: Path) -> list[Path]:
    return sorted((out / synthetic.IMAGES_DIR).glob("*/*/*.dcm"))


def test_layout_and_file_names(dataset):
    out, summary = dataset
    paths = _dicoms(out)
    assert len(paths) == summary["n_images"] == 10
    assert sorted(p.name for p in out.iterdir()) == [
        synthetic.IMAGES_DIR,
        MADE_BY,
        synthetic.CSV_NAME,
    ]
    assert made_by(out)["command"] == "synth" and made_by(out)["holds"] == "data"
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert SIIM_UID.fullmatch(path.stem)
        assert path.stem == ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert path.parent.name == ds.SeriesInstanceUID
        assert path.parent.parent.name == ds.StudyInstanceUID
        assert ds.StudyInstanceUID.startswith("1.2.276.0.7230010.3.1.2.8323329.")
        assert ds.SeriesInstanceUID.startswith("1.2.276.0.7230010.3.1.3.8323329.")
    assert summary["csv"] == str(out / "train-rle.csv")


def test_dicom_header_and_pixels(dataset):
    out, _ = dataset
    views = set()
    for path in _dicoms(out):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == synthetic.SECONDARY_CAPTURE
        assert (ds.Modality, ds.BodyPartExamined, ds.PhotometricInterpretation) == (
            "CR",
            "CHEST",
            "MONOCHROME2",
        )
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel) == (8, 8, 7, 1)
        assert (
            ds.ViewPosition in ("PA", "AP") and ds.SeriesDescription == f"view: {ds.ViewPosition}"
        )
        views.add(ds.ViewPosition)
        assert ds.PatientSex in ("M", "F")
        assert re.fullmatch(r"0\d\dY", ds.PatientAge) and 18 <= int(ds.PatientAge[:3]) <= 89
        assert ds.PatientID and ds.PatientName == ds.PatientID
        spacing = [float(v) for v in ds.PixelSpacing]
        assert spacing[0] == spacing[1]
        assert 0.139 * 16 <= spacing[0] <= 0.194 * 16  # 1024 px spacing scaled to 64 px
        pixels = ds.pixel_array
        assert pixels.shape == (64, 64) and pixels.dtype == np.uint8
        assert pixels.std() > 20  # an image, not a blank
    assert views == {"PA", "AP"}


def test_header_has_every_tag_of_a_real_siim_file(dataset, siim_real):
    out, _ = dataset
    real = pydicom.dcmread(
        siim_real / "torchxrayvision" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    )
    ours = pydicom.dcmread(_dicoms(out)[0])
    assert {e.keyword for e in real} <= {e.keyword for e in ours}
    assert {e.keyword for e in real.file_meta} <= {e.keyword for e in ours.file_meta}


def test_project_reader_reads_it_without_header_warnings(dataset):
    from ptxseg.data.dicom import read_dicom

    out, _ = dataset
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, meta = read_dicom(_dicoms(out)[0])
    assert image.shape == (64, 64) and image.dtype == np.float32
    assert meta["HeaderWarnings"] == [] and meta["Modality"] == "CR"


def test_csv_is_stage1_format_with_one_row_per_region(dataset):
    out, summary = dataset
    lines = (out / "train-rle.csv").read_text().splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    ids, values = zip(*(line.split(",") for line in lines[1:]), strict=True)
    assert all(v.startswith(" ") and not v.startswith("  ") for v in values)
    negatives = [i for i, v in zip(ids, values, strict=True) if v == " -1"]
    assert len(negatives) == summary["n_negative"] == 5
    assert len(lines) - 1 == summary["n_negative"] + summary["n_regions"]
    assert set(ids) == {p.stem for p in _dicoms(out)}
    annotations = read_annotations(out / "train-rle.csv")
    assert sum(len(r) for r in annotations.values()) == summary["n_regions"]


def test_masks_decode_back_to_the_drawn_regions(dataset):
    out, _ = dataset
    annotations = read_annotations(out / "train-rle.csv")
    for spec in synthetic.plan_cases(10, seed=7, positive_fraction=0.5):
        _, regions = synthetic.render_case(spec, 64)
        rles = annotations[spec.image_id]
        assert len(rles) == len(regions) == (len(regions) if spec.positive else 0)
        for rle, region in zip(rles, regions, strict=True):
            assert np.array_equal(rle_decode(rle, 64, 64, "relative"), region)
        if spec.positive:
            assert regions, f"positive case {spec.image_id} has no region"


def test_same_seed_gives_byte_identical_files(tmp_path, dataset):
    out, _ = dataset
    again = synthetic.generate_dataset(tmp_path / "a", 10, size=64, seed=7, positive_fraction=0.5)
    for ours, theirs in zip(_dicoms(out), _dicoms(Path(again["out_dir"])), strict=True):
        assert ours.relative_to(out) == theirs.relative_to(again["out_dir"])
        assert ours.read_bytes() == theirs.read_bytes()
    assert (out / "train-rle.csv").read_bytes() == Path(again["csv"]).read_bytes()
    other = synthetic.generate_dataset(tmp_path / "b", 10, size=64, seed=8, positive_fraction=0.5)
    assert {p.stem for p in _dicoms(Path(other["out_dir"]))}.isdisjoint(
        p.stem for p in _dicoms(out)
    )


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.25, 5), (1.0, 20)])
def test_positive_fraction_is_respected(fraction, expected):
    cases = synthetic.plan_cases(20, seed=1, positive_fraction=fraction)
    assert sum(c.positive for c in cases) == expected


def test_some_patients_have_two_images_and_uids_are_unique():
    cases = synthetic.plan_cases(200, seed=0)
    per_patient = np.unique([c.patient_id for c in cases], return_counts=True)[1]
    assert per_patient.max() == 2 and 3 <= (per_patient == 2).sum() <= 40
    for field in ("image_id", "study_uid", "series_uid"):
        assert len({getattr(c, field) for c in cases}) == 200


def _best_threshold_dice(image: np.ndarray, mask: np.ndarray) -> float:
    """The best Dice any single global threshold (either polarity) reaches against the mask."""
    counts = np.bincount(image.ravel(), minlength=256)
    hits = np.bincount(image[mask], minlength=256)
    below, below_hits = np.cumsum(counts), np.cumsum(hits)  # pixels <= t
    above, above_hits = counts.sum() - below + counts, hits.sum() - below_hits + hits  # >= t
    dice_below = 2 * below_hits / (below + mask.sum())
    dice_above = 2 * above_hits / (above + mask.sum())
    return float(max(dice_below.max(), dice_above.max()))


def test_a_global_threshold_cannot_find_the_pneumothorax():
    cases = [c for c in synthetic.plan_cases(40, seed=3, positive_fraction=0.5) if c.positive][:8]
    scores = []
    for spec in cases:
        image, regions = synthetic.render_case(spec, 128)
        mask = np.logical_or.reduce(regions)
        assert 0.001 < mask.mean() < 0.1  # a crescent, not a lung
        scores.append(_best_threshold_dice(image, mask))
    assert np.mean(scores) < 0.3, scores


def test_conspicuity_darkens_the_air_gap_and_nothing_else():
    spec = next(c for c in synthetic.plan_cases(10, seed=2, positive_fraction=0.5) if c.positive)
    subtle, regions = synthetic.render_case(spec, 256)
    plain, same_regions = synthetic.render_case(spec, 256, conspicuity=1.0)
    clear, clear_regions = synthetic.render_case(spec, 256, conspicuity=3.0)
    assert np.array_equal(subtle, plain)
    mask = np.logical_or.reduce(regions)
    assert all(np.array_equal(a, b) for a, b in zip(regions, clear_regions, strict=True))
    gap = subtle[mask].astype(float).mean() - clear[mask].astype(float).mean()
    assert gap > 5  # clearly darker inside the crescent
    import cv2

    outside = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert np.array_equal(subtle[outside], clear[outside])  # the rest of the film is untouched


def test_pneumothorax_lacks_lung_markings():
    """Deep inside the crescent the fine detail (vessels, parenchyma) is weaker and it is darker
    than the same pixels of the same radiograph drawn without a pneumothorax."""
    import cv2

    def detail(image):
        f = image.astype(np.float32)
        return np.abs(cv2.GaussianBlur(f, (0, 0), 1.0) - cv2.GaussianBlur(f, (0, 0), 2.0))

    tested = 0
    for spec in [c for c in synthetic.plan_cases(20, seed=5, positive_fraction=0.5) if c.positive]:
        with_ptx, regions = synthetic.render_case(spec, 512)
        mask = np.logical_or.reduce(regions).astype(np.uint8)
        inner = cv2.erode(mask, np.ones((9, 9), np.uint8)).astype(bool)
        if inner.sum() < 100:  # too thin a crescent to measure texture inside
            continue
        negative = synthetic.CaseSpec(**{**spec.__dict__, "positive": False})
        without, no_regions = synthetic.render_case(negative, 512)
        assert no_regions == []
        assert detail(with_ptx)[inner].mean() < 0.95 * detail(without)[inner].mean()
        assert with_ptx[inner].mean() < without[inner].mean() - 4
        outside = cv2.dilate(mask, np.ones((15, 15), np.uint8)) == 0
        assert np.array_equal(with_ptx[outside], without[outside])
        tested += 1
        if tested == 2:
            break
    assert tested == 2


@pytest.mark.parametrize("size", [512, 1024])
def test_large_sizes_render(size):
    spec = next(c for c in synthetic.plan_cases(6, seed=2, positive_fraction=0.5) if c.positive)
    image, regions = synthetic.render_case(spec, size)
    assert image.shape == (size, size) and regions and regions[0].shape == (size, size)


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="size must be .* >= 32, got 16"):
        synthetic.generate_dataset(tmp_path, 2, size=16)
    with pytest.raises(ValueError, match="positive_fraction must be between 0 and 1, got 1.5"):
        synthetic.generate_dataset(tmp_path, 2, positive_fraction=1.5)
    with pytest.raises(ValueError, match="n_images must be .* got 0"):
        synthetic.generate_dataset(tmp_path, 0)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_leaves_no_half_written_dataset(tmp_path, monkeypatch):
    calls = []
    real_render = synthetic.render_case

    def failing(spec, size, conspicuity=1.0):
        calls.append(spec)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real_render(spec, size, conspicuity)

    monkeypatch.setattr(dataset_writer, "render_case", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.generate_dataset(tmp_path, 5, size=64)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_a_dataset_marked_as_synth_s(tmp_path):
    synthetic.generate_dataset(tmp_path / "a", 2, size=32)
    (tmp_path / "a" / MADE_BY).unlink()  # as a real dataset in the SIIM layout: no mark
    before = sorted(p.name for p in (tmp_path / "a").rglob("*"))
    with pytest.raises(FileExistsError, match="not written by synth"):
        synthetic.generate_dataset(tmp_path / "a", 3, size=32, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "a").rglob("*")) == before
    synthetic.generate_dataset(tmp_path / "b", 2, size=32)
    synthetic.generate_dataset(tmp_path / "b", 3, size=32, overwrite=True)
    assert len(_dicoms(tmp_path / "b")) == 3 and made_by(tmp_path / "b")["n_images"] == 3


def test_cli_writes_refuses_to_overwrite_and_overwrites(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["synth", str(out), "--n-images", "3", "--size", "64", "--seed", "4"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--positive-fraction", "1"])
    assert done.value.code == 0
    assert len(_dicoms(out)) == 3 and "3 with pneumothorax" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main([*args, "--overwrite", "--positive-fraction", "0"])
    assert done.value.code == 0
    assert len(_dicoms(out)) == 3
    assert all(not rles for rles in read_annotations(out / "train-rle.csv").values())


def test_plot_samples_reads_the_files_back(dataset, tmp_path):
    out, _ = dataset
    png = synthetic.plot_samples(out, tmp_path / "panel.png", n=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drains_are_recorded_per_image_and_leave_everything_else_unchanged(tmp_path):
    from ptxseg.data.synthetic import METADATA_NAME, parse_drains, plan_cases, render_case

    plain = plan_cases(40, seed=3, positive_fraction=0.5)
    drained = plan_cases(40, seed=3, positive_fraction=0.5, drains=(1.0, 0.0))
    assert [c.drain for c in drained] == [c.positive for c in drained]
    assert [c.image_id for c in plain] == [c.image_id for c in drained]
    case = next(c for c in drained if c.drain)
    without = next(c for c in plain if c.image_id == case.image_id)
    image, regions = render_case(case, 64)
    image0, regions0 = render_case(without, 64)
    assert (image != image0).any()  # the tube is drawn
    assert all((a == b).all() for a, b in zip(regions, regions0, strict=True))  # same truth
    summary = synthetic.generate_dataset(
        tmp_path / "d", 12, size=64, seed=1, appearance=synthetic.Appearance(drains=(0.5, 0.5))
    )
    rows = (tmp_path / "d" / METADATA_NAME).read_text().splitlines()
    assert rows[0] == "ImageId,chest_drain" and len(rows) == 13
    assert summary["n_drains"] == sum(r.endswith(",1") for r in rows[1:])
    assert parse_drains("0.7:0.05") == (0.7, 0.05)
    with pytest.raises(ValueError, match="P_POS:P_NEG"):
        parse_drains("0.7")
