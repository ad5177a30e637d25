"""DICOM reading: variants written with pydicom, corrupt inputs, and the real SIIM files."""

import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pydicom
import pytest
from dicom_files import chest_like, claim_size, replace_bytes, tiny_bomb, write_dicom
from pydicom.encaps import encapsulate

from ptxseg.data import dicom
from ptxseg.data.dicom import (
    DicomHeaderWarning,
    ImageReadError,
    ImageTooLargeError,
    ImageTooSmallError,
    read_dicom,
    read_image,
)


def test_uncompressed_8bit(tmp_path):
    pixels = chest_like()
    image, meta = read_dicom(write_dicom(tmp_path / "a.dcm", pixels))
    assert image.dtype == np.float32 and image.shape == (64, 64)
    assert np.allclose(image, pixels / 255, atol=1e-6)
    assert meta["ImageId"] == "a" and meta["PixelSpacing"] == [0.168, 0.168]
    assert meta["ViewPosition"] == "PA" and meta["PatientAge"] == 45
    assert meta["Rows"] == 64 and meta["PhotometricInterpretation"] == "MONOCHROME2"


def test_jpeg_baseline_matches_pydicom_within_one_level(tmp_path):
    path = write_dicom(tmp_path / "j.dcm", chest_like(), jpeg=True)
    image, meta = read_dicom(path)
    reference = pydicom.dcmread(path).pixel_array.astype(np.float32)
    assert meta["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"
    assert np.abs(image * 255 - reference).max() <= 1.0 + 1e-3


def test_monochrome1_is_inverted(tmp_path):
    pixels = chest_like()
    normal, _ = read_dicom(write_dicom(tmp_path / "m2.dcm", pixels))
    inverted, meta = read_dicom(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    assert meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert np.allclose(normal + inverted, 1.0, atol=1e-6)


def test_16bit_with_rescale_uses_the_full_range(tmp_path):
    pixels = (chest_like().astype(np.uint16) * 16).astype(np.uint16)  # 12-bit values
    path = write_dicom(
        tmp_path / "r.dcm", pixels, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100
    )
    image, _ = read_dicom(path)
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)
    rescaled = pixels.astype(np.float64) * 2 - 100
    expected = (rescaled - rescaled.min()) / (rescaled.max() - rescaled.min())
    assert np.allclose(image, expected, atol=1e-5)


def test_12bit_without_rescale_scales_by_bits_stored(tmp_path):
    pixels = np.full((32, 32), 4095, np.uint16)
    pixels[:16] = 0
    image, _ = read_dicom(write_dicom(tmp_path / "b.dcm", pixels, bits_stored=12))
    assert image[0, 0] == 0.0 and image[-1, -1] == pytest.approx(1.0)


def test_window_then_monochrome1(tmp_path):
    pixels = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))
    kw = dict(bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    mono2, _ = read_dicom(write_dicom(tmp_path / "w2.dcm", pixels, **kw))
    mono1, _ = read_dicom(write_dicom(tmp_path / "w1.dcm", pixels, photometric="MONOCHROME1", **kw))
    # the window saturates both ends; MONOCHROME1 is inverted after it
    assert mono2[0, 0] == 0.0 and mono2[0, -1] == pytest.approx(1.0)
    assert np.allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_invalid_header_values_warn_and_read(tmp_path):
    path = write_dicom(
        tmp_path / "ID_0a1b2c3d4.dcm",
        chest_like(),
        SOPInstanceUID="ID_0a1b2c3d4",
        StudyInstanceUID="",
        PatientID="",
        PatientAge="152",
    )
    with pytest.warns(DicomHeaderWarning, match="ID_0a1b2c3d4"):
        image, meta = read_dicom(path)
    assert image.shape == (64, 64)
    assert meta["ImageId"] == "ID_0a1b2c3d4" and meta["PatientAge"] is None
    assert any("152" in w for w in meta["HeaderWarnings"])


def test_corrupt_and_foreign_files_name_the_file(tmp_path):
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("hello")
    with pytest.raises(ImageReadError, match="notes.dcm"):
        read_dicom(not_dicom)
    good = write_dicom(tmp_path / "t.dcm", chest_like(), jpeg=True).read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageReadError, match="truncated.dcm"):
        read_dicom(truncated)
    with pytest.raises(ImageReadError, match="not found"):
        read_dicom(tmp_path / "missing.dcm")


def test_dicom_without_pixels(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", chest_like(), pixel_data=False)
    with pytest.raises(ImageReadError, match="nopix.dcm has no pixel data"):
        read_dicom(path)


def test_read_image_png_jpeg_and_bytes(tmp_path):
    pixels = chest_like()
    cv2.imwrite(str(tmp_path / "x.png"), pixels)
    image, meta = read_image(tmp_path / "x.png")
    assert np.allclose(image, pixels / 255) and meta["source"] == "image"
    wide = (pixels.astype(np.uint16) * 257).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "w.png"), wide)
    assert np.allclose(read_image(tmp_path / "w.png")[0], pixels / 255, atol=1e-6)
    dicom_bytes = write_dicom(tmp_path / "d.dcm", pixels).read_bytes()
    from_bytes, meta = read_image(dicom_bytes)
    assert np.allclose(from_bytes, pixels / 255) and meta["source"] == "dicom"
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(b"plain text, not an image")


@pytest.fixture()
def no_decoding(monkeypatch):
    """Any decode fails the test: the pixel limit must act on the header alone."""

    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the header is over the pixel limit")

    monkeypatch.setattr(dicom.cv2, "imdecode", refuse)
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(refuse))


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_a_tiny_file_claiming_30000_pixels_square_is_refused_before_decoding(kind, no_decoding):
    bomb = tiny_bomb(kind)
    assert len(bomb) < 400
    with pytest.raises(ImageTooLargeError, match=r"30000x30000 pixels \(900 MP\).*limit of 60 MP"):
        read_image(bomb, name=f"bomb.{kind}")


def test_dicom_header_or_frame_over_the_limit_is_refused_before_decoding(tmp_path, no_decoding):
    big = write_dicom(tmp_path / "big.dcm", chest_like(), Rows=30000, Columns=30000)
    with pytest.raises(ImageTooLargeError, match="big.dcm: the header claims 30000x30000"):
        read_dicom(big)
    # the header says 64x64, the JPEG frame inside claims 30000x30000 (the OpenCV fast path)
    path = write_dicom(tmp_path / "frame.dcm", chest_like(), jpeg=True)
    ds = pydicom.dcmread(path)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([claim_size(frame, 30000, 30000)])
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match="the compressed frame claims 30000x30000"):
        read_dicom(path)
    # the same through pydicom's path (a VOI window turns the fast path off)
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match="compressed frame"):
        read_dicom(path)


def test_the_pixel_limit_is_configurable(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", chest_like(64), jpeg=True)
    with pytest.raises(ImageTooLargeError, match=r"64x64 pixels .* limit of 0.004 MP"):
        read_image(path, max_pixels=4000)
    assert read_image(path, max_pixels=4096)[0].shape == (64, 64)
    cv2.imwrite(str(tmp_path / "a.png"), chest_like(64))
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "a.png", max_pixels=4000)


def test_a_frame_that_differs_from_the_header_is_an_error(tmp_path):
    path = write_dicom(tmp_path / "odd.dcm", chest_like(64), jpeg=True)
    ds = pydicom.dcmread(path)
    ds.Rows = 48
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="odd.dcm: the compressed frame is 64x64 pixels but"):
        read_dicom(path)


def test_malformed_pixel_spacing_is_a_header_warning(tmp_path):
    path = write_dicom(tmp_path / "sp.dcm", chest_like(), jpeg=True)
    replace_bytes(path, b"0.168\\0.168", b"abc        ")
    with pytest.warns(DicomHeaderWarning, match="PixelSpacing 'abc'"):
        image, meta = read_image(path)
    assert image.shape == (64, 64) and meta["PixelSpacing"] is None


def test_header_warnings_stay_with_their_image_across_threads(tmp_path):
    """Each image's warnings are its own, however many threads read at once."""
    paths = [
        write_dicom(tmp_path / f"ID_{i:09x}.dcm", chest_like(32, i), SOPInstanceUID=f"ID_{i:09x}")
        for i in range(6)
    ]
    paths += [write_dicom(tmp_path / f"clean{i}.dcm", chest_like(32, i)) for i in range(2)]

    def own_warnings(path):
        _, meta = read_image(path)
        return path.stem, meta["HeaderWarnings"]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomHeaderWarning)
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(own_warnings, paths * 40))
    for stem, problems in results:
        others = [p.stem for p in paths if p.stem != stem and p.stem in " ".join(problems)]
        assert not others, f"{stem} got the warnings of {others}"
        assert bool(problems) == stem.startswith("ID_")


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"nan   ", "is not a finite number"),
        (b"inf   ", "is not a finite number"),
        (b"-inf  ", "is not a finite number"),
        (b"0     ", "is zero, which maps every pixel to the same value"),
        (b"0.0000", "is zero"),
    ],
)
def test_a_rescale_slope_of_zero_or_not_finite_is_refused_with_its_reason(tmp_path, value, reason):
    """`nan` gave an image of NaNs (found by fuzzing); 0 a constant image that a model called
    "pneumothorax, large"."""
    pixels = (chest_like().astype(np.uint16) * 16).astype(np.uint16)
    tags = {"RescaleSlope": "2.0000", "RescaleIntercept": -100}
    path = write_dicom(tmp_path / "slope.dcm", pixels, bits_stored=12, **tags)
    replace_bytes(path, b"2.0000", value)
    with pytest.raises(ImageReadError, match=rf"slope.dcm: RescaleSlope '.*' {reason}"):
        read_dicom(path)
    with pytest.raises(ImageReadError, match="RescaleSlope"):
        read_image(path.read_bytes(), name="slope.dcm")


def test_a_rescale_intercept_that_is_not_a_number_is_refused(tmp_path):
    pixels = (chest_like().astype(np.uint16) * 16).astype(np.uint16)
    tags = {"RescaleSlope": 1, "RescaleIntercept": "-100.0"}
    path = write_dicom(tmp_path / "i.dcm", pixels, bits_stored=12, **tags)
    replace_bytes(path, b"-100.0", b"nan   ")
    with pytest.raises(ImageReadError, match="i.dcm: RescaleIntercept 'nan' is not a finite"):
        read_dicom(path)


def constant(kind: str, tmp_path):
    """A file of each reading path whose pixels all have one value."""
    flat = np.full((64, 64), 100, np.uint8)
    if kind == "png":
        path = tmp_path / "flat.png"
        cv2.imwrite(str(path), flat)
        return path
    if kind == "jpeg-dicom":  # the libjpeg-turbo fast path
        return write_dicom(tmp_path / "flat.dcm", flat, jpeg=True)
    if kind == "native":
        return write_dicom(tmp_path / "flat.dcm", flat)
    # a window that leaves every stored value below its lower end: all black after scaling
    pixels = (chest_like().astype(np.uint16) * 4).astype(np.uint16)  # at most 1020
    tags = {"WindowCenter": 3000, "WindowWidth": 100}
    return write_dicom(tmp_path / "flat.dcm", pixels, bits_stored=12, **tags)


@pytest.mark.parametrize("kind", ["png", "jpeg-dicom", "native", "window"])
def test_an_image_whose_pixels_are_all_equal_after_scaling_is_refused(tmp_path, kind):
    path = constant(kind, tmp_path)
    with pytest.raises(ImageReadError, match=rf"{path.name}: all 4,096 pixels have the same value"):
        read_image(path)


def write_colour_dicom(path, rgb: np.ndarray, bits_stored: int):
    """An uncompressed RGB DICOM (interleaved samples) of `rgb` (H, W, 3)."""
    ds = pydicom.dcmread(write_dicom(path, rgb[..., 0].copy(), bits_stored=bits_stored))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    ds.save_as(path)
    return path


@pytest.mark.parametrize("bits", [16, 12])
def test_16_bit_colour_is_gray_at_its_own_depth_not_wrapped(tmp_path, bits):
    """16-bit RGB pixels were wrapped modulo 256 and read as a near-black image."""
    gray8 = chest_like()
    rgb8 = np.stack([gray8, np.clip(gray8.astype(int) + 9, 0, 255), gray8 // 2], -1)
    rgb8 = rgb8.astype(np.uint8)
    top = 2**bits - 1
    wide = np.round(rgb8.astype(np.float64) * top / 255).astype(np.uint16)
    image, meta = read_dicom(write_colour_dicom(tmp_path / "rgb16.dcm", wide, bits))
    reference, _ = read_dicom(write_colour_dicom(tmp_path / "rgb8.dcm", rgb8, 8))
    expected = (0.299 * rgb8[..., 0] + 0.587 * rgb8[..., 1] + 0.114 * rgb8[..., 2]) / 255
    assert image.shape == (64, 64) and meta["BitsStored"] == bits
    assert np.abs(image - expected).max() < 2 / 255
    assert np.abs(image - reference).max() < 2 / 255
    assert image.mean() > 0.2  # not the near-black of a wrapped image


def test_palette_colour_is_refused_not_read_as_gray_indices(tmp_path):
    path = write_dicom(tmp_path / "pal.dcm", chest_like(), photometric="PALETTE COLOR")
    with pytest.raises(ImageReadError, match="pal.dcm: PALETTE COLOR images are not radiographs"):
        read_dicom(path)


def test_16_bit_colour_png_is_gray_at_its_own_depth(tmp_path):
    gray8 = chest_like()
    bgr16 = np.stack([gray8, gray8, gray8], -1).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "c.png"), bgr16)
    image, _ = read_image(tmp_path / "c.png")
    assert np.abs(image - gray8 / 255).max() < 1e-4


@pytest.mark.parametrize("shape", [(1, 1), (3, 65535), (31, 64), (64, 31)])
def test_an_image_under_32_pixels_on_a_side_is_refused_by_every_reader(tmp_path, shape):
    """`predict` analysed 1x1 and 3x65535 images that `serve` refused."""
    pixels = np.tile(np.arange(shape[1], dtype=np.uint8), (shape[0], 1))
    pixels[0, 0] = 7  # not constant, even at 1x1 the size is what is refused
    h, w = shape
    dcm = write_dicom(tmp_path / "small.dcm", pixels)
    cv2.imwrite(str(tmp_path / "small.png"), pixels)
    for path in (dcm, tmp_path / "small.png"):
        with pytest.raises(ImageTooSmallError, match=rf"small\.\w+: .* {h}x{w} pixels, smaller"):
            read_image(path)
    with pytest.raises(ImageTooSmallError):
        dicom.read_dicom_frame(dcm)
    assert dicom.MIN_SIDE == 32


def test_an_image_of_32_pixels_on_a_side_is_read(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", chest_like(32))
    assert read_image(path)[0].shape == (32, 32)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment holding only the Orientation tag (0x0112)."""
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def with_png_exif(png: bytes, orientation: int) -> bytes:
    """The PNG with an eXIf chunk holding only the Orientation tag, after IHDR."""
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"eXIf" + tiff
    chunk = struct.pack(">I", len(tiff)) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]


ROTATIONS = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_exif_orientation_is_applied(kind, orientation):
    """A JPEG with EXIF orientation was analysed sideways."""
    pixels = chest_like(64)[:, :48].copy()  # not square: a turn shows in the shape
    pixels[:8, :8] = 255  # a mark in the top-left corner as stored
    encoded = cv2.imencode(f".{'jpg' if kind == 'jpeg' else 'png'}", pixels)[1].tobytes()
    plain, _ = read_image(encoded, name=f"plain.{kind}")
    add = with_exif_orientation if kind == "jpeg" else with_png_exif
    turned, meta = read_image(add(encoded, orientation), name=f"turned.{kind}")
    expected = cv2.rotate(plain, ROTATIONS[orientation])
    assert turned.shape == expected.shape == (meta["Rows"], meta["Columns"])
    np.testing.assert_array_equal(turned, expected)
    unchanged, _ = read_image(add(encoded, 1), name=f"upright.{kind}")
    np.testing.assert_array_equal(unchanged, plain)


@pytest.mark.parametrize("name", ["empty.dcm", "empty.png", "empty.jpg", "empty"])
def test_a_zero_byte_file_is_called_empty(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    message = rf"{name}: empty file \(0 bytes\)"
    with pytest.raises(ImageReadError, match=message):
        read_image(path)
    with pytest.raises(ImageReadError, match=message):
        read_image(b"", name=name)
    if name.endswith(".dcm"):
        for reader in (read_dicom, dicom.read_dicom_frame):
            with pytest.raises(ImageReadError, match=message):
                reader(path)


def test_a_png_chunk_claiming_gigabytes_is_refused_before_decoding(no_decoding):
    """Found by fuzzing: one flipped byte made OpenCV search for 3 seconds."""
    png = bytearray(cv2.imencode(".png", chest_like(48))[1].tobytes())
    png[33] = 228  # the length of the chunk after IHDR
    with pytest.raises(ImageReadError, match="x.png is a damaged or truncated PNG"):
        read_image(bytes(png), name="x.png")


# ------------------------------------------------------------------- real files


def real_dicoms(siim_real):
    return sorted(siim_real.glob("*/*.dcm"))


def test_every_real_dicom_reads_like_pydicom(siim_real):
    files = real_dicoms(siim_real)
    assert len(files) == 12
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DicomHeaderWarning)
            image, meta = read_dicom(path)
        assert image.shape == (1024, 1024) and image.min() >= 0 and image.max() <= 1
        reference = pydicom.dcmread(path).pixel_array.astype(np.float32) / 255
        if meta["PhotometricInterpretation"] == "MONOCHROME1":
            reference = 1 - reference
        assert np.abs(image - reference).max() <= 1 / 255 + 1e-4, path.name
        assert meta["ViewPosition"] in ("PA", "AP")
        assert 0.139 <= meta["PixelSpacing"][0] <= 0.195


def test_real_stage2_headers_warn(siim_real):
    path = siim_real / "vishakhnair16-stage2-test" / "ID_51fd8beff.dcm"
    with pytest.warns(DicomHeaderWarning) as record:
        _, meta = read_dicom(path)
    text = str(record[0].message)
    assert "ID_51fd8beff" in text and "PatientID is empty" in text
    assert meta["PatientAge"] is None  # the file says 152


def test_real_monochrome1_copy_is_the_inverse(siim_real):
    folder = siim_real / "torchxrayvision"
    original, _ = read_dicom(folder / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    fake, meta = read_dicom(folder / "Fake_MONOHR1.dcm")
    assert meta["PhotometricInterpretation"] == "MONOCHROME1"
    assert np.allclose(original + fake, 1.0, atol=1e-6)
