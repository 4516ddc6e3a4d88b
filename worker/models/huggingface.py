"""Hugging Face `transformers` image classifiers: a zipped `save_pretrained` folder,
extracted safely and loaded from safetensors only, without remote code or downloads.

The loaded model keeps HF's module paths (`vit.layers.1.layernorm_before`) and, called
with a pixel tensor, returns the logits tensor like any other model of the service.
"""
from __future__ import annotations

import types
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from shared.huggingface import OUTSIDE, open_zip, plan
from worker.explain.hooks import output_shapes, token_layer, type_name

CHUNK = 1 << 20


def unpack(data: bytes, dest: Path, max_bytes: int = 2 * 2**30) -> Path:
    """Extract the files a classifier needs (config.json, *.safetensors, their index,
    preprocessor_config.json) of a zipped save_pretrained folder into `dest`; returns the
    folder holding config.json. Refuses (`shared.huggingface.plan`) names that leave the
    archive, links, an index naming anything but the archive's own safetensors, pickled
    weights, and more than `max_bytes` uncompressed (counted while reading, not from the
    headers)."""
    zf = open_zip(data)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    with zf:
        _, members = plan(zf)
        if sum(i.file_size for i in members) > max_bytes:
            raise ValueError(f"the model is larger than {max_bytes} bytes uncompressed")
        for info in members:
            # plan() keeps only plain file names of one folder: written flat into dest
            target = dest / PurePosixPath(info.filename).name
            if target.resolve().parent != dest.resolve():
                raise ValueError(OUTSIDE)
            with zf.open(info) as src, open(target, "xb") as out:
                while chunk := src.read(CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ValueError(f"the model is larger than {max_bytes} bytes uncompressed")
                    out.write(chunk)
    return dest


def _logits(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """forward(pixels) -> logits, bound to the HF model itself (not a wrapper module), so that
    module paths and hooks stay HF's; a bound method survives copy.deepcopy and torch.export."""
    out = type(self).forward(self, pixel_values=x)
    return out.logits if hasattr(out, "logits") else out[0]


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    config = model.config
    size = getattr(config, "image_size", None) or 224   # ResNet configs give none: the ImageNet size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(getattr(config, "num_channels", 3)), int(h), int(w)


def load(folder: Path, input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """AutoModelForImageClassification from safetensors in `folder` (no remote code, no
    download), in float32 and eval mode; model(x) returns the logits. Sets `xaiq_input`
    (`input_shape`, the registered (C, H, W); by default from the config) and
    `xaiq_default_layer` (Grad-CAM's default, see `default_layer`)."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = {"use_safetensors": True, "trust_remote_code": False, "local_files_only": True, "dtype": torch.float32}
    try:   # named explicitly: a config must not pick an attention kernel from the Hub
        model = AutoModelForImageClassification.from_pretrained(Path(folder), attn_implementation="sdpa", **kwargs)
    except ValueError as e:
        if "attention" not in str(e).lower():   # a family without SDPA support: plain attention
            raise
        model = AutoModelForImageClassification.from_pretrained(Path(folder), attn_implementation="eager", **kwargs)
    model.eval()
    model.forward = types.MethodType(_logits, model)
    model.xaiq_input = tuple(input_shape) if input_shape else _input_shape(model)
    model.xaiq_default_layer = default_layer(model)
    return model


def default_layer(model: nn.Module) -> str:
    """Grad-CAM's layer for an HF classifier, found from one probe forward: for a model
    ending in patch tokens (ViT, DeiT, BEiT, Swin, DINOv2) its last block's first norm, as
    pytorch-grad-cam does for ViT; for a CNN (ResNet, ConvNeXt, RegNet, ...) the last
    module that outputs a spatial feature map before the pooling (its last stage)."""
    c, h, w = getattr(model, "xaiq_input", None) or _input_shape(model)
    shapes = output_shapes(model, torch.zeros(1, c, h, w))
    vit = token_layer(model, shapes, h, w)
    if vit is not None:
        return vit
    maps = [p for p, s in shapes.items() if len(s) == 4 and s[2] * s[3] > 1]
    if not maps:
        raise ValueError(f"{type_name(model)} outputs neither feature maps nor patch tokens; name a layer")
    return maps[-1]
