"""Loading registered models safely (safetensors, `torch.load(weights_only=True)`,
TorchScript that passed the operator allowlist), and listing their layers. It runs inside a
confined compute process (`worker.compute.server`), never in the broker."""
from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from torch import nn

from worker.explain.context import RunContext
from worker.models.architectures import build
from worker.models.prepare import Prepared


@dataclass
class LoadedModel:
    model: nn.Module
    info: dict
    device: torch.device
    prepared: Prepared | None = None   # its forward-only copies

    def run(self, **kw) -> RunContext:
        """A run of this model: its prepared forwards, and `kw` (sizes, check, pool)."""
        return RunContext(prepared=self.prepared, **kw)

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def key(self) -> str:
        """What its measured batch sizes are filed under: the weights' content and format."""
        return f"{self.info.get('format')}:{self.info.get('weights_sha256', self.info.get('version'))}"


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _safetensors_state_dict(data: bytes) -> dict:
    from safetensors.torch import load

    return load(data)


def _pickled_state_dict(data: bytes) -> dict:
    sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):  # a training checkpoint
        sd = sd["state_dict"]
    if isinstance(sd, dict):
        return sd
    raise ValueError("the file holds no state_dict (save it with torch.save(model.state_dict(), f))")


# The formats that are a built-in architecture's weights, and how each is read.
STATE_DICTS = {"safetensors": _safetensors_state_dict, "state_dict": _pickled_state_dict}


def read_state_dict(data: bytes, fmt: str) -> dict[str, torch.Tensor]:
    sd = STATE_DICTS[fmt](data)
    # Weights saved from nn.DataParallel carry a 'module.' prefix.
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _registered_input(info: dict) -> tuple[int, int, int]:
    return tuple(info["input"][k] for k in ("channels", "height", "width"))


def _builtin(info: dict, data: bytes, scratch: str | None) -> nn.Module:
    model = build(info["architecture"], len(info["classes"]), info["input"]["channels"])
    model.load_state_dict(read_state_dict(data, info["format"]), strict=True)
    return model


def _torchscript(info: dict, data: bytes, scratch: str | None) -> nn.Module:
    return torch.jit.load(io.BytesIO(data), map_location="cpu")


def _export(info: dict, data: bytes, scratch: str | None) -> nn.Module:
    from worker.models import exported

    model = exported.load(data)
    model.xaiq_input = _registered_input(info)   # layers are probed at the registered size
    return model


def _huggingface(info: dict, data: bytes, scratch: str | None) -> nn.Module:
    import tempfile
    from pathlib import Path

    from worker.models import huggingface

    with tempfile.TemporaryDirectory(prefix="xaiq-hf-", dir=scratch) as tmp:
        return huggingface.load(huggingface.unpack(data, Path(tmp)), _registered_input(info))


# One loader per format of `shared.formats.MODEL_FORMATS`: (manifest, bytes, scratch) -> nn.Module.
LOADERS = {"safetensors": _builtin, "state_dict": _builtin, "torchscript": _torchscript, "export": _export,
           "huggingface": _huggingface}


def build_model(info: dict, data: bytes, scratch: str | None = None) -> nn.Module:
    """The registered model in eval mode with frozen parameters, read by its format's loader
    (`LOADERS`). Hugging Face and exported models also get `xaiq_input` = the registered
    (C, H, W), which `layers` probes with. `scratch`: where a Hugging Face zip may be
    unpacked (default: a temporary folder)."""
    loader = LOADERS.get(info["format"])
    if loader is None:
        raise ValueError(f"unknown model format {info['format']!r}")
    model = loader(info, data, scratch)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def layers(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[dict]:
    """Every submodule by path: `type`, `out_channels` (filters readable there), `conv`
    (a layer Grad-CAM takes), `shape` (its output for one image, when a forward of
    `input_shape` (C, H, W) could be probed). Hugging Face and exported models (their
    `xaiq_input`): patch-token layers (N, T, D) get `tokens: true`, `out_channels` D and
    `conv: true` (Grad-CAM folds them into their grid); blocks and stages with a
    feature-map output get `conv: true` and its channels."""
    from worker.explain.hooks import hooks_available, output_shapes, token_grid, type_name

    family = getattr(model, "xaiq_input", None)
    shape = family or input_shape
    shapes = output_shapes(model, torch.zeros(1, *shape)) if shape and hooks_available(model) else {}
    out = []
    for path, module in model.named_modules():
        if not path:
            continue
        kind = type_name(module)
        channels = getattr(module, "out_channels", None) or getattr(module, "num_features", None) \
            or getattr(module, "out_features", None)
        layer = {"path": path, "type": kind, "out_channels": channels, "conv": kind == "Conv2d"}
        s = shapes.get(path, ())
        if s:
            layer["shape"] = [int(d) for d in s[1:]]
        if family and len(s) == 3 and s[2] > 1 and token_grid(s[1], shape[1], shape[2]):
            layer.update(out_channels=s[2], conv=True, tokens=True)
        elif family and len(s) in (2, 4) and channels is None:
            layer["out_channels"] = s[1]
            layer["conv"] = layer["conv"] or (len(s) == 4 and s[2] * s[3] > 1 and any(True for _ in module.children()))
        out.append(layer)
    # Pooling/activation layers keep the channel count of the layer before them.
    last = None
    for layer in out:
        if layer["out_channels"] is None and layer["type"] in ("ReLU", "MaxPool2d", "AvgPool2d", "Dropout", "Identity"):
            layer["out_channels"] = last
        last = layer["out_channels"] or last
    return out
