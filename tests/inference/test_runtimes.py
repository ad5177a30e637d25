"""Runtimes and reduced precision: what a user gets is masks that agree with fp32, or a refusal
that names the missing instructions. int8 is checked where users look: the masks at the
operating point of a model that is sure of itself, and the structure of the quantised graph."""

import warnings

import numpy as np
import onnx
import pytest
from predict_helpers import ConfidentModel, disc_images
from torch import nn

from ptxseg.inference import runtimes
from ptxseg.inference.export import export_onnx
from ptxseg.inference.onnx import quantize_onnx, read_metadata
from ptxseg.inference.predictor import Predictor
from ptxseg.inference.runtimes import PrecisionUnavailable, cpu_precision_plan
from ptxseg.util.system import CpuInfo, cpu_info

AVX2 = CpuInfo("AVX2-only CPU", 2, frozenset({"avx2", "fma"}))
VNNI_BF16 = CpuInfo("AVX-512 CPU", 2, frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.parametrize("cpu", [VNNI_BF16, AVX2], ids=["vnni", "avx2-only"])
def test_int8_masks_agree_with_fp32_at_the_operating_point(cpu, monkeypatch):
    """The int8 kernels are this machine's: full 8 bits run only where the CPU has VNNI (elsewhere
    they saturate, which is why the plan asks for 7 bits there); 7 bits run on every CPU."""
    if cpu is VNNI_BF16 and not cpu_info().vnni:
        pytest.skip(
            f"full 8-bit int8 needs VNNI, which this CPU ({cpu_info().isa()}) lacks; the plan "
            "for such CPUs is tested with faked instruction sets"
        )
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
