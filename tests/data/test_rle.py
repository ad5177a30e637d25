"""RLE: hand-derived golden values, round trips, every CSV quirk and the real Kaggle files."""

import warnings

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ptxseg.data.rle import (
    check_rle,
    detect_encoding,
    read_annotations,
    rle_decode,
    rle_encode,
    rles_to_mask,
)

# A 3 (rows) x 4 (columns) mask. Column-major order walks down each column:
# flat index = column * 3 + row.
#   row 0: 1 0 0 1
#   row 1: 1 0 0 1
#   row 2: 0 0 1 1
GOLDEN = np.array([[1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 1, 1]], dtype=bool)
# foreground flat indices: 0, 1 (column 0), 8 (column 2, row 2), 9, 10, 11 (column 3)
# runs: (0, 2), (8, 4) -> absolute "0 2 8 4"; relative: second start is 8 - 2 = 6
GOLDEN_ABSOLUTE = "0 2 8 4"
GOLDEN_RELATIVE = "0 2 6 4"


def test_golden_decode_both_encodings():
    assert np.array_equal(rle_decode(GOLDEN_RELATIVE, 3, 4), GOLDEN)
    assert np.array_equal(rle_decode(GOLDEN_ABSOLUTE, 3, 4, encoding="absolute"), GOLDEN)


def test_golden_encode_both_encodings():
    assert rle_encode(GOLDEN) == GOLDEN_RELATIVE
    assert rle_encode(GOLDEN, encoding="absolute") == GOLDEN_ABSOLUTE


def test_column_major_is_a_transpose():
    # one run of 3 pixels from index 0 fills the first *column*, not the first row
    mask = rle_decode("0 3", 3, 4)
    assert mask[:, 0].all() and mask.sum() == 3


def test_last_run_ending_on_the_last_pixel_is_kept():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, -1] = True  # the last column ends on the very last pixel
    assert rle_encode(mask) == "12 4"
    assert np.array_equal(rle_decode(rle_encode(mask), 4, 4), mask)
    full = np.ones((2, 2), dtype=bool)
    assert rle_encode(full) == "0 4"


def test_empty_mask_is_minus_one():
    assert rle_encode(np.zeros((5, 5), dtype=np.uint8)) == "-1"
    assert not rle_decode("-1", 5, 5).any()
    assert not rle_decode(" -1", 5, 5).any()


def test_single_run_reads_the_same_either_way():
    assert np.array_equal(rle_decode("5 3", 4, 4), rle_decode("5 3", 4, 4, encoding="absolute"))


def test_values_255_are_foreground():
    assert rle_encode(GOLDEN.astype(np.uint8) * 255) == GOLDEN_RELATIVE


@pytest.mark.parametrize(
    "rle, message",
    [
        ("0 2 6", "odd number"),
        ("0 x", "not an integer"),
        ("0 0", "must be positive"),
        ("3 -2", "must be positive"),
        ("0 13", "reach pixel 13"),
        ("0 2 6 5", "reach pixel"),
    ],
)
def test_malformed_strings_raise(rle, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, 3, 4)


def test_absolute_overlap_raises():
    with pytest.raises(ValueError, match="before the previous run ends"):
        rle_decode("5 4 6 1", 3, 4, encoding="absolute")


def test_unknown_encoding_and_bad_shape():
    with pytest.raises(ValueError, match="relative, absolute"):
        rle_decode("0 1", 2, 2, encoding="zigzag")
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 2)))


@settings(max_examples=60, deadline=None)
@given(
    arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24))),
    st.sampled_from(["relative", "absolute"]),
)
def test_round_trip(mask, encoding):
    h, w = mask.shape
    assert np.array_equal(rle_decode(rle_encode(mask, encoding), h, w, encoding), mask)


def test_regions_are_ored():
    a = np.zeros((6, 6), bool)
    a[0, 0] = True
    b = np.zeros((6, 6), bool)
    b[5, 5] = True
    assert np.array_equal(rles_to_mask([rle_encode(a), rle_encode(b)], 6, 6), a | b)


def test_detect_encoding():
    rng = np.random.default_rng(0)
    masks = [rng.random((32, 32)) > 0.7 for _ in range(5)]
    relative = [rle_encode(m) for m in masks]
    absolute = [rle_encode(m, "absolute") for m in masks]
    assert detect_encoding(relative, 32, 32) == "relative"
    assert detect_encoding(absolute, 32, 32) == "absolute"
    assert detect_encoding(["-1", "3 4"], 32, 32) == "relative"  # no evidence: SIIM's own
    with pytest.raises(ValueError, match="mix encodings"):
        detect_encoding(relative + absolute, 32, 32)


# ------------------------------------------------------------------- CSV quirks


def write(tmp_path, name, text, bom=False):
    path = tmp_path / name
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def test_stage1_header_with_leading_spaces(tmp_path):
    path = write(tmp_path, "s1.csv", "ImageId, EncodedPixels\na, -1\nb, 0 2 6 4\nb, 1 1\n")
    assert read_annotations(path) == {"a": [], "b": ["0 2 6 4", "1 1"]}


def test_bom_without_header(tmp_path):
    path = write(tmp_path, "sample.csv", "a,-1\r\nb, 0 2\r\n", bom=True)
    assert read_annotations(path) == {"a": [], "b": ["0 2"]}


def test_stage2_header_and_repeated_minus_one(tmp_path):
    path = write(tmp_path, "s2.csv", "ImageId,EncodedPixels\nID_1,-1\nID_1,-1\nID_2,3 4\n")
    assert read_annotations(path) == {"ID_1": [], "ID_2": ["3 4"]}


def test_conflicting_rows_leave_the_image_out_with_their_lines(tmp_path):
    """An image listed both as -1 and with a region used to become positive."""
    text = "ImageId,EncodedPixels\na,-1\nb,-1\na,0 2\nc,3 4\na,5 1\n"
    path = write(tmp_path, "c.csv", text)
    table = read_annotations(path)
    assert table == {"b": [], "c": ["3 4"]}
    assert table.conflicts == {"a": [2, 4, 6]}
    assert table.where("c") == f"{path}, line 5, ImageId c"
    [row] = table.conflict_rows()
    assert row["image_id"] == "a" and row["lines"] == [2, 4, 6] and row["csv"] == str(path)
    assert f"{path}, lines 2, 4, 6, ImageId a: listed both as -1" in row["reason"]
    assert "skipped" in row["reason"]
    with pytest.raises(ValueError, match="1 image.* listed both as -1 .*lines 2, 4, 6"):
        read_annotations(path, strict=True)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text CSV"),
        (b"a,b,c\n1,2,3\n", "expected 2 columns"),
        (b"ImageId,EncodedPixels\na,hello world\n", "neither -1 nor"),
        (b"ImageId,EncodedPixels\n", "no annotation rows"),
    ],
)
def test_not_an_annotation_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_annotations(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_annotations(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "row, message",
    [
        ("1.2.3, 5 2 7", "odd number of values"),
        ("1.2.3, 5 0", "run 0 has length 0"),
        ("1.2.3, 99999999999999999999999 1", "larger than any image"),
    ],
)
def test_bad_rle_rows_name_the_line_and_image_id_when_the_csv_is_read(tmp_path, row, message):
    path = tmp_path / "train-rle.csv"
    path.write_text(f"ImageId, EncodedPixels\n1.2.1, -1\n1.2.2, 0 3\n{row}\n")
    with pytest.raises(ValueError, match=rf"train-rle.csv, line 4, ImageId 1.2.3: .*{message}"):
        read_annotations(path)


def test_annotations_remember_where_each_string_came_from(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("ImageId,EncodedPixels\na,-1\nb,0 3\nc,1 1\nb,10 2\n")
    table = read_annotations(path)
    assert table == {"a": [], "b": ["0 3", "10 2"], "c": ["1 1"]}
    assert table.where("b", 1) == f"{path}, line 5, ImageId b"
    check_rle(table["b"][1], 4, 4)  # ends at pixel 12 of 16
    with pytest.raises(ValueError, match="reach pixel 12 but a 3x3 image has 9 pixels"):
        check_rle(table["b"][1], 3, 3)


# --------------------------------------------------------- fuzzing: only ValueErrors, never hangs

RLE_TOKENS = st.one_of(
    st.integers(0, 70).map(str),
    st.sampled_from(["-1", "-5", "0", "1e3", "x", "99999999999999999999", "", "  ", "\t"]),
)
CSV_CELLS = st.one_of(
    st.lists(RLE_TOKENS, max_size=8).map(" ".join),
    st.text(max_size=12),
    st.sampled_from(["-1", " -1", "", '"', '"0 1"', "0 1,2", "\x00"]),
)
CSV_ROWS = st.lists(
    st.tuples(st.sampled_from(["a", "b", " c", "", "ImageId", "\ufeffa"]), CSV_CELLS), max_size=6
)


def _csv_text(rows, header: str, sep: str) -> str:
    return header + "".join(f"{image_id}{sep}{rle}\n" for image_id, rle in rows)


def _check_failure(err: BaseException, path) -> None:
    """A failure is a ValueError (or FileNotFoundError) whose message says where and what."""
    assert isinstance(err, ValueError), f"{type(err).__name__}: {err}"
    text = str(err)
    assert len(text) > 20 and "Traceback" not in text, text


@given(
    rows=CSV_ROWS,
    header=st.sampled_from(["", "ImageId,EncodedPixels\n", "ImageId, EncodedPixels\n", "\ufeff"]),
    sep=st.sampled_from([",", ", ", ";", ",,"]),
)
def test_fuzz_csv_reader_raises_only_clear_value_errors(tmp_path_factory, rows, header, sep):
    path = tmp_path_factory.mktemp("csv") / "fuzz.csv"
    path.write_text(_csv_text(rows, header, sep), encoding="utf-8")
    try:
        table = read_annotations(path)
    except ValueError as err:
        _check_failure(err, path)
        assert str(path) in str(err)
        return
    for image_id, rles in table.items():
        for index, rle in enumerate(rles):
            assert table.where(image_id, index).startswith(f"{path}, line ")
            try:
                mask = rle_decode(rle, 8, 8)
            except ValueError as err:
                _check_failure(err, path)
                with pytest.raises(ValueError):
                    check_rle(rle, 8, 8)
                continue
            check_rle(rle, 8, 8)
            assert mask.shape == (8, 8)


@given(data=st.binary(max_size=200))
def test_fuzz_annotation_csv_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("csv") / "bytes.csv"
    path.write_bytes(data)
    try:
        read_annotations(path)
    except ValueError as err:
        _check_failure(err, path)


@given(
    rle=st.lists(RLE_TOKENS, max_size=10).map(" ".join),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    encoding=st.sampled_from(["relative", "absolute"]),
)
def test_fuzz_rle_decode_raises_only_value_errors(rle, shape, encoding):
    try:
        mask = rle_decode(rle, *shape, encoding=encoding)
    except ValueError as err:
        _check_failure(err, None)
        return
    assert mask.shape == shape and mask.dtype == bool
    again = rle_decode(rle_encode(mask, encoding), *shape, encoding=encoding)
    assert again.tolist() == mask.tolist()


# ------------------------------------------------------------------- real files


def test_kaggle_sample_masks_match_their_jpegs(siim_real):
    folder = siim_real / "kaggle-sample-zdaiot"
    table = read_annotations(folder / "train-rle-sample.csv")
    assert len(table) == 10 and sum(bool(v) for v in table.values()) == 5
    for image_id, rles in table.items():
        reference = folder / "mask" / f"{image_id}.jpg"
        if not rles or not reference.exists():
            continue
        mask = rles_to_mask(rles, 1024, 1024)
        expected = cv2.imread(str(reference), cv2.IMREAD_GRAYSCALE) > 127
        assert np.array_equal(mask, expected), image_id
        # and the encoder reproduces the competition's strings
        if len(rles) == 1:
            assert rle_encode(mask) == rles[0]


def test_stage1_cut_reads_and_round_trips(siim_real):
    table = read_annotations(siim_real / "srivatsav09-fin" / "fin.csv")
    assert len(table) == 1500 and sum(bool(v) for v in table.values()) == 500
    rles = [r for v in table.values() for r in v]
    assert detect_encoding(rles) == "relative"
    for rle in rles[:50]:
        assert rle_encode(rle_decode(rle, 1024, 1024)) == rle


def test_stage2_sample_submission(siim_real):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = read_annotations(
            siim_real / "vishakhnair16-stage2-test" / "stage_2_sample_submission.csv"
        )
    assert len(table) == 3205 and not any(table.values())
