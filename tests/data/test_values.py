"""Invalid header values: certain repairs keep the meaning, the rest is sent empty or left out."""

import pydicom
import pytest
from pydicom.dataset import Dataset

from ptxseg.data.values import certain_repair, invalid_reason, repair_values


def _header(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        ("DS", "0.14300000000000002", "0.14300000000000"),  # 19 characters: SIIM's PixelSpacing
        ("AS", "62Y", "062Y"),  # the unit is given: zero-padding keeps the meaning
        ("AS", "5 M", "005M"),
        ("CS", "f", "F"),
        ("AS", "63", None),  # years? months? not certain
        ("AS", "152", None),
        ("DA", "1901-01-01x", None),
        ("DS", "abc", None),
    ],
)
def test_only_certain_repairs_change_a_value(vr, value, expected):
    assert invalid_reason(vr, value) is not None
    assert certain_repair(vr, value) == expected


def test_valid_values_are_left_alone():
    ds = _header(PatientAge="063Y", PatientSex="F", StudyDate="19010101", PixelSpacing=["0.1"] * 2)
    before = ds.to_json_dict()
    assert repair_values(ds) == []
    assert ds.to_json_dict() == before


def test_type2_attributes_are_sent_empty_and_others_left_out():
    ds = _header(PatientAge="63", StudyDate="19x", PatientSex="female!", BodyPartExamined="chest!")
    notes = repair_values(ds)
    assert "PatientAge" not in ds and "BodyPartExamined" not in ds  # type 3: left out
    assert ds.StudyDate == "" and ds.PatientSex == ""  # type 2 in the Study and Patient modules
    text = " ".join(notes)
    assert "PatientAge '63' is not a valid AS (expected three digits and a unit" in text
    assert "left out" in text and "sent empty" in text and len(notes) == 4


def test_a_long_decimal_is_rewritten_with_the_same_value():
    ds = _header(PixelSpacing=["0.14300000000000002", "0.14300000000000002"])
    [note] = repair_values(ds)
    assert [str(v) for v in ds.PixelSpacing] == ["0.14300000000000"] * 2
    assert float(ds.PixelSpacing[0]) == pytest.approx(0.143, abs=1e-15)
    assert "written as" in note and "same meaning" in note


def test_sequences_are_walked_into():
    item = _header(PatientAge="7")
    ds = _header(OtherPatientIDsSequence=[item])
    [note] = repair_values(ds)
    assert note.startswith("OtherPatientIDsSequence[0].PatientAge '7'")
    assert "PatientAge" not in ds.OtherPatientIDsSequence[0]


def test_real_stage2_ages_are_left_out_and_spacings_rewritten(siim_real):
    seen = []
    for path in sorted((siim_real / "vishakhnair16-stage2-test").glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        notes = repair_values(ds)
        seen += notes
        assert "PatientAge" not in ds  # the files say "64", "2 ", "152 ": no unit
        assert all(invalid_reason("DS", v) is None for v in ds.PixelSpacing)
    assert sum("PatientAge" in n for n in seen) == 10
    assert sum("PixelSpacing" in n and "same meaning" in n for n in seen) == 4
