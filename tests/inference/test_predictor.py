"""Predictor: preprocessing, TTA, the operating point, alignment at the original size, runtimes,
Grad-CAM."""

import warnings

import numpy as np
import pytest
import torch
from predict_helpers import RegionModel, TinyUnet, make_checkpoint

from ptxseg.data.preprocess import to_model_input
from ptxseg.inference.predictor import Predictor, full_size_mask
from ptxseg.model.operating_point import OperatingPoint, OperatingPointWarning
from ptxseg.util.system import cpu_info


def test_mask_comes_back_aligned_at_the_original_size():
    # model grid 64: region cols 8:24, rows 16:40 -> original 128 x 256 (H x W) scales by 2 and 4
    pred = Predictor(RegionModel(box=(8, 16, 24, 40))).predict(
        np.zeros((128, 256), np.float32), {"ImageId": "a", "ViewPosition": "PA"}
    )
    assert pred.mask.shape == pred.probability.shape == (128, 256)
    x0, y0, x1, y1 = pred.findings["bbox"]
    assert abs(x0 - 32) <= 2 and abs(x1 - 96) <= 2 and abs(y0 - 32) <= 1 and abs(y1 - 80) <= 1
    assert pred.findings["side"] == "right"  # image left, PA view
    assert pred.findings["probability"] == pytest.approx(1 / (1 + np.exp(-8)), abs=1e-5)


def test_stored_operating_point_gates_small_masks():
    small = RegionModel(box=(0, 0, 2, 2), operating_point=OperatingPoint(0.5, 0.5, 10))
    pred = Predictor(small).predict(np.zeros((64, 64), np.float32))
    assert not pred.mask.any() and pred.findings["pneumothorax"] is False
    override = Predictor(small, operating_point={"top": 0.5, "bottom": 0.5, "min_area": 4})
    assert override.predict(np.zeros((64, 64), np.float32)).mask.sum() == 4


def test_the_gate_decides_at_the_model_size_and_bottom_at_full_size():
    rng = np.random.default_rng(0)
    prob = (rng.random((64, 64)) ** 4).astype(np.float32)
    for min_area in (0, 5, 50, 4000):
        op = OperatingPoint(0.8, 0.3, min_area)
        full, mask = full_size_mask(prob, (128, 96), op)
        assert full.shape == mask.shape == (128, 96)
        assert mask.any() == bool(op.apply(prob).any())
        if mask.any():
            assert np.array_equal(mask, full > 0.3)


class RampModel(RegionModel):
    """Logits rise from -8 at the left edge to +8 at the right, whatever the image: a model that
    is not flip-equivariant, so the flipped pass of TTA differs from the plain one."""

    def forward(self, x):
        ramp = torch.linspace(-8, 8, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
        return ramp * self.scale + 0.0 * x


def test_hflip_tta_averages_the_flipped_prediction():
    image = np.random.default_rng(0).random((64, 64), np.float32)
    plain = Predictor(RampModel(), tta="none").predict(image).probability
    tta = Predictor(RampModel(), tta="hflip").predict(image).probability
    np.testing.assert_allclose(tta, (plain + plain[:, ::-1]) / 2, atol=1e-6)
    assert plain[:, 0].max() < 0.01 and abs(float(tta.mean()) - 0.5) < 1e-5


def test_tta_follows_the_stored_operating_point_and_warns_when_it_differs():
    searched = OperatingPoint(0.5, 0.5, 0, tta="hflip", input_size=64)
    assert Predictor(RegionModel(operating_point=searched)).tta == "hflip"
    assert Predictor(RegionModel()).tta == "none"
    with pytest.warns(OperatingPointWarning, match="searched with TTA 'hflip'"):
        Predictor(RegionModel(operating_point=searched), tta="none")
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        Predictor(RegionModel(), tta="vflip")


def test_model_input_is_the_8_bit_picture_that_prepare_caches():
    image = np.random.default_rng(3).random((200, 150), np.float32)
    p = Predictor(RegionModel())
    assert np.array_equal(p.model_input(image), to_model_input(image, 64))
    assert p.model_input(image).dtype == np.uint8
    with pytest.raises(ValueError, match=r"expected \(B, 64, 64\)"):
        p.probabilities(np.zeros((1, 32, 32), np.uint8))


def test_checkpoint_predictor_batches_and_matches_single():
    model = TinyUnet()
    p = Predictor(model, batch_size=2)
    images = [np.random.default_rng(i).random((70 + i, 90), np.float32) for i in range(3)]
    batch = p.predict_batch(images, [{}] * 3)
    for image, got in zip(images, batch, strict=True):
        assert got.probability.shape == image.shape
        np.testing.assert_allclose(got.probability, p.predict(image).probability, atol=1e-5)


def test_loads_a_real_checkpoint_with_its_operating_point(tmp_path):
    ckpt = make_checkpoint(
        tmp_path / "m.ckpt", "resnet50", 64, {"top": 0.7, "bottom": 0.4, "min_area": 5}
    )
    p = Predictor(ckpt)
    assert (p.encoder, p.input_size) == ("resnet50", 64)
    assert p.operating_point == OperatingPoint(0.7, 0.4, 5)
    out = p.predict(np.random.default_rng(0).random((100, 80), np.float32))
    assert out.mask.shape == (100, 80) and np.isfinite(out.probability).all()


@pytest.mark.parametrize(
    ("runtime", "precision", "tol"), [("torch", "bf16", 0.05), ("onnxruntime", "fp32", 1e-4)]
)
def test_runtimes_agree_with_torch_fp32(runtime, precision, tol):
    if precision == "bf16" and not cpu_info().native_bf16:
        pytest.skip(
            f"this CPU ({cpu_info().isa()}) has no bf16 instructions, so bf16 is refused here "
            "(tests/inference/test_runtimes.py checks the refusal)"
        )
    model = TinyUnet()
    image = np.random.default_rng(1).random((64, 64), np.float32)
    ref = Predictor(model).predict(image).probability
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Predictor(model, runtime=runtime, precision=precision, calibration=[image])
        got = p.predict(image).probability
    assert np.abs(got - ref).max() < tol, np.abs(got - ref).max()


def test_unsupported_combinations_say_what_to_use(tmp_path):
    with pytest.raises(ValueError, match="onnxruntime or openvino for int8"):
        Predictor(TinyUnet(), runtime="torch", precision="int8")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        Predictor(TinyUnet(), runtime="tensorrt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        Predictor(tmp_path / "missing.ckpt")


def test_grad_cam_highlights_the_image_and_is_normalised():
    p = Predictor(TinyUnet())
    cam = p.explain(np.random.default_rng(2).random((96, 80), np.float32))
    assert cam.shape == (96, 80) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)


def test_explain_needs_the_torch_model():
    p = Predictor.__new__(Predictor)
    p.model = None
    with pytest.raises(ValueError, match="PyTorch model"):
        p.explain(np.zeros((8, 8), np.float32))


# --- the device path (torch runtime): probabilities and masks on the device, compiled model ---


def test_probabilities_on_the_device_match_the_host_call():
    p = Predictor(TinyUnet(), batch_size=2, tta="hflip")
    inputs = np.random.default_rng(3).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    on_device = p.probabilities_on_device(p.upload(inputs))
    assert isinstance(on_device, torch.Tensor) and on_device.shape == (5, 64, 64)
    np.testing.assert_array_equal(on_device.numpy(), p.probabilities(inputs))
    with pytest.raises(ValueError, match=r"expected \(B, 64, 64\)"):
        p.probabilities_on_device(torch.zeros(1, 32, 32, dtype=torch.uint8))


def test_masks_made_on_the_device_match_the_cpu_masks():
    from ptxseg.inference.predictor import full_size_masks_on_device

    op = OperatingPoint(top=0.6, bottom=0.4, min_area=10)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(4, 1, 72, 72), 9, 1)[:, 0]
    probs = ((smooth - smooth.amin()) / (smooth.amax() - smooth.amin())).numpy()
    probs[3] *= 0.5  # nothing above top: gated to empty
    shapes = [(256, 256), (200, 300), (64, 64), (256, 256)]
    masks, peaks = full_size_masks_on_device(torch.from_numpy(probs), shapes, op)
    agree = total = 0
    for prob, shape, mask, peak in zip(probs, shapes, masks, peaks, strict=True):
        _, expected = full_size_mask(prob, shape, op)
        assert mask.shape == shape and float(peak) == pytest.approx(float(prob.max()))
        agree += int((mask.numpy() & expected).sum())
        total += int(mask.sum()) + int(expected.sum())
    assert not masks[3].any() and 2 * agree / total > 0.9999


def test_compiled_predictor_matches_eager_and_pads_the_last_batch(monkeypatch):
    monkeypatch.setenv("PTXSEG_COMPILE_BACKEND", "aot_eager")
    model = TinyUnet()
    inputs = np.random.default_rng(4).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    eager = Predictor(model, batch_size=4).probabilities(inputs)
    compiled = Predictor(model, batch_size=4, compile=True)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    got = compiled.probabilities(inputs)  # batches of 4 and 1, the 1 padded to 4
    assert got.shape == (5, 64, 64) and set(seen) == {4}
    np.testing.assert_allclose(got, eager, atol=1e-5)
    with pytest.raises(ValueError, match="torch runtime"):
        Predictor(model, runtime="onnxruntime", compile=True)
    with pytest.raises(ValueError, match="reduce-overhead"):
        Predictor(model, compile=True, compile_mode="fastest")


@pytest.mark.gpu
def test_gpu_paths_agree_with_eager_fp32(tmp_path):
    """Compiled and bf16 masks on the GPU against eager fp32 on the CPU: Dice >= 0.99."""
    model = TinyUnet(seed=1)
    image = np.random.default_rng(2).random((256, 256), np.float32)
    images = [np.roll(image, k, axis=1) for k in range(8)]
    ref = Predictor(model, batch_size=4).predict_batch(images, [{}] * 8)
    for options in ({"precision": "bf16"}, {"precision": "bf16", "compile": True}):
        p = Predictor(TinyUnet(seed=1), device="cuda", batch_size=4, **options)
        got = p.predict_batch(images, [{}] * 8)
        inter = sum(int((a.mask & b.mask).sum()) for a, b in zip(ref, got, strict=True))
        total = sum(int(a.mask.sum() + b.mask.sum()) for a, b in zip(ref, got, strict=True))
        assert total == 0 or 2 * inter / total >= 0.99, options
