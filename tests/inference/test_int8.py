"""int8 that checks itself: the node groups it can keep in fp32, the ladder of remedies, the
measured agreement stored in the file, the refusal with its numbers, the warning on load."""

import warnings

import numpy as np
import onnx
import pytest
import torch
from predict_helpers import ConfidentModel, disc_images
from torch import nn

from ptxseg.inference import int8
from ptxseg.inference.export import export_onnx
from ptxseg.inference.int8 import (
    FAITHFUL_DICE,
    Int8AgreementWarning,
    Int8Refused,
    Recipe,
    checked_quantize,
    ladder,
    mask_agreement,
    nodes_in_groups,
    warn_if_unchecked,
)
from ptxseg.inference.onnx import read_metadata, write_onnx
from ptxseg.inference.predictor import Predictor
from ptxseg.model.operating_point import OperatingPoint
from ptxseg.util.system import CpuInfo


class MobileBlockModel(nn.Module):
    """A stem, a depthwise convolution with SiLU, a squeeze-excitation gate and a head: the
    parts of an EfficientNet that quantise badly, in 64x64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se_reduce, self.se_expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.segmentation_head = nn.Conv2d(8, 1, 1)
        self.input_size, self.encoder, self.config, self.operating_point = 64, "mb", {}, None

    def forward(self, x):
        x = nn.functional.silu(self.depthwise(nn.functional.silu(self.stem(x))))
        squeezed = nn.functional.silu(self.se_reduce(x.mean((2, 3), keepdim=True)))
        gate = torch.sigmoid(self.se_expand(squeezed))
        return self.segmentation_head(x * gate)


def test_node_groups_are_found_by_structure(tmp_path):
    write_onnx(MobileBlockModel(), tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    by_name = {n.name: n for n in graph.node}

    def ops(groups):
        return sorted(by_name[n].op_type for n in nodes_in_groups(graph, groups))

    assert ops(["first_conv"]) == ["Conv"] and "stem" in nodes_in_groups(graph, ["first_conv"])[0]
    assert "segmentation_head" in nodes_in_groups(graph, ["head"])[0]
    assert "depthwise" in nodes_in_groups(graph, ["depthwise"])[0]
    # the gate: pool, reduce, SiLU, expand, sigmoid, and the Mul that scales the block
    se = ops(["squeeze_excitation"])
    assert se.count("Conv") == 2 and "Mul" in se and "Sigmoid" in se
    assert any(op in se for op in ("GlobalAveragePool", "ReduceMean"))
    assert ops(["silu"]) == ["Mul"] * 3 + ["Sigmoid"] * 3  # stem, depthwise, inside the gate
    with pytest.raises(ValueError, match="unknown node groups.*first_conv"):
        nodes_in_groups(graph, ["attention"])


def test_the_ladder_adds_one_remedy_a_step():
    steps = ladder(8)
    assert steps[0] == Recipe("plain int8", images=8)
    assert [s.per_channel for s in steps] == [False] + [True] * 5
    assert steps[2].keep_fp32 == ("first_conv", "head")
    assert set(steps[3].keep_fp32) == set(int8.GROUPS)
    assert [s.method for s in steps[3:]] == ["minmax", "percentile", "entropy"]
    assert "per-tensor weights, nothing in fp32, minmax calibration on 8" in steps[0].describe()


def test_agreement_falls_back_to_ungated_masks_and_says_when_it_cannot_decide():
    op = OperatingPoint(top=0.9, bottom=0.5, min_area=10_000)  # a gate nothing passes
    ref = np.zeros((2, 16, 16), np.float32)
    ref[0, :8] = 0.7
    got = ref.copy()
    got[0, :4] = 0.1
    agreement = mask_agreement(ref, got, op)
    assert agreement.masks == "before the area gate"
    assert agreement.dice == pytest.approx(2 * 64 / (128 + 64))
    empty = mask_agreement(np.zeros_like(ref), got, op)
    assert not empty.conclusive and "not measurable" in empty.describe()


def _exported(tmp_path, model) -> tuple:
    export_onnx(model, tmp_path / "m.onnx")
    predictor = Predictor(tmp_path / "m.onnx", runtime="onnxruntime", tta="none")
    images = disc_images(6)
    inputs = np.stack([predictor.model_input(im) for im in images])

    def probabilities_of(path):
        p = Predictor(path, runtime="onnxruntime", tta="none")
        return p.probabilities(inputs)

    return predictor, images, probabilities_of


def test_a_faithful_int8_file_records_its_check(tmp_path):
    predictor, images, probabilities_of = _exported(tmp_path, ConfidentModel())
    cpu = CpuInfo("test CPU", 2, frozenset({"avx2"}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Int8AgreementWarning)  # attempts have no record yet
        check = checked_quantize(
            tmp_path / "m.onnx",
            tmp_path / "q.onnx",
            images,
            probabilities_of,
            predictor.operating_point,
            reduce_range=True,
            source="6 disc images",
            cpu=cpu,
        )
    assert check.kept is check.attempts[-1] and check.kept.agreement.dice >= FAITHFUL_DICE
    stored = read_metadata(tmp_path / "q.onnx")["int8_check"]
    assert stored["dice_vs_fp32"] == check.kept.agreement.dice and stored["faithful"]
    assert stored["images"] == 6 and stored["source"] == "6 disc images"
    assert stored["recipe"]["name"] == check.kept.recipe.name
    assert stored["cpu"] == "test CPU; avx2" and stored["reduce_range"] is True
    assert not list(tmp_path.glob(".int8-*"))  # the attempts are gone


def test_every_remedy_is_tried_before_a_refusal_with_the_numbers(tmp_path):
    predictor, images, probabilities_of = _exported(tmp_path, ConfidentModel())
    seen = []

    def worse(path):  # int8 that always loses a third of the mask
        probs = probabilities_of(path)
        if "attempt" in path.name:
            seen.append(path.name)
            probs[:, : probs.shape[1] // 3] = 0
        return probs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Int8AgreementWarning)
        with pytest.raises(Int8Refused) as refused:
            checked_quantize(
                tmp_path / "m.onnx",
                tmp_path / "q.onnx",
                images,
                worse,
                predictor.operating_point,
                reduce_range=True,
                source="6 disc images",
                calibration_images=2,
            )
    # six recipes, then the best of them on more images (all 6 here)
    assert len(seen) == 7 and refused.value.check.attempts[-1].recipe.images == 6
    text = str(refused.value.with_alternatives("onnxruntime fp32 keeps 1.000 at 1.8x"))
    assert text.startswith("int8 (7 bits: no VNNI on this CPU) keeps 0.")
    assert "6 disc images" in text and "plain int8 0." in text and "entropy" in text
    assert "Faithful on this CPU: onnxruntime fp32 keeps 1.000 at 1.8x" in text
    assert not (tmp_path / "q.onnx").exists()


def test_int8_refuses_images_without_masks_to_compare(tmp_path):
    predictor, _, probabilities_of = _exported(tmp_path, ConfidentModel())
    dark = [np.full((64, 64), 0.1, np.float32)] * 3
    with pytest.raises(Int8Refused, match="cannot be checked on 3 images.*--data WORK"):
        checked_quantize(
            tmp_path / "m.onnx",
            tmp_path / "q.onnx",
            dark,
            lambda path: Predictor(path, runtime="onnxruntime", tta="none").probabilities(
                np.stack([predictor.model_input(im) for im in dark])
            ),
            predictor.operating_point,
        )


def test_stored_int8_files_warn_unless_checked_faithful_on_this_kind_of_cpu():
    cpu = CpuInfo("here", 2, frozenset({"avx2"}))
    checked = {"cpu": "there; avx2", "dice_vs_fp32": 0.995}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unchecked({"precision": "int8", "int8_check": checked}, "q.onnx", cpu)
        warn_if_unchecked({"precision": "fp32"}, "m.onnx", cpu)
    with pytest.warns(Int8AgreementWarning, match="does not record how well"):
        warn_if_unchecked({"precision": "int8"}, "q.onnx", cpu)
    low = dict(checked, dice_vs_fp32=0.91)
    with pytest.warns(Int8AgreementWarning, match="Dice 0.910, below 0.99"):
        warn_if_unchecked({"precision": "int8", "int8_check": low}, "q.onnx", cpu)
    other = dict(checked, cpu="there; avx2 avx512f avx512_vnni")
    with pytest.warns(Int8AgreementWarning, match="checked on another CPU"):
        warn_if_unchecked({"precision": "int8", "int8_check": other}, "q.onnx", cpu)


def test_predictor_int8_needs_real_images_and_keeps_its_check():
    model = ConfidentModel()
    with pytest.raises(ValueError, match="needs real images.*export --int8"):
        Predictor(model, runtime="onnxruntime", precision="int8")
    images = disc_images(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Predictor(model, runtime="onnxruntime", precision="int8", calibration=images)
    assert p.int8_check.kept.agreement.dice >= FAITHFUL_DICE
    assert read_metadata(p.onnx_path)["int8_check"]["source"] == "the given images"
