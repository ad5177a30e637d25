"""Runtimes and reduced precision: what a user gets is masks that agree with fp32, or a refusal
that names the missing instructions. int8 is checked where users look: the masks at the
operating point of a model that is sure of itself, and the structure of the quantised graph."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from ptxseg.inference import runtimes
from ptxseg.inference.export import export_onnx
from ptxseg.inference.onnx import quantize_onnx, read_metadata
from ptxseg.inference.predictor import Predictor
from ptxseg.inference.runtimes import PrecisionUnavailable, cpu_precision_plan
from ptxseg.system import CpuInfo

AVX2 = CpuInfo("AVX2-only CPU", 2, frozenset({"avx2", "fma"}))
VNNI_BF16 = CpuInfo("AVX-512 CPU", 2, frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))


class ConfidentModel(nn.Module):
    """logit = 40 * (local mean brightness - 0.5): bright discs are pneumothorax, surely."""

    def __init__(self, size: int = 64):
        super().__init__()
        self.features = nn.Conv2d(1, 2, 3, padding=1)
        self.segmentation_head = nn.Conv2d(2, 1, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.stack([torch.full((1, 3, 3), 1 / 9)] * 2))
            self.features.weight[1] *= -1
            self.features.bias.copy_(torch.tensor([-0.5, 0.5]))
            self.segmentation_head.weight.copy_(torch.tensor([40.0, -40.0]).view(1, 2, 1, 1))
            self.segmentation_head.bias.zero_()
        self.input_size, self.encoder, self.config, self.operating_point = size, "conv", {}, None

    def forward(self, x):
        return self.segmentation_head(torch.relu(self.features(x)))


def disc_images(n: int = 8, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for _ in range(n):
        image = 0.2 + 0.05 * rng.random((size, size))
        for _ in range(2):
            cy, cx, r = rng.integers(12, size - 12, 2).tolist() + [int(rng.integers(4, 10))]
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.8
        images.append(image.astype(np.float32))
    return images


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.parametrize("cpu", [VNNI_BF16, AVX2], ids=["vnni", "avx2-only"])
def test_int8_masks_agree_with_fp32_at_the_operating_point(cpu, monkeypatch):
    monkeypatch.setattr(runtimes, "cpu_info", lambda: cpu)
    images = disc_images()
    model = ConfidentModel()
    ref = [p.mask for p in Predictor(model).predict_batch(images, [{}] * len(images))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = Predictor(model, runtime="onnxruntime", precision="int8", calibration=images[:4])
    got = [p.mask for p in q.predict_batch(images, [{}] * len(images))]
    assert sum(m.sum() for m in ref) > 500  # masks to agree on
    assert _dice(np.stack(got), np.stack(ref)) >= 0.99
    assert q.precision_plan["reduce_range"] is (cpu is AVX2)


def test_int8_graph_is_qdq_with_the_segmentation_head_in_fp32(tmp_path):
    model = ConfidentModel()
    export_onnx(model, tmp_path / "m.onnx")
    quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", disc_images(4), reduce_range=True)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    produced_by = {out: n for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    head = [n for n in convs if "segmentation_head" in n.name]
    body = [n for n in convs if "segmentation_head" not in n.name]
    assert len(head) == 1 and body
    assert head[0].input[1] not in produced_by  # fp32 initializer, not a dequantised weight
    assert all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in body)
    meta = read_metadata(tmp_path / "q.onnx")
    assert meta["precision"] == "int8" and meta["reduce_range"] is True


def test_bf16_is_refused_where_it_would_be_emulated(monkeypatch):
    with pytest.raises(PrecisionUnavailable, match="AVX-512 BF16 or AMX-BF16.*AVX2-only CPU"):
        cpu_precision_plan("bf16", "cpu", AVX2)
    assert cpu_precision_plan("bf16", "cpu", VNNI_BF16) == {"reduce_range": False, "note": ""}
    assert cpu_precision_plan("bf16", "cuda", AVX2)["reduce_range"] is False  # GPUs decide
    assert cpu_precision_plan("fp32", "cpu", CpuInfo("bare", 1, frozenset()))["note"] == ""
    monkeypatch.setattr(runtimes, "cpu_info", lambda: AVX2)
    with pytest.raises(PrecisionUnavailable, match="Use --precision fp32"):
        Predictor(ConfidentModel(), precision="bf16")


def test_an_8_bit_int8_file_is_refused_on_a_cpu_without_vnni(tmp_path, monkeypatch):
    export_onnx(ConfidentModel(), tmp_path / "m.onnx")
    quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", disc_images(2))
    monkeypatch.setattr(runtimes, "cpu_info", lambda: AVX2)
    with pytest.raises(PrecisionUnavailable, match="re-export with `ptxseg export --int8`"):
        Predictor(tmp_path / "q.onnx", runtime="onnxruntime", precision="int8")
    note = cpu_precision_plan("int8", "cpu", AVX2)["note"]
    assert "reduce_range" in note and "no VNNI" in note


def test_upload_copies_a_read_only_batch_instead_of_aliasing_it():
    """A memory-mapped cache is read-only; torch must not get a tensor over it (it warns, and
    writing to it would be undefined)."""

    from ptxseg.inference.torch_runner import TorchRunner

    batch = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    batch.flags.writeable = False
    uploaded = TorchRunner(nn.Conv2d(1, 1, 1), "cpu").upload(batch)
    assert not np.shares_memory(uploaded.numpy(), batch)
    np.testing.assert_array_equal(uploaded.numpy(), batch)
