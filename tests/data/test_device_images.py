"""Decoding and model inputs on a device: the same bytes as the CPU path where it matters.

The device code is plain torch, so it runs here on CPU tensors; GPU-marked tests repeat the
checks with nvJPEG and CUDA tensors.
"""

import cv2
import numpy as np
import pytest
import torch
from dicom_files import chest_like, write_dicom

from ptxseg.data import device_images as di
from ptxseg.data.dicom import read_dicom, read_dicom_frame, read_image
from ptxseg.data.preprocess import to_model_input

pytestmark = pytest.mark.filterwarnings("ignore::ptxseg.data.dicom.DicomHeaderWarning")


def cpu_input(u8: np.ndarray, size: int) -> np.ndarray:
    """What the CPU path makes of an 8-bit picture (read_dicom's scaling, then preprocess)."""
    return to_model_input(np.multiply(u8, np.float32(1 / 255), dtype=np.float32), size)


@pytest.mark.parametrize(("side", "size"), [(1024, 512), (1024, 256), (512, 512), (256, 64)])
def test_exact_factors_give_the_cpu_bytes(side, size):
    rng = np.random.default_rng(side + size)
    pictures = [rng.integers(0, 256, (side, side), dtype=np.uint8) for _ in range(3)]
    got = di.to_model_inputs([torch.from_numpy(p) for p in pictures], size)
    assert got.dtype == torch.uint8 and got.shape == (3, size, size)
    for p, g in zip(pictures, got, strict=True):
        np.testing.assert_array_equal(g.numpy(), cpu_input(p, size))
    assert di.exact_on_device(side, side, size)


@pytest.mark.parametrize(
    ("shape", "size"), [((1024, 1024), 128), ((1024, 1024), 384), ((900, 1100), 512)]
)
def test_other_shrinks_stay_within_the_stated_tolerance(shape, size):
    picture = np.random.default_rng(7).integers(0, 256, shape, dtype=np.uint8)
    got = di.to_model_inputs([torch.from_numpy(picture)], size)[0].numpy()
    diff = np.abs(got.astype(int) - cpu_input(picture, size).astype(int))
    assert diff.max() <= di.AREA_TOLERANCE
    assert (diff > 0).mean() < 0.01  # only values on a rounding tie move


def test_area_weights_average_to_one():
    weights = di.area_matrix(1000, 384)
    np.testing.assert_allclose(weights.sum(1).numpy(), 1.0)
    assert weights.shape == (384, 1000) and float(weights.min()) >= 0


def test_mixed_shapes_and_monochrome1_in_one_batch():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (1024, 1024), dtype=np.uint8)
    b = rng.integers(0, 256, (512, 512), dtype=np.uint8)
    got = di.to_model_inputs([torch.from_numpy(a), torch.from_numpy(b)], 256, [False, True])
    np.testing.assert_array_equal(got[0].numpy(), cpu_input(a, 256))
    np.testing.assert_array_equal(got[1].numpy(), cpu_input(255 - b, 256))


def test_enlarging_is_left_to_the_cpu():
    assert di.needs_cpu_resize(200, 300, 256) and not di.needs_cpu_resize(256, 300, 256)
    with pytest.raises(ValueError, match="smaller than the model input"):
        di.to_model_inputs([torch.zeros(100, 100, dtype=torch.uint8)], 256)


def test_real_siim_frames_decode_and_shrink_to_the_readers_bytes(siim_real):
    files = sorted(siim_real.rglob("*.dcm"))
    frames, inverts, expected = [], [], []
    for path in files:
        image, frame, meta = read_dicom_frame(path)
        assert image is None and frame is not None, path  # all SIIM files are JPEG Baseline
        frames.append(frame)
        inverts.append(meta["Invert"])
        expected.append(to_model_input(read_dicom(path)[0], 256))
    decoded = di.decode_frames(frames, "cpu")
    got = di.to_model_inputs(decoded, 256, inverts)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g.numpy(), e)
    assert any(inverts)  # the MONOCHROME1 copy among them is turned over


def test_frames_only_for_plain_jpeg_baseline(tmp_path):
    picture = chest_like(64)
    jpeg = write_dicom(tmp_path / "j.dcm", picture, jpeg=True)
    raw = write_dicom(tmp_path / "r.dcm", picture)
    image, frame, meta = read_dicom_frame(jpeg)
    assert image is None and frame[:2] == b"\xff\xd8" and meta["Invert"] is False
    image, frame, meta = read_dicom_frame(raw)
    assert frame is None and "Invert" not in meta
    np.testing.assert_array_equal(image, read_image(raw)[0])


def test_a_bad_frame_is_its_own_error():
    good = cv2.imencode(".jpg", chest_like(32))[1].tobytes()
    out = di.decode_frames([good, b"\xff\xd8 not a jpeg"], "cpu")
    assert isinstance(out[0], torch.Tensor) and out[0].shape == (32, 32)
    assert isinstance(out[1], Exception)


def test_no_nvjpeg_without_cuda():
    assert di.jpeg_device_available("cpu") is False
    if not torch.cuda.is_available():
        assert di.jpeg_device_available("cuda") is False


def test_choose_decoder_for_each_option():
    cuda = torch.cuda.is_available()
    assert di.choose_decoder("cpu", "cuda") is None
    assert di.choose_decoder("auto", "cpu") is None  # the CPU reader is faster there
    assert di.choose_decoder("auto", "cuda") == ("cuda" if cuda else None)
    assert di.choose_decoder("auto", "cuda", runtime="onnx") is None
    assert di.choose_decoder("device", "cpu") == "cpu"  # the batched path, on the CPU
    assert di.choose_decoder("device", "cuda:0") == ("cuda:0" if cuda else "cpu")
    with pytest.raises(ValueError, match="--decode 'gpu': expected one of auto, device, cpu"):
        di.choose_decoder("gpu", "cuda")
    with pytest.raises(ValueError, match="--decode device needs the torch runtime"):
        di.choose_decoder("device", "cpu", runtime="openvino")


def test_decode_to_inputs_hands_refused_frames_back():
    pictures = [chest_like(64, seed=i) for i in range(4)]
    frames = [cv2.imencode(".jpg", p)[1].tobytes() for p in pictures]
    frames[1] = b"\xff\xd8 not a jpeg"
    shapes = [(64, 64), (64, 64), (64, 48), (64, 64)]  # frame 2: not the header's shape
    got = di.decode_to_inputs(frames, shapes, [False, False, False, True], 32, "cpu")
    assert got.decoded == [0, 3] and sorted(got.refused) == [1, 2]
    assert "(64, 48)" in got.refused[2]
    assert got.inputs.shape == (2, 32, 32) and got.inputs.dtype == torch.uint8
    decoded = [cv2.imdecode(np.frombuffer(frames[i], np.uint8), 0) for i in (0, 3)]
    expected = [cpu_input(decoded[0], 32), cpu_input(255 - decoded[1], 32)]
    np.testing.assert_array_equal(got.inputs.numpy(), np.stack(expected))
    small = di.decode_to_inputs(frames[:1], [(64, 64)], [False], 128, "cpu")
    assert small.inputs is None and "smaller than the model input 128" in small.refused[0]


@pytest.mark.gpu
def test_nvjpeg_and_gpu_resize_against_the_cpu(siim_real):
    files = sorted(siim_real.rglob("*.dcm"))
    frames, inverts, expected = [], [], []
    for path in files:
        _, frame, meta = read_dicom_frame(path)
        frames.append(frame)
        inverts.append(meta["Invert"])
        expected.append(to_model_input(read_dicom(path)[0], 512))
    decoded = di.decode_frames(frames, "cuda")
    assert all(d.is_cuda for d in decoded)
    got = di.to_model_inputs(decoded, 512, inverts).cpu().numpy()
    diff = np.abs(got.astype(int) - np.stack(expected).astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.05  # nvJPEG rounds its IDCT its own way
    # The resize alone is exact on the GPU too.
    pictures = [torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1024, 1024), np.uint8))]
    on_gpu = di.to_model_inputs([p.cuda() for p in pictures], 512).cpu()
    assert torch.equal(on_gpu, di.to_model_inputs(pictures, 512))
