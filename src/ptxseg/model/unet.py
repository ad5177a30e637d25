"""The model factory: U-Net over `segmentation_models_pytorch` encoders, weights and checkpoints.

`build_model(config)` returns a `SegmentationModel`: it takes grayscale images in [0, 1],
normalises them with the encoder's own preprocessing parameters and returns mask logits.
The input is one channel: for pretrained weights smp folds the RGB first convolution into one
channel (sums its weights), which costs a third of the first layer and of the input memory and
keeps what the pretrained filters see.
Checkpoints and inference-model folders are read and written by `ptxseg.model.checkpoint`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from ptxseg.config import TrainConfig

# The study's encoders. `timm_cfg` names timm's pretrained config for the same ImageNet weights:
# its mean/std are used when smp's hub config cannot be fetched (offline), so normalisation
# never depends on the network.
ENCODERS: dict[str, dict[str, str]] = {
    "resnet50": {"family": "resnet", "timm_cfg": "resnet50.tv_in1k"},
    **{
        f"efficientnet-b{i}": {"family": "efficientnet", "timm_cfg": f"efficientnet_b{i}"}
        for i in range(8)
    },
    "xception": {"family": "xception", "timm_cfg": "legacy_xception.tf_in1k"},
}

HUB_TIMEOUT_S = 3.0


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights could not be obtained; the message says what to do instead."""


def check_encoder(name: str) -> str:
    """Return `name` if smp knows it (or it is a timm `tu-` name); otherwise a ValueError."""
    if name in ENCODERS or name in smp.encoders.get_encoder_names() or name.startswith("tu-"):
        return name
    raise ValueError(
        f"unknown encoder {name!r}: the study's encoders are {', '.join(ENCODERS)}; any other "
        f"segmentation_models_pytorch encoder also works: "
        f"{', '.join(n for n in smp.encoders.get_encoder_names() if n not in ENCODERS)}, "
        f"or a timm model as 'tu-<name>'"
    )


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers an HTTP request within `timeout` seconds (and why not).

    A real HTTP answer is asked for (not only a TCP connect), because proxies accept connections
    they then refuse to serve. The request runs in a thread so a hanging DNS cannot stall us.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False, "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    result: dict[str, Any] = {}

    def ask() -> None:
        try:
            request = urllib.request.Request(endpoint + "/api/models?limit=1", method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                result["ok"] = True
        except urllib.error.HTTPError as error:
            result["error"] = f"{endpoint} answered HTTP {error.code}"
        except (OSError, ValueError) as error:
            result["error"] = f"{endpoint} unreachable ({getattr(error, 'reason', error)})"

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if result.get("ok"):
        return True, ""
    return False, result.get("error", f"{endpoint} did not answer within {timeout:g} s")


def _hub_settings(encoder: str) -> dict[str, str] | None:
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    return settings.get("imagenet")


def preprocessing_params(encoder: str) -> tuple[list[float], list[float]]:
    """The encoder's ImageNet mean and std (RGB): smp's hub config, else timm's offline config."""
    if encoder.startswith("tu-"):
        params = smp.encoders.get_preprocessing_params(encoder)
        return list(params["mean"]), list(params["std"])
    settings = _hub_settings(encoder)
    if settings is not None:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            settings["repo_id"], "config.json", revision=settings["revision"]
        )
        if isinstance(cached, str):
            values = json.loads(Path(cached).read_text())
            return list(values["mean"]), list(values["std"])
        if encoder not in ENCODERS and hub_reachable()[0]:
            params = smp.encoders.get_preprocessing_params(encoder)
            return list(params["mean"]), list(params["std"])
    import timm

    timm_cfg = ENCODERS.get(encoder, {}).get("timm_cfg")
    if timm_cfg is None and encoder.startswith("resnet"):  # smp's resnets are torchvision's
        timm_cfg = f"{encoder}.tv_in1k"
    if timm_cfg is not None:
        cfg = timm.models.get_pretrained_cfg(timm_cfg)
        if cfg is not None:
            return list(cfg.mean), list(cfg.std)
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    warnings.warn(
        f"no preprocessing parameters found offline for encoder {encoder!r}; using ImageNet's",
        stacklevel=2,
    )
    return list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)


def _offline_message(encoder: str, reason: str) -> str:
    return (
        f"cannot download ImageNet weights for encoder {encoder!r}: the Hugging Face hub is not "
        f"reachable ({reason}). Either train from random weights with `--encoder-weights none`, "
        f"or give a local encoder state dict with `--encoder-weights PATH`. To make one, on a "
        f'machine with internet run: python -c "import torch, segmentation_models_pytorch as '
        f"smp; torch.save(smp.Unet('{encoder}', encoder_weights='imagenet').encoder.state_dict(), "
        f"'{encoder}-imagenet.pt')\" and copy the file here (copying that machine's "
        f"~/.cache/huggingface/hub folder also works)."
    )


def load_error(error: BaseException) -> str:
    """What went wrong in `torch.load(..., weights_only=True)` (or safetensors), in one line.

    torch's own message spans lines and suggests `weights_only=False`, which would run any code
    the file holds: ptxseg never loads a file that way, so the advice is left out."""
    text = str(error).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds a Python object ({found.group(1)}) besides tensors, which a safe "
            "(weights-only) load refuses"
        )
    not_torch = ("Weights only load failed", "mmap can only be used", "failed finding central")
    if any(s in text for s in not_torch) or isinstance(error, pickle.UnpicklingError):
        return "it is not a PyTorch checkpoint, or it is damaged"
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}".rstrip(".")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """An encoder state dict from a file: plain, or under `state_dict`, with or without a prefix.

    Accepts `.safetensors` and torch files; a full U-Net or Lightning state dict is reduced to its
    `encoder.` entries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"encoder weights file {path} not found: expected 'imagenet', 'none' or the path of a "
            f"saved encoder state dict"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable file gets the same clear message)
        raise ValueError(
            f"cannot read encoder weights file {path}: {load_error(error)}. Expected a torch or "
            f"safetensors file holding a state dict"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"encoder weights file {path} does not hold a state dict of tensors")
    encoder_keys = {k: v for k, v in state.items() if k.startswith("encoder.") or ".encoder." in k}
    if encoder_keys:
        state = {k.split("encoder.", 1)[1]: v for k, v in encoder_keys.items()}
    return state


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load a local state dict into an encoder; return (missing, unexpected) keys.

    A one-channel first convolution in the file is spread over three channels, so that smp's
    later folding to one channel gives it back unchanged.
    """
    state = read_state_dict(path)
    own = encoder.state_dict()
    mismatched = []
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            target = own[key].shape
            if value.ndim == 4 and value.shape[1] == 1 and target[1] == 3:
                state[key] = value.repeat(1, 3, 1, 1) / 3
            else:
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target)}")
    if mismatched:
        raise ValueError(
            f"encoder weights file {path} does not fit this encoder (was it saved from another "
            f"one?): {'; '.join(mismatched[:5])}"
        )
    # nn.Module's loader: some smp encoders override load_state_dict without `strict`.
    result = nn.Module.load_state_dict(encoder, state, strict=False)
    if not any(k in own for k in state):
        raise ValueError(f"encoder weights file {path} has no key of this encoder's state dict")
    return list(result.missing_keys), list(result.unexpected_keys)


class SegmentationModel(nn.Module):
    """U-Net on [0, 1] grayscale images: normalises inside, returns mask logits."""

    def __init__(self, net: nn.Module, config: TrainConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config.to_dict()
        self.encoder = config.model.encoder
        self.input_size = config.data.size
        self.in_channels = config.model.in_channels
        self.has_aux = config.model.aux_head
        self.operating_point: Any = None  # an OperatingPoint once one is stored
        self.validation: dict[str, Any] | None = None  # the metrics it was chosen on
        mean = torch.tensor(config.model.mean, dtype=torch.float32)
        std = torch.tensor(config.model.std, dtype=torch.float32)
        if self.in_channels == 1:  # one channel sees the average of the RGB statistics
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mask logits (B, 1, H, W), label logits (B, 1) or None without the aux head)."""
        out = self.net(self._normalise(x))
        if isinstance(out, tuple):
            return out[0], out[1]
        return out, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self._normalise(x))
        return out[0] if isinstance(out, tuple) else out


def _weights_source(encoder_weights: str | None) -> str:
    if encoder_weights is None or str(encoder_weights).lower() in ("none", "null", ""):
        return "none"
    return "imagenet" if encoder_weights == "imagenet" else "path"


def _finish(net: nn.Module, config: TrainConfig) -> SegmentationModel:
    """Wrap the network; apply `model.bn_momentum` to every batch-norm layer when it is set.

    Some encoders (smp's EfficientNets) keep TensorFlow's momentum of 0.01: their running
    statistics need thousands of steps to settle, so a short run evaluates far worse than it
    trained. PyTorch's usual 0.1 fixes that for short runs.
    """
    momentum = config.model.bn_momentum
    if momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = momentum
    return SegmentationModel(net, config)


def build_model(
    config: TrainConfig | dict, load_weights: bool = True, empty: bool = False
) -> SegmentationModel:
    """U-Net from the config; fills `config.model.mean/std` when unset.

    `load_weights=False` skips pretrained weights (used when a checkpoint supplies them).
    `empty=True` also skips initialising the network: its parameters are placeholders on the
    meta device that a checkpoint must replace (`load_state_dict(..., assign=True)`); this saves
    the random initialisation of tens of millions of weights when a model is loaded.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    m = config.model
    check_encoder(m.encoder)
    if m.mean is None or m.std is None:
        m.mean, m.std = preprocessing_params(m.encoder)
    if empty:
        with torch.device("meta"):
            net = smp.Unet(
                encoder_weights=None,
                in_channels=m.in_channels,
                encoder_name=m.encoder,
                classes=1,
                decoder_attention_type=m.decoder_attention,
                aux_params={"classes": 1, "dropout": 0.2} if m.aux_head else None,
            )
        return _finish(net, config)
    source = _weights_source(m.encoder_weights) if load_weights else "none"
    return _finish(_network(m, source), config)


def _network(m, source: str) -> torch.nn.Module:
    """The smp U-Net of model config `m` with encoder weights from `source` (imagenet, none,
    or path: a saved encoder state dict; imagenet falls back to the cached hub file offline)."""
    kwargs: dict[str, Any] = dict(
        encoder_name=m.encoder,
        classes=1,
        decoder_attention_type=m.decoder_attention,
        aux_params={"classes": 1, "dropout": 0.2} if m.aux_head else None,
    )
    if source == "imagenet":
        ok, reason = hub_reachable()
        if not ok:
            cached = _cached_hub_weights(m.encoder)
            if cached is None:
                raise EncoderWeightsError(_offline_message(m.encoder, reason))
            source, m_path = "path", cached
        else:
            return smp.Unet(encoder_weights="imagenet", in_channels=m.in_channels, **kwargs)
    else:
        m_path = m.encoder_weights
    if source == "none":
        return smp.Unet(encoder_weights=None, in_channels=m.in_channels, **kwargs)
    # Load into a three-channel encoder, then let smp fold it to `in_channels` (as for imagenet).
    net = smp.Unet(encoder_weights=None, in_channels=3, **kwargs)
    foldable = hasattr(net.encoder, "set_in_channels")
    if not foldable and m.in_channels != 3:  # e.g. timm `tu-` encoders: load as built
        net = smp.Unet(encoder_weights=None, in_channels=m.in_channels, **kwargs)
    missing, unexpected = load_encoder_weights(net.encoder, m_path)
    if missing or unexpected:
        warnings.warn(
            f"encoder weights {m_path}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys (ignored) {unexpected[:5]}",
            stacklevel=3,
        )
    if foldable and m.in_channels != 3:
        net.encoder.set_in_channels(m.in_channels, pretrained=True)
    return net


def _cached_hub_weights(encoder: str) -> str | None:
    """The smp hub weights file of `encoder` if it is already in the local Hugging Face cache."""
    settings = _hub_settings(encoder)
    if settings is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(
        settings["repo_id"], "model.safetensors", revision=settings["revision"]
    )
    return cached if isinstance(cached, str) else None
