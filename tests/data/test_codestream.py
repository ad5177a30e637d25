"""Image sizes read from PNG, JPEG and JPEG 2000 headers without decoding."""

import cv2
import numpy as np
import pytest
from dicom_files import tiny_bomb

from ptxseg.data.codestream import png_chunks_fit, stream_size


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jp2"])
def test_sizes_match_the_decoded_image(ext):
    ok, data = cv2.imencode(ext, np.zeros((37, 51), np.uint8))
    assert ok
    assert stream_size(data.tobytes()) == (37, 51)


def test_progressive_jpeg_and_claimed_sizes():
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, data = cv2.imencode(".jpg", np.zeros((20, 30), np.uint8), params)
    assert ok and stream_size(data.tobytes()) == (20, 30)
    assert stream_size(tiny_bomb("jpeg", 30000, 20000)) == (30000, 20000)
    assert stream_size(tiny_bomb("png", 30000, 20000)) == (30000, 20000)


CUT = [b"", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"x" * 40]


@pytest.mark.parametrize("data", CUT)
def test_unknown_or_cut_headers_give_none(data):
    assert stream_size(data) is None


def test_png_chunk_layout():
    ok, data = cv2.imencode(".png", np.zeros((20, 30), np.uint8))
    data = data.tobytes()
    assert png_chunks_fit(data)
    assert not png_chunks_fit(data[:-4])  # IEND cut
    damaged = bytearray(data)
    damaged[33] = 228  # the length of the chunk after IHDR now claims 3.8 GB
    assert not png_chunks_fit(bytes(damaged))
