"""Model factory: encoders at 64x64, variants, normalisation, weights sources, checkpoint errors."""

import socket
import time

import pytest
import segmentation_models_pytorch as smp
import torch

from ptxseg.config import load_config
from ptxseg.model import unet as model_module
from ptxseg.model.unet import (
    ENCODERS,
    EncoderWeightsError,
    build_model,
    check_encoder,
    hub_reachable,
    load_model,
    preprocessing_params,
)


def _config(encoder="resnet18", **overrides):
    values = {"model.encoder": encoder, "model.encoder_weights": "none", "data.size": 64}
    values.update(overrides)
    return load_config(overrides=values)


def _first_conv(net: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("encoder", ["resnet50", "efficientnet-b0", "xception"])
def test_study_encoders_train_at_64px(encoder):
    torch.manual_seed(0)
    model = build_model(_config(encoder)).train()
    x = torch.rand(2, 1, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 1, 64, 64)
    assert torch.isfinite(logits).all()
    logits.mean().backward()
    first = _first_conv(model.net)
    assert first.in_channels == 1
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_registry_lists_the_study_encoders():
    assert {"resnet50", "xception", *[f"efficientnet-b{i}" for i in range(8)]} <= set(ENCODERS)
    assert check_encoder("mobilenet_v2") == "mobilenet_v2"  # other smp names pass through


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(ValueError, match="unknown encoder 'resnet51'") as info:
        build_model(_config("resnet51"))
    assert "resnet50" in str(info.value) and "xception" in str(info.value)


def test_scse_decoder_attention():
    model = build_model(_config(**{"model.decoder_attention": "scse"}))
    names = {type(m).__name__ for m in model.net.decoder.modules()}
    assert "SCSEModule" in names
    plain = build_model(_config())
    assert "SCSEModule" not in {type(m).__name__ for m in plain.net.decoder.modules()}


def test_aux_head_returns_label_logits():
    model = build_model(_config(**{"model.aux_head": True})).eval()
    x = torch.rand(3, 1, 64, 64)
    mask_logits, label_logits = model.forward_with_aux(x)
    assert mask_logits.shape == (3, 1, 64, 64) and label_logits.shape == (3, 1)
    assert torch.equal(model(x), mask_logits)
    assert build_model(_config()).forward_with_aux(x)[1] is None


def test_normalisation_uses_the_encoder_parameters():
    mean, std = preprocessing_params("xception")
    assert mean == [0.5, 0.5, 0.5] and std == [0.5, 0.5, 0.5]
    config = _config("resnet18")
    model = build_model(config).eval()
    assert config.model.mean == pytest.approx([0.485, 0.456, 0.406])
    x = torch.rand(1, 1, 64, 64)
    expected = model.net((x - sum(config.model.mean) / 3) / (sum(config.model.std) / 3))
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_bn_momentum_overrides_the_encoder_default():
    def momenta(model):
        return {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert min(momenta(build_model(_config("efficientnet-b0")))) == pytest.approx(0.01)  # TF
    tuned = build_model(_config("efficientnet-b0", **{"model.bn_momentum": 0.1}))
    assert momenta(tuned) == {0.1}


def test_three_channel_input_repeats_the_image():
    model = build_model(_config(**{"model.in_channels": 3})).eval()
    assert _first_conv(model.net).in_channels == 3
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_hub_check_gives_up_quickly_on_a_silent_server(monkeypatch):
    """A server that accepts the connection and never answers (a hanging proxy) times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.perf_counter()
        ok, reason = hub_reachable(timeout=0.5)
        assert not ok and "127.0.0.1" in reason
        assert time.perf_counter() - start < 3


def test_hub_check_reports_a_refused_connection(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        ok, reason = hub_reachable(timeout=2)
    assert not ok and "unreachable" in reason


def test_imagenet_offline_fails_fast_with_alternatives(monkeypatch):
    monkeypatch.setattr(model_module, "hub_reachable", lambda: (False, "no network"))
    monkeypatch.setattr(model_module, "_cached_hub_weights", lambda encoder: None)
    with pytest.raises(EncoderWeightsError) as info:
        build_model(_config(**{"model.encoder_weights": "imagenet"}))
    message = str(info.value)
    assert "--encoder-weights none" in message and "--encoder-weights PATH" in message
    assert "resnet18" in message and "no network" in message


def test_imagenet_here_errors_within_seconds_when_offline():
    """The real check, no mocks: on a machine without internet it must not hang."""
    if hub_reachable()[0]:
        pytest.skip("the Hugging Face hub is reachable here")
    start = time.perf_counter()
    with pytest.raises(EncoderWeightsError):
        build_model(_config(**{"model.encoder_weights": "imagenet"}))
    assert time.perf_counter() - start < 10


@pytest.mark.network
def test_imagenet_weights_download():
    model = build_model(_config(**{"model.encoder_weights": "imagenet"}))
    reference = smp.Unet("resnet18", encoder_weights="imagenet", in_channels=1)
    assert torch.equal(
        model.net.encoder.layer1[0].conv1.weight, reference.encoder.layer1[0].conv1.weight
    )


def _saved_encoder(tmp_path, wrap):
    torch.manual_seed(1)
    encoder = smp.Unet("resnet18", encoder_weights=None, in_channels=3).encoder
    state = encoder.state_dict()
    path = tmp_path / "enc.pt"
    torch.save(wrap(state), path)
    return state, path


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s},
        lambda s: {f"encoder.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": {f"model.net.encoder.{k}": v for k, v in s.items()}},
    ],
    ids=["plain", "state_dict", "encoder-prefix", "lightning-prefix"],
)
def test_local_encoder_weights_load(tmp_path, wrap):
    state, path = _saved_encoder(tmp_path, wrap)
    model = build_model(_config(**{"model.encoder_weights": str(path)}))
    enc = model.net.encoder
    assert torch.equal(enc.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    # The RGB first convolution is folded to one channel by summing, as smp does for imagenet.
    assert torch.allclose(enc.conv1.weight, state["conv1.weight"].sum(1, keepdim=True), atol=1e-6)


def test_local_one_channel_weights_load_unchanged(tmp_path):
    torch.manual_seed(2)
    source = build_model(_config())
    path = tmp_path / "enc1.pt"
    torch.save(source.net.encoder.state_dict(), path)
    model = build_model(_config(**{"model.encoder_weights": str(path)}))
    assert torch.allclose(model.net.encoder.conv1.weight, source.net.encoder.conv1.weight)


def test_local_weights_report_missing_and_unexpected_keys(tmp_path):
    state, path = _saved_encoder(tmp_path, lambda s: s)
    state = dict(state)
    del state["layer4.1.bn2.weight"]
    state["fc.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    with pytest.warns(UserWarning, match=r"1 missing keys.*layer4\.1\.bn2\.weight.*fc\.weight"):
        build_model(_config(**{"model.encoder_weights": str(path)}))


def test_local_weights_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt not found"):
        build_model(_config(**{"model.encoder_weights": str(tmp_path / "absent.pt")}))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read encoder weights file .*corrupt.pt"):
        build_model(_config(**{"model.encoder_weights": str(corrupt)}))
    other = tmp_path / "b0.pt"
    torch.save(smp.Unet("efficientnet-b0", encoder_weights=None).encoder.state_dict(), other)
    with pytest.raises(ValueError, match="b0.pt has no key of this encoder"):
        build_model(_config(**{"model.encoder_weights": str(other)}))


def test_load_model_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt not found"):
        load_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="cannot read checkpoint .*bad.ckpt"):
        load_model(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.ckpt has no 'ptxseg' entry"):
        load_model(foreign)


def test_checkpoint_errors_do_not_advise_an_unsafe_load(tmp_path):
    """torch advises `weights_only=False` (which runs the file's code); ptxseg does not."""
    import numpy as np

    with_object = tmp_path / "object.ckpt"
    torch.save({"state_dict": {}, "ptxseg": {}, "extra": np.zeros(3)}, with_object)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path, reason in ((with_object, "holds a Python object"), (garbage, "not a PyTorch")):
        with pytest.raises(ValueError) as info:
            load_model(path)
        text = str(info.value)
        assert path.name in text and reason in text, text
        assert "weights_only" not in text and "\n" not in text
