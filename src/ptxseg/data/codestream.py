"""Image dimensions read from the first bytes of a PNG, JPEG or JPEG 2000 stream, without decoding.

A 335-byte JPEG can claim 30000 x 30000 pixels; decoding it takes gigabytes. The readers check
these dimensions against their pixel limit before they hand the bytes to a decoder.
"""

from __future__ import annotations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic; JPEG-LS SOF55).
# C4 (Huffman tables), C8 (reserved) and CC (arithmetic conditioning) share the range but are not.
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in JPEG_STANDALONE:
            i += 2
            continue
        if marker in JPEG_SOF:
            return (_u16(data, i + 5), _u16(data, i + 7)) if i + 9 <= len(data) else None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + _u16(data, i + 2)
    return None


def _jp2_size(data: bytes) -> tuple[int, int] | None:
    at = data.find(b"ihdr", 0, 4096)
    if at < 0 or at + 12 > len(data):
        return None
    return _u32(data, at + 4), _u32(data, at + 8)


def png_chunks_fit(data: bytes) -> bool:
    """True when every chunk of a PNG lies inside the data, up to IEND.

    A damaged chunk length (one flipped byte can claim 3.8 GB) sends decoders on a long search;
    checking the chunk layout first costs microseconds."""
    at = len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        length, kind = _u32(data, at), data[at + 4 : at + 8]
        if length > 2**31 - 1 or at + 12 + length > len(data):
            return False
        if kind == b"IEND":
            return True
        at += 12 + length
    return False


def stream_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) claimed by a PNG, JPEG (any SOF, JPEG-LS) or JPEG 2000 stream, else None."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        return _u32(data, 20), _u32(data, 16)
    if data.startswith(JPEG_SOI):
        return _jpeg_size(data)
    if data.startswith(J2K_SOC_SIZ) and len(data) >= 24:
        # SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz; the image is the reference grid minus the offsets
        width, height = _u32(data, 8) - _u32(data, 16), _u32(data, 12) - _u32(data, 20)
        return max(height, 0), max(width, 0)
    if data.startswith(JP2_SIGNATURE):
        return _jp2_size(data)
    return None
