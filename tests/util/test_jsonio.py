"""The JSON helper: JSON-ready values, tolerant or strict reads, atomic writes."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ptxseg.util.jsonio import jsonable, read_json, write_json


@dataclass
class _Point:
    name: str
    where: Path
    scores: tuple


def test_jsonable_turns_numpy_paths_tuples_and_dataclasses_into_json_types():
    value = {
        1: np.float32(0.5),
        "n": np.int64(3),
        "flag": np.bool_(True),
        "arr": np.array([1, 2]),
        "p": _Point("a", Path("/x/y"), (np.float64(1.0), 2)),
    }
    out = jsonable(value)
    assert out == {
        "1": 0.5,
        "n": 3,
        "flag": True,
        "arr": [1, 2],
        "p": {"name": "a", "where": "/x/y", "scores": [1.0, 2]},
    }
    assert type(out["n"]) is int and type(out["flag"]) is bool
    json.dumps(out)  # raises on anything JSON does not know


def test_jsonable_keeps_nan_unless_asked_for_finite_values():
    assert math.isnan(jsonable([float("nan")])[0])
    assert jsonable({"a": float("nan"), "b": np.float64("inf"), "c": 1.5}, finite=True) == {
        "a": None,
        "b": None,
        "c": 1.5,
    }


def test_read_json_gives_the_default_for_a_missing_or_broken_file(tmp_path):
    assert read_json(tmp_path / "absent.json", default=None) is None
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert read_json(broken, default={}) == {}


def test_read_json_without_a_default_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_json(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        read_json(broken)


def test_write_json_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"x": np.float32(2.0), "where": tmp_path})
    assert path.read_text().endswith("}\n")
    assert read_json(path) == {"x": 2.0, "where": str(tmp_path)}
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]
