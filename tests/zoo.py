"""Small models of every format, built locally (nothing downloaded), as users upload them:
Hugging Face ViT, ResNet and ConvNeXt saved with save_pretrained and zipped, and the
digits CNN as a torch.export program and as TorchScript."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch
from torch import nn

CLASSES = ["cat", "dog", "fish", "bird"]
BATCH = torch.export.Dim("batch")


def processor(kind: str) -> dict:
    """preprocessor_config.json as HF's processors write it (ViT: a plain resize; the CNNs:
    ConvNeXt's shortest edge / crop_pct and centre crop)."""
    from transformers import ConvNextImageProcessorPil, ViTImageProcessorPil

    if kind == "vit":
        p = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        p = ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875, resample=3,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return json.loads(p.to_json_string())


def build(kind: str) -> nn.Module:
    """A tiny Hugging Face classifier of 4 classes on 3x32x32, seeded random weights."""
    from transformers import (ConvNextConfig, ConvNextForImageClassification, ResNetConfig,
                              ResNetForImageClassification, ViTConfig, ViTForImageClassification)

    torch.manual_seed(0)
    labels = {"id2label": dict(enumerate(CLASSES)), "label2id": {c: i for i, c in enumerate(CLASSES)}}
    if kind == "vit":
        return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=64, **labels))
    if kind == "resnet":
        return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                         layer_type="basic", **labels))
    return ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                         patch_size=4, image_size=32, **labels))


def zip_folder(folder: Path, nested: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(Path(folder).iterdir()):
            z.write(f, nested + f.name)
    return buf.getvalue()


def hf_zip(kind: str, folder: Path) -> bytes:
    """The model saved with save_pretrained (plus its preprocessor_config.json) into `folder`, zipped."""
    build(kind).eval().save_pretrained(folder)
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(processor(kind)))
    return zip_folder(folder)


def digits_cnn() -> nn.Module:
    from safetensors.torch import load_file

    from worker.models.architectures import DigitsCNN
    from worker.models.digits import WEIGHTS

    m = DigitsCNN()
    m.load_state_dict(load_file(WEIGHTS / "digits-cnn.safetensors"))
    return m.eval()


def exported(model: nn.Module, example: torch.Tensor, dynamic: bool = True) -> bytes:
    """A torch.export program (dynamic batch) saved to bytes."""
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: BATCH},) if dynamic else None)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def scripted(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buf)
    return buf.getvalue()
