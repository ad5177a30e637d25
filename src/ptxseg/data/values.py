"""Invalid header values in a copy of a source image: repaired where the repair is certain,
otherwise sent empty (where a module needs the attribute) or left out.

Derived objects (SEG, SR) copy the patient and study attributes of their source image, and
`repair-uids` copies every attribute. A value that breaks its value representation (VR) would make
the copy invalid too (dciodvfy: "Value invalid for this VR"), so each one is handled by a rule
that a reader of the notes can check:

- **certain repairs** keep the meaning exactly:
  - a decimal string (DS) longer than 16 characters is written with 16 (`0.14300000000000002`
    becomes `0.14300000000000`: the same number to far below any measurement's precision);
  - an age (AS) that says its unit but lacks leading zeros is zero-padded (`62Y` -> `062Y`);
  - a code string (CS) in lower case is upper-cased (`f` -> `F`);
- **anything else is not guessed**: an age without a unit (`63`: years? months?), a date that is
  not a date, a name too long for its VR. The attribute is sent empty where the modules that ptxseg
  copies need it present (type 2: `TYPE2`), and left out otherwise.

Each change is one note (`repair_values` returns them); callers list the notes with the image's
header warnings. UIDs are handled separately (`ptxseg.data.uids`): they are replaced, not emptied.
"""

from __future__ import annotations

import re
from typing import Any

# Type 2 attributes (present, possibly empty) of the modules that a repaired copy, a SEG or an SR
# carries from its source: Patient, General Study, General Series, General Image, General Equipment.
TYPE2 = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "SeriesNumber",
        "InstanceNumber",
        "PatientOrientation",
        "Laterality",
        "ContentDate",
        "ContentTime",
        "Manufacturer",
    }
)
# Values the validator leaves to other code: UIDs (`uids.repair_source`), binary and numeric
# data, sequences (walked into), and the file meta group.
SKIPPED_VRS = frozenset({"UI", "SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN", "AT"})
SHOWN_CHARACTERS = 40
# What a value of each VR must look like, for the notes (pydicom's own messages for the others).
EXPECTED = {
    "AS": "three digits and a unit D, W, M or Y, e.g. 063Y",
    "CS": "at most 16 upper-case letters, digits, spaces or _",
    "DA": "a date YYYYMMDD",
    "DS": "a decimal number in at most 16 characters",
    "DT": "a date-time YYYYMMDDHHMMSS.FFFFFF&ZZXX",
    "IS": "an integer in at most 12 characters",
    "TM": "a time HHMMSS.FFFFFF",
}
AGE_WITH_UNIT = re.compile(r"\s*(\d{1,3})\s*([DWMY])\s*")


def _values(element) -> list[Any]:
    value = element.value
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _text(value: Any) -> str:
    """The value as it is stored (a DS keeps its original string)."""
    return str(value)


def invalid_reason(vr: str, value: Any) -> str | None:
    """Why one value breaks its VR (pydicom's rules), or None when it is valid."""
    from pydicom.valuerep import VALIDATORS

    validator = VALIDATORS.get(vr)
    if validator is None:
        return None
    checked = _text(value) if vr in ("DS", "IS") else value
    ok, message = validator(vr, checked)
    if ok:
        return None
    return f"expected {EXPECTED[vr]}" if vr in EXPECTED else message.strip() or f"not a {vr}"


def certain_repair(vr: str, value: Any) -> str | None:
    """The repaired value when the repair keeps the meaning exactly, else None."""
    from pydicom.valuerep import format_number_as_ds

    text = _text(value)
    if vr == "DS":
        try:
            number = float(text)
        except ValueError:
            return None
        repaired = format_number_as_ds(number)
        return repaired if invalid_reason("DS", repaired) is None else None
    if vr == "AS":
        match = AGE_WITH_UNIT.fullmatch(text)
        return f"{int(match.group(1)):03d}{match.group(2)}" if match else None
    if vr == "CS" and text != text.upper():
        return text.upper() if invalid_reason("CS", text.upper()) is None else None
    return None


def _shown(value: Any) -> str:
    text = _text(value)
    return repr(text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "...")


def _repair_element(ds, element, path: str) -> str | None:
    """Repair or drop one element in place; the note, or None when it was valid."""
    values = _values(element)
    problems = [(v, invalid_reason(element.VR, v)) for v in values]
    bad = [(v, why) for v, why in problems if why]
    if not bad:
        return None
    name = f"{path}{element.keyword or element.tag}"
    repaired = [certain_repair(element.VR, v) if why else _text(v) for v, why in problems]
    shown = ", ".join(_shown(v) for v, _ in bad)
    if all(r is not None for r in repaired):
        element.value = repaired if len(repaired) > 1 else repaired[0]
        fixed = ", ".join(repr(r) for (v, why), r in zip(problems, repaired, strict=True) if why)
        return f"{name} {shown} is not a valid {element.VR}; written as {fixed} (same meaning)"
    reason = bad[0][1]
    if not path and element.keyword in TYPE2:
        element.value = ""
        return f"{name} {shown} is not a valid {element.VR} ({reason}); sent empty"
    del ds[element.tag]
    return f"{name} {shown} is not a valid {element.VR} ({reason}); left out"


def repair_values(ds, path: str = "") -> list[str]:
    """Make every value in the dataset valid for its VR, in place; one note per change.

    Sequences are walked into; UIDs, binary data and the file meta group are left to others.
    """
    import warnings

    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the very values checked here
        for element in list(ds):
            if element.tag.group == 0x0002 or element.tag.is_private:
                continue
            if element.VR == "SQ":
                for index, item in enumerate(element.value or []):
                    notes += repair_values(item, f"{path}{element.keyword}[{index}].")
                continue
            if element.VR in SKIPPED_VRS:
                continue
            note = _repair_element(ds, element, path)
            if note:
                notes.append(note)
    return notes
