"""Loading registered models safely (safetensors, `torch.load(weights_only=True)`,
TorchScript), listing their layers, and a small per-process cache."""
from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from shared.storage import Storage, keys
from worker.models.architectures import build


@dataclass
class LoadedModel:
    model: nn.Module
    info: dict
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def read_state_dict(data: bytes, fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "safetensors":
        from safetensors.torch import load

        sd = load(data)
    else:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):  # a training checkpoint
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError("the file holds no state_dict (save it with torch.save(model.state_dict(), f))")
    # Weights saved from nn.DataParallel carry a 'module.' prefix.
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build_model(info: dict, data: bytes) -> nn.Module:
    if info["format"] == "torchscript":
        model = torch.jit.load(io.BytesIO(data), map_location="cpu")
    else:
        model = build(info["architecture"], len(info["classes"]), info["input"]["channels"])
        model.load_state_dict(read_state_dict(data, info["format"]), strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def layers(model: nn.Module) -> list[dict]:
    out = []
    for path, module in model.named_modules():
        if not path:
            continue
        kind = getattr(module, "original_name", type(module).__name__)
        channels = getattr(module, "out_channels", None) or getattr(module, "num_features", None) \
            or getattr(module, "out_features", None)
        out.append({"path": path, "type": kind, "out_channels": channels, "conv": kind == "Conv2d"})
    # Pooling/activation layers keep the channel count of the layer before them.
    last = None
    for layer in out:
        if layer["out_channels"] is None and layer["type"] in ("ReLU", "MaxPool2d", "AvgPool2d", "Dropout", "Identity"):
            layer["out_channels"] = last
        last = layer["out_channels"] or last
    return out


def inspect(st: Storage, name: str, device: torch.device) -> dict:
    """Load the weights once, check a forward pass, record the layers: status ready or invalid."""
    info = st.get_json(keys.model(name))
    try:
        model = build_model(info, st.get(keys.weights(name))).to(device)
        c, h, w = (info["input"][k] for k in ("channels", "height", "width"))
        with torch.no_grad():
            out = model(torch.zeros(2, c, h, w, device=device))
        if out.shape != (2, len(info["classes"])):
            raise ValueError(f"the model outputs {tuple(out.shape[1:])} for {len(info['classes'])} classes")
        info.update(status="ready", error=None, layers=layers(model), hooks=not isinstance(model, torch.jit.ScriptModule),
                    parameters=sum(p.numel() for p in model.parameters()))
    except Exception as e:  # noqa: BLE001 - any failure makes the registration invalid, with its reason
        info.update(status="invalid", error=f"{type(e).__name__}: {e}"[:1000])
    st.put_json(keys.model(name), info)
    return info


class ModelCache:
    """Models loaded once per worker process, keyed by name and registration time."""

    def __init__(self, size: int):
        self.size = size
        self.models: OrderedDict[tuple[str, float], LoadedModel] = OrderedDict()

    def get(self, st: Storage, name: str, device: torch.device) -> LoadedModel:
        info = st.get_json(keys.model(name))
        key = (name, info["created"])
        if key not in self.models:
            if info["status"] != "ready":
                raise ValueError(f"model {name!r} is {info['status']}")
            model = build_model(info, st.get(keys.weights(name))).to(device)
            self.models[key] = LoadedModel(model, info, device)
            while len(self.models) > self.size:
                self.models.popitem(last=False)
        self.models.move_to_end(key)
        return self.models[key]
