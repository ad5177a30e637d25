"""`--runtime auto` / `--precision auto`: which paths each kind of CPU tries, the rule that picks
the fastest faithful one, the cache, and the Predictor it builds. The CPUs are faked
(instruction sets) and so are the measurements: the suite does not pay for the check."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
from predict_helpers import ConfidentModel, disc_images

from ptxseg.inference import choice, int8, runtimes
from ptxseg.inference.choice import (
    CheckImages,
    ChoiceHooks,
    Measurement,
    cache_key,
    candidates,
    decide,
    default_check_images,
)
from ptxseg.inference.export import export_onnx
from ptxseg.inference.int8 import Int8Refused
from ptxseg.inference.loaded import LoadedModel
from ptxseg.inference.spec import PredictorSpec
from ptxseg.util.system import CpuInfo


def build_predictor(model, **options):
    """The library's `build_predictor` with the spec's fields and the hooks' as keywords."""
    hook_keys = {f.name for f in dataclasses.fields(ChoiceHooks)}
    hooks = ChoiceHooks(**{k: v for k, v in options.items() if k in hook_keys})
    spec = PredictorSpec(model, **{k: v for k, v in options.items() if k not in hook_keys})
    return choice.build_predictor(spec, hooks)


AVX2 = CpuInfo("AMD EPYC (AVX2)", 2, frozenset({"avx2", "fma"}))
AVX512 = CpuInfo("Intel Xeon (Skylake)", 2, frozenset({"avx2", "avx512f"}))
AVX512_VNNI = CpuInfo("Intel Xeon (Cascade Lake)", 2, frozenset({"avx2", "avx512f", "avx512_vnni"}))
AVX512_BF16 = CpuInfo(
    "AMD EPYC (Zen 4)", 2, frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
)
AMX = CpuInfo(
    "Intel Xeon (Sapphire Rapids)",
    2,
    frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}),
)

# The measurements on an AVX-512 BF16 EPYC (EfficientNet-B0): x eager fp32, Dice vs fp32
ZEN4_TABLE = {
    ("torch", "fp32"): (1.0, None),
    ("onnxruntime", "fp32"): (1.77, 1.0),
    ("openvino", "fp32"): (1.6, 1.0),
    ("openvino", "bf16"): (3.78, 0.996),
    ("torch", "bf16"): (1.83, 0.995),
    ("onnxruntime", "int8"): (3.06, 0.914),
    ("openvino", "int8"): (3.35, 0.914),
}


def names(paths):
    return [choice.path_name(*p) for p in paths]


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (AVX2, ["torch fp32", "onnxruntime fp32", "openvino fp32"]),
        (AVX512, ["torch fp32", "onnxruntime fp32", "openvino fp32"]),
        (
            AVX512_VNNI,
            ["torch fp32", "onnxruntime fp32", "openvino fp32"]
            + ["onnxruntime int8", "openvino int8"],
        ),
        (AVX512_BF16, [choice.path_name(*p) for p in choice.PATHS]),
        (AMX, [choice.path_name(*p) for p in choice.PATHS]),
    ],
    ids=["avx2", "avx512-no-bf16", "avx512-vnni", "avx512-bf16", "amx"],
)
def test_each_cpu_tries_the_paths_it_runs_well(cpu, expected):
    paths, skipped = candidates(cpu=cpu, is_installed=lambda rt: True)
    assert names(paths) == expected
    if not cpu.native_bf16:
        assert skipped["torch bf16"] == skipped["openvino bf16"] == "no AVX-512 BF16 or AMX"
    if not cpu.vnni:
        assert "no VNNI" in skipped["onnxruntime int8"]


def test_what_was_asked_and_what_is_installed_narrow_the_paths():
    paths, skipped = candidates(
        "onnxruntime", "auto", AMX, is_installed=lambda rt: rt != "openvino"
    )
    assert names(paths) == ["onnxruntime fp32", "onnxruntime int8"]
    paths, skipped = candidates(cpu=AMX, is_installed=lambda rt: rt != "openvino")
    assert skipped["openvino bf16"] == "openvino is not installed"
    paths, skipped = candidates(cpu=AMX, int8_on_the_fly=False, is_installed=lambda rt: True)
    assert "export --int8" in skipped["onnxruntime int8"]
    paths, _ = candidates(cpu=AMX, model_kind="onnx-int8", is_installed=lambda rt: True)
    assert names(paths) == ["onnxruntime int8", "openvino int8"]
    paths, skipped = candidates(cpu=AVX2, model_kind="onnx", is_installed=lambda rt: True)
    assert names(paths) == ["onnxruntime fp32", "openvino fp32"] and "torch fp32" in skipped
    with pytest.raises(ValueError, match="--precision 'fp16': expected auto or one of"):
        candidates("auto", "fp16", AVX2)


def table(rows, base: float = 10.0, memory: dict | None = None) -> list[Measurement]:
    return [
        Measurement(
            rt,
            prec,
            images_per_s=base * speed,
            dice_vs_fp32=dice,
            memory_mb=(memory or {}).get((rt, prec), 100.0),
            reference=(rt, prec) == ("torch", "fp32"),
        )
        for (rt, prec), (speed, dice) in rows.items()
    ]


def test_the_fastest_faithful_path_wins_on_an_avx512_bf16_cpu():
    best, reasons = decide(table(ZEN4_TABLE))
    assert best.name == "openvino bf16" and best.images_per_s / 10.0 >= 2.5
    assert reasons["openvino int8"] == "masks at Dice 0.914 vs fp32, below 0.99"
    faithful_int8 = {**ZEN4_TABLE, ("openvino", "int8"): (4.2, 0.993)}
    assert decide(table(faithful_int8))[0].name == "openvino int8"


def test_memory_hungry_paths_and_unchecked_reduced_precision_lose():
    memory = {("openvino", "bf16"): 900.0}  # the fp32 reference adds 100 MB
    best, reasons = decide(table(ZEN4_TABLE, memory=memory))
    assert best.name == "torch bf16" and "much more memory (900 MB" in reasons["openvino bf16"]
    best, reasons = decide(table(ZEN4_TABLE), conclusive=False)
    assert best.name == "onnxruntime fp32"
    assert "synthetic images" in reasons["openvino bf16"]
    failed = table(ZEN4_TABLE)
    failed[1].error, failed[1].images_per_s = "RuntimeError: no kernel", None
    assert decide(failed, allowed=[("onnxruntime", "fp32"), ("torch", "fp32")])[0].reference


class FakeMeasure:
    """Stands in for `measure_paths`: the table's numbers, no model run."""

    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def __call__(self, model, paths, reference, check, **kwargs):
        self.calls.append((list(paths), reference, check.source))
        wanted = ([reference] if reference else []) + [p for p in paths if p != reference]
        return table({p: self.rows[p] for p in wanted}), {}


@pytest.fixture
def cpu_is(monkeypatch, tmp_path):
    """Fake this machine's CPU for the choice and the runtimes; a fresh cache folder."""
    monkeypatch.setenv("PTXSEG_CACHE_DIR", str(tmp_path / "cache"))

    def fake(cpu):
        monkeypatch.setattr(choice, "cpu_info", lambda: cpu)
        monkeypatch.setattr(runtimes, "cpu_info", lambda: cpu)
        monkeypatch.setattr(int8, "cpu_info", lambda: cpu)

    return fake


def disc_check(size, config):
    return CheckImages(disc_images(4), "4 disc images")


def test_predict_on_an_avx512_bf16_cpu_runs_openvino_bf16_at_2_5x(cpu_is):
    cpu_is(AVX512_BF16)
    fake = FakeMeasure(ZEN4_TABLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = build_predictor(ConfidentModel(), images=disc_check, measure=fake)
    assert (p.runtime, p.precision) == ("openvino", "bf16")
    line = p.path_choice["line"]
    assert line.startswith("openvino bf16: 3.78x torch fp32, masks at Dice 0.996 vs fp32")
    assert "4 images of 4 disc images" in line and "the fastest faithful of 7 paths" in line
    assert p.path_choice["chosen_by"] == "auto"
    assert fake.calls[0][1] == ("torch", "fp32") and len(fake.calls[0][0]) == 7


def test_predict_on_an_avx2_cpu_runs_the_best_faithful_fp32_path(cpu_is):
    cpu_is(AVX2)
    fake = FakeMeasure(ZEN4_TABLE)
    p = build_predictor(ConfidentModel(), images=disc_check, measure=fake)
    assert (p.runtime, p.precision) == ("onnxruntime", "fp32")
    assert names(fake.calls[0][0]) == ["torch fp32", "onnxruntime fp32", "openvino fp32"]
    line = p.path_choice["line"]
    assert "not tried: torch bf16, openvino bf16 (no AVX-512 BF16 or AMX)" in line
    assert "onnxruntime int8, openvino int8 (no VNNI" in line


def test_the_choice_is_cached_until_the_cpu_or_the_model_changes(cpu_is, tmp_path):
    cpu_is(AVX2)
    fake = FakeMeasure(ZEN4_TABLE)
    model = ConfidentModel()
    build_predictor(model, images=disc_check, measure=fake)
    again = build_predictor(model, images=disc_check, measure=fake)
    assert len(fake.calls) == 1 and again.path_choice["chosen_by"] == "auto (cached)"
    assert again.path_choice["line"].endswith("[cached]")
    stored = json.loads(next((tmp_path / "cache" / "runtime-choice").glob("*.json")).read_text())
    assert stored["key"]["cpu"] == AVX2.model and "onnxruntime" in stored["key"]["versions"]
    assert stored["key"]["model"] == LoadedModel.load(model).digest
    cpu_is(AVX512_BF16)
    assert build_predictor(model, images=disc_check, measure=fake).runtime == "openvino"
    assert len(fake.calls) == 2
    other = ConfidentModel()
    with __import__("torch").no_grad():
        other.segmentation_head.bias.fill_(1.0)
    assert LoadedModel.load(other).digest != LoadedModel.load(model).digest
    key = cache_key("d", AVX2)[0]
    assert key != cache_key("d", AVX512_BF16)[0] and key != cache_key("d", AVX2, tta="hflip")[0]


def test_explicit_runtime_and_precision_win_without_a_check(cpu_is):
    cpu_is(AVX2)
    fake = FakeMeasure(ZEN4_TABLE)
    p = build_predictor(
        ConfidentModel(), runtime="torch", precision="fp32", images=disc_check, measure=fake
    )
    assert (p.runtime, p.precision, fake.calls) == ("torch", "fp32", [])
    assert p.path_choice == {
        "runtime": "torch",
        "precision": "fp32",
        "chosen_by": "asked",
        "line": "torch fp32 as asked",
        "measurements": [],
        "skipped": {},
        "check": {},
    }
    gpu = build_predictor(ConfidentModel(), device="meta", measure=fake)  # any device but a CPU
    assert (gpu.runtime, gpu.precision, gpu.path_choice["chosen_by"]) == ("torch", "fp32", "gpu")


def test_synthetic_images_choose_among_fp32_paths_and_a_real_check_replaces_it(cpu_is):
    cpu_is(AVX512_BF16)
    fake = FakeMeasure(ZEN4_TABLE)
    model = ConfidentModel()

    def synthetic(size, config):
        return CheckImages(disc_images(2), "2 synthetic images (speed only)", real=False)

    assert build_predictor(model, images=synthetic, measure=fake).precision == "fp32"
    assert build_predictor(model, images=disc_check, measure=fake).precision == "bf16"
    assert len(fake.calls) == 2  # the synthetic choice was not reused for real images


def test_measure_paths_runs_each_path_on_the_images(cpu_is):
    """The real measurement on a 64x64 model: every fp32 path gives fp32's masks."""
    cpu_is(AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = build_predictor(ConfidentModel(), images=disc_check, use_cache=False)
    measured = {m["path"]: m for m in p.path_choice["measurements"]}
    assert set(measured) == {"torch fp32", "onnxruntime fp32", "openvino fp32"}
    assert measured["torch fp32"]["reference"] is True
    assert measured["onnxruntime fp32"]["dice_vs_fp32"] == 1.0
    assert all(m["images_per_s"] > 0 and "memory_mb" in m for m in measured.values())
    assert p.describer()["path_choice"] == p.path_choice["line"]


def test_an_int8_refusal_names_the_faithful_alternatives(cpu_is, monkeypatch):
    cpu_is(AVX2)
    monkeypatch.setattr(int8, "FAITHFUL_DICE", 1.01)  # no int8 recipe is good enough
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Int8Refused) as refused:
            build_predictor(
                ConfidentModel(), runtime="onnxruntime", precision="int8", images=disc_check
            )
    text = str(refused.value)
    assert text.startswith("int8 (7 bits: no VNNI on this CPU) keeps ")
    assert "4 images of 4 disc images" in text
    assert "Faithful on this CPU: " in text and "torch fp32 keeps" not in text
    assert "onnxruntime fp32 keeps 1.000 at " in text


def test_an_int8_file_serves_as_made_and_int8_from_fp32_needs_images(cpu_is, tmp_path):
    cpu_is(AVX2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = build_predictor(
            ConfidentModel(), runtime="onnxruntime", precision="int8", images=disc_check
        )
    assert (
        "int8 masks at Dice 1.000 vs fp32 on 4 images of 4 disc images"
        in (made.path_choice["line"])
    )
    (tmp_path / "q.onnx").write_bytes(made.onnx_path.read_bytes())
    p = build_predictor(tmp_path / "q.onnx", int8_on_the_fly=False, use_cache=False)
    assert p.precision == "int8" and "an int8 file (masks at Dice 1.000" in p.path_choice["line"]
    export_onnx(ConfidentModel(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="serve`, `listen` and `dicomweb` take int8 only"):
        build_predictor(
            tmp_path / "m.onnx", runtime="onnxruntime", precision="int8", images=lambda s, c: None
        )


def test_check_images_come_from_the_work_folder_with_masks_first(tmp_path):
    cache = tmp_path / "work" / "cache" / "64"
    cache.mkdir(parents=True)
    images = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((10, 64, 64), np.uint8)
    masks = np.zeros((10, 64, 64), np.uint8)
    masks[[7, 9], :4, :4] = 1
    np.save(cache / "val-images.npy", images)
    np.save(cache / "val-masks.npy", masks)
    found = default_check_images({"data": {"work": str(tmp_path / "work")}}, 64, n=4)
    assert [int(im[0, 0]) for im in found.images] == [0, 1, 7, 9]
    assert found.real and found.source == f"the val split of {tmp_path / 'work'}"
    fallback = default_check_images({}, 64, n=3)
    assert not fallback.real and len(fallback.images) == 3


def test_autos_int8_check_stays_short():
    """auto tries int8's min-max recipes only; the histogram calibrations take minutes."""
    assert [r.method for r in choice.AUTO_INT8_RECIPES] == ["minmax"] * 4
    assert choice.AUTO_INT8_RECIPES[-1].keep_fp32 == tuple(int8.GROUPS)
