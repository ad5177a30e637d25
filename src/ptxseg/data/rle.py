"""Run-length encoding of SIIM-ACR masks, and reading the annotation CSVs with all their quirks.

SIIM's RLE is column-major (pixels are counted down the columns) and *relative*: each start is the
gap after the end of the previous run, the first start is a 0-based index. Some sources use
*absolute* 0-based starts instead; a string with a single run reads the same either way.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

ENCODINGS = ("relative", "absolute")
EMPTY = "-1"
MAX_VALUE = 2**40  # no image has more pixels; larger values would overflow the cumulative sums


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(
            f"unknown RLE encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}"
        )


def _parse_pairs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """Split an RLE string into (starts, lengths) integer arrays, checking its syntax."""
    # np.fromstring's text mode is several times faster than int() per token. Older NumPy stops
    # at a bad token (with a DeprecationWarning), newer raises: either way malformed strings go
    # to the slow path's messages. No warnings filter here: filters are process-wide, not per
    # thread.
    tokens = rle.split()
    try:
        values = np.fromstring(rle, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        values = np.empty(0, dtype=np.int64)
    if values.size != len(tokens):
        bad = next((t for t in tokens if not t.lstrip("-").isdigit()), None)
        if bad is not None:
            raise ValueError(
                f"RLE value {bad!r} is not an integer in {_preview(rle)}: expected whole numbers"
            )
        try:
            values = np.array(tokens, dtype=np.int64)
        except OverflowError:
            values = np.array([MAX_VALUE + 1])
    if values.size and values.max() > MAX_VALUE:
        raise ValueError(
            f"RLE value {_preview(str(max(tokens, key=lambda t: (len(t), t))))} is larger than "
            f"any image has pixels (at most {MAX_VALUE}) in {_preview(rle)}"
        )
    if values.size % 2:
        raise ValueError(
            f"RLE has an odd number of values ({values.size}): expected 'start length' pairs, "
            f"got {_preview(rle)}"
        )
    starts, lengths = values[0::2], values[1::2]
    if (lengths <= 0).any():
        i = int(np.argmax(lengths <= 0))
        raise ValueError(f"RLE run {i} has length {lengths[i]}: run lengths must be positive")
    if (starts < 0).any():
        i = int(np.argmax(starts < 0))
        raise ValueError(f"RLE run {i} has start {starts[i]}: starts must not be negative")
    return starts, lengths


def _preview(rle: str, n: int = 60) -> str:
    return repr(rle if len(rle) <= n else rle[:n] + "...")


def _absolute_starts(starts: np.ndarray, lengths: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "absolute":
        return starts
    # relative: start_i = sum of all previous gaps and lengths, plus this gap
    return np.cumsum(starts) + np.concatenate(([0], np.cumsum(lengths)[:-1]))


def is_empty_rle(rle: str) -> bool:
    """True for the competition's marker of an empty mask (`-1`, with any spaces) or a blank."""
    text = rle.strip()
    return text in ("", EMPTY)


def _runs(rle: str, height: int, width: int, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (starts, ends) of a non-empty RLE string, checked against the image size."""
    starts, lengths = _parse_pairs(rle)
    starts = _absolute_starts(starts, lengths, encoding)
    ends = starts + lengths
    if encoding == "absolute" and (starts[1:] < ends[:-1]).any():
        i = int(np.argmax(starts[1:] < ends[:-1])) + 1
        raise ValueError(
            f"absolute RLE run {i} starts at {starts[i]}, before the previous run ends at "
            f"{ends[i - 1]}: starts must increase (is this relative RLE? try encoding='relative')"
        )
    if ends[-1] > height * width:
        raise ValueError(
            f"RLE runs reach pixel {ends[-1]} but a {height}x{width} image has "
            f"{height * width} pixels: check the image size and the encoding ({encoding!r})"
        )
    return starts, ends


def check_rle(rle: str, height: int, width: int, encoding: str = "relative") -> None:
    """Raise ValueError when `rle` is malformed or runs past a (height, width) image."""
    _check_encoding(encoding)
    if not is_empty_rle(rle):
        _runs(rle, height, width, encoding)


def rle_decode(rle: str, height: int, width: int, encoding: str = "relative") -> np.ndarray:
    """Decode one RLE string into a boolean mask of shape (height, width)."""
    _check_encoding(encoding)
    mask = np.zeros(height * width, dtype=bool)
    if is_empty_rle(rle):
        return mask.reshape(width, height).T
    starts, ends = _runs(rle, height, width, encoding)
    lengths = ends - starts
    # Fill the span from the first start to the last end with alternating runs and gaps: one
    # np.repeat, no Python loop over runs, and nothing outside the span is touched.
    segments = np.empty(2 * starts.size - 1, dtype=np.int64)
    segments[0::2], segments[1::2] = lengths, starts[1:] - ends[:-1]
    values = np.zeros(segments.size, dtype=bool)
    values[0::2] = True
    mask[starts[0] : ends[-1]] = np.repeat(values, segments)
    return mask.reshape(width, height).T


def rle_encode(mask: np.ndarray, encoding: str = "relative") -> str:
    """Encode a 2-D mask (any non-zero pixel is foreground); `"-1"` for an empty mask."""
    _check_encoding(encoding)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    foreground = mask if mask.dtype == bool else mask != 0
    columns = np.flatnonzero(foreground.any(axis=0))
    if columns.size == 0:
        return EMPTY
    # Only the columns that hold foreground are transposed: masks are small next to the image.
    first, last = int(columns[0]), int(columns[-1]) + 1
    flat = foreground[:, first:last].T.ravel()
    padded = np.concatenate(([False], flat, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1]) + first * mask.shape[0]
    starts, ends = changes[0::2], changes[1::2]
    lengths = ends - starts
    if encoding == "relative":
        starts = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2], pairs[1::2] = starts, lengths
    return " ".join(map(str, pairs.tolist()))


def rles_to_mask(
    rles: Iterable[str], height: int, width: int, encoding: str = "relative"
) -> np.ndarray:
    """OR together the regions of one image (one RLE string per region)."""
    mask = np.zeros((height, width), dtype=bool)
    for rle in rles:
        mask |= rle_decode(rle, height, width, encoding)
    return mask


def _fits(rle: str, encoding: str, n_pixels: int) -> bool:
    try:
        starts, lengths = _parse_pairs(rle)
    except ValueError:
        return False
    starts = _absolute_starts(starts, lengths, encoding)
    ends = starts + lengths
    return bool(ends[-1] <= n_pixels and (starts[1:] >= ends[:-1]).all())


def detect_encoding(rles: Iterable[str], height: int = 1024, width: int = 1024) -> str:
    """Tell whether a whole CSV's strings are relative or absolute RLE.

    Only strings with several runs carry evidence; when none does, both readings agree and the
    answer is SIIM's own, "relative". Mixed evidence raises ValueError.
    """
    n_pixels = height * width
    votes = {"relative": 0, "absolute": 0}
    for rle in rles:
        if is_empty_rle(rle) or len(rle.split()) <= 2:
            continue
        fits = {enc: _fits(rle, enc, n_pixels) for enc in ENCODINGS}
        if fits["relative"] != fits["absolute"]:
            votes["relative" if fits["relative"] else "absolute"] += 1
    if votes["relative"] and votes["absolute"]:
        raise ValueError(
            f"the RLE strings mix encodings ({votes['relative']} read only as relative, "
            f"{votes['absolute']} only as absolute) for {height}x{width} images: "
            "pass the encoding explicitly or check the image size"
        )
    return "absolute" if votes["absolute"] else "relative"


def _looks_like_header(row: list[str]) -> bool:
    value = row[1].strip()
    return value != EMPTY and not value.replace(" ", "").isdigit()


def _csv_rows(text: str, path: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, row) of a CSV text; a malformed row is a ValueError naming its line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise ValueError(
                f"{path}, line {reader.line_num}: not a valid CSV row ({err})"
            ) from None
        yield reader.line_num, row


class Annotations(dict):
    """{ImageId: [RLE, ...]} as read from a CSV, remembering the line of every RLE string.

    `conflicts` holds the images listed both as `-1` and with a region, with the lines of all
    their rows: they are not in the dict, so no caller can take them for positive or negative.
    """

    def __init__(self, source: Path):
        super().__init__()
        self.source = source
        self.lines: dict[str, list[int]] = {}
        self.conflicts: dict[str, list[int]] = {}

    def where(self, image_id: str, index: int = 0) -> str:
        """`train-rle.csv, line 12, ImageId 1.2.3`: where a user finds the string in the file."""
        lines = self.lines.get(image_id, [])
        line = f", line {lines[index]}" if index < len(lines) else ""
        return f"{self.source}{line}, ImageId {image_id}"

    def conflict_reason(self, image_id: str) -> str:
        """Why a conflicting image is skipped, naming the CSV lines to correct."""
        lines = self.conflicts[image_id]
        return (
            f"{self.source}, lines {', '.join(map(str, lines))}, ImageId {image_id}: listed both "
            "as -1 (no pneumothorax) and with a region; the image is skipped. Keep either the "
            "-1 row or the region rows, then run again"
        )

    def conflict_rows(self) -> list[dict]:
        """The conflicting images as `unmatched.json` lists them."""
        return [
            {
                "image_id": image_id,
                "csv": str(self.source),
                "lines": lines,
                "reason": self.conflict_reason(image_id),
            }
            for image_id, lines in sorted(self.conflicts.items())
        ]


def _csv_text(path: Path) -> str:
    """The CSV's text (a UTF-8 BOM dropped), or an error that says what was expected."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation CSV not found: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not a text CSV: expected SIIM annotations 'ImageId,EncodedPixels'"
        ) from None


def read_annotations(path: str | Path, strict: bool = False) -> Annotations:
    """Read a SIIM annotation CSV into {ImageId: [RLE, ...]} (an empty list means no pneumothorax).

    Handles the stage-1 header with leading spaces (`ImageId, EncodedPixels`, values `" -1"`), the
    Kaggle sample's UTF-8 BOM with no header, the stage-2 header, several rows per image (one per
    region) and repeated `-1` rows. An image listed both as `-1` and with a region is a label
    that contradicts itself: it is left out of the table and kept, with the lines of all its
    rows, in `Annotations.conflicts` (with `strict=True` it is a ValueError). Every RLE string's
    syntax is checked here (pairs of integers, positive lengths), so a bad row is named by its line
    and ImageId before any image is read; `Annotations.where` names the line for later checks.
    """
    path = Path(path)
    text = _csv_text(path)
    annotations = Annotations(path)
    negatives: dict[str, list[int]] = {}
    for line_no, row in _csv_rows(text, path):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise ValueError(
                f"{path}, line {line_no}: expected 2 columns (ImageId, EncodedPixels), "
                f"got {len(row)}: {row[:4]!r}. Is this a SIIM annotation CSV?"
            )
        if line_no == 1 and _looks_like_header(row):
            continue
        image_id, rle = row[0].strip(), row[1].strip()
        if not image_id:
            raise ValueError(f"{path}, line {line_no}: the ImageId is empty")
        masks = annotations.setdefault(image_id, [])
        if is_empty_rle(rle):
            negatives.setdefault(image_id, []).append(line_no)
            continue
        if not rle.replace(" ", "").isdigit():
            raise ValueError(
                f"{path}, line {line_no}, ImageId {image_id}: EncodedPixels {_preview(rle)} is "
                "neither -1 nor 'start length' integer pairs"
            )
        try:
            _parse_pairs(rle)
        except ValueError as err:
            raise ValueError(f"{path}, line {line_no}, ImageId {image_id}: {err}") from None
        masks.append(rle)
        annotations.lines.setdefault(image_id, []).append(line_no)
    if not annotations:
        raise ValueError(f"{path} holds no annotation rows: expected 'ImageId,EncodedPixels'")
    for image_id, lines in negatives.items():
        if annotations[image_id]:
            annotations.conflicts[image_id] = sorted(lines + annotations.lines.pop(image_id))
            del annotations[image_id]
    if strict and annotations.conflicts:
        first = next(iter(sorted(annotations.conflicts)))
        raise ValueError(
            f"{len(annotations.conflicts)} image(s) are listed both as -1 and with a region; "
            f"the first: {annotations.conflict_reason(first)}"
        )
    return annotations
