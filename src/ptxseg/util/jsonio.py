"""The one place that turns values into JSON and reads and writes JSON files.

`jsonable` makes numpy numbers, paths, tuples and dataclasses JSON-ready; `read_json` reads a file
and, where a caller can do without it, returns a default for a missing or unreadable one;
`write_json` writes through `ptxseg.util.atomic`, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ptxseg.util import atomic

_REQUIRED = object()


def jsonable(value: Any, *, finite: bool = False) -> Any:
    """`value` with JSON's own types only: mappings become dicts with string keys, tuples and
    arrays lists, numpy scalars Python numbers, paths strings, dataclasses dicts. With `finite`,
    NaN and infinities become None (strict JSON has no spelling for them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, finite=finite) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v, finite=finite) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic) or (hasattr(value, "item") and not hasattr(value, "__len__")):
        value = value.item()
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path: str | PurePath, default: Any = _REQUIRED) -> Any:
    """The parsed contents of `path`. With `default`, a missing or unreadable file gives
    `default`; without it, a missing file raises FileNotFoundError and a broken one a ValueError
    that names the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        if default is _REQUIRED:
            raise
        return default
    try:
        return json.loads(text)
    except ValueError as err:
        if default is not _REQUIRED:
            return default
        raise ValueError(f"{path}: not valid JSON ({err}); rewrite or remove the file") from err


def write_json(path: str | PurePath, data: Any, *, indent: int | None = 2) -> Path:
    """Write `jsonable(data)` to `path` atomically (a temporary name, then a rename), ending in a
    newline."""
    return atomic.write_text(path, json.dumps(jsonable(data), indent=indent) + "\n")
