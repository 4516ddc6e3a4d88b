"""Every method of the registry on every model format, loaded as the worker loads it
(`build_model`) and described as the manifest describes it (`layers`, `hooks`): a built-in
architecture, TorchScript, a Hugging Face classifier and a torch.export program. Where a
format cannot support a method (hooks on TorchScript), the registry's `check` must refuse
it at submit. A new method of the registry is covered here without a change."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

import worker.explain as E
from shared.methods import METHODS
from worker.explain.hooks import hooks_available
from worker.models.loading import build_model, layers

FORMATS = ["builtin", "torchscript", "huggingface", "export"]
DIGITS_INPUT = {"channels": 1, "height": 32, "width": 32}


def _vit_zip(folder) -> bytes:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, num_labels=4))
    vit.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 32}}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    return buf.getvalue()


def _weights(fmt: str, digits_model, tmp) -> tuple[dict, bytes]:
    """(the manifest fields build_model reads, the uploaded bytes) of one format."""
    buf = io.BytesIO()
    if fmt == "builtin":
        from safetensors.torch import save

        return {"format": "safetensors", "architecture": "digits-cnn"}, save(digits_model.state_dict())
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(digits_model), buf)
        return {"format": "torchscript", "architecture": "torchscript"}, buf.getvalue()
    if fmt == "export":
        ep = torch.export.export(digits_model, (torch.zeros(2, 1, 32, 32),),
                                 dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(ep, buf)
        return {"format": "export", "architecture": "export"}, buf.getvalue()
    return {"format": "huggingface", "architecture": "huggingface", "input": {"channels": 3, "height": 32, "width": 32},
            "classes": [str(i) for i in range(4)]}, _vit_zip(tmp)


@pytest.fixture(scope="module")
def formats(digits, tmp_path_factory):
    """{format: (model as the worker loads it, images, labels, layer path, manifest)}."""
    model, x, y = digits
    out = {}
    for fmt in FORMATS:
        fields, data = _weights(fmt, model, tmp_path_factory.mktemp(fmt))
        info = {"name": f"m-{fmt}", "input": DIGITS_INPUT, "classes": [str(i) for i in range(10)], **fields}
        loaded = build_model(info, data)
        manifest = {"name": info["name"], "format": info["format"], "layers": layers(loaded),
                    "hooks": hooks_available(loaded)}
        if fmt == "huggingface":
            xs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
            out[fmt] = (loaded, xs, torch.tensor([0, 1, 2, 3]), loaded.xaiq_default_layer, manifest)
        else:
            out[fmt] = (loaded, x[:4], y[:4], "cnn.4", manifest)
    return out


@pytest.mark.slow
def test_the_manifests(formats):
    assert {f: formats[f][4]["hooks"] for f in FORMATS} == {"builtin": True, "torchscript": False,
                                                            "huggingface": True, "export": True}
    for fmt in ("builtin", "torchscript", "export"):
        paths = {layer["path"]: layer for layer in formats[fmt][4]["layers"]}
        assert paths["cnn.4"]["conv"] and paths["cnn.4"]["out_channels"] == 32 and paths["cnn.11"]["out_channels"] == 64
    vit = {layer["path"]: layer for layer in formats["huggingface"][4]["layers"]}
    assert vit[formats["huggingface"][3]]["tokens"]


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_method_on_every_format(formats, fmt, name):
    model, x, y, layer, manifest = formats[fmt]
    method = METHODS[name]
    params = method.example_params(layer)
    if method.refusal(manifest):
        with pytest.raises(ValueError, match="hook"):
            method.check(params, manifest)   # refused at submit, with the reason
        return
    method.check(params, manifest)
    n, _, h, w = x.shape
    e = E.run(name, model, x, y, params)
    assert e.maps.dtype == np.float32 and len(e.maps) == n and np.isfinite(e.maps).all()
    assert e.pictures.shape[0] == n and e.pictures.shape[-1] == 3
    assert np.isfinite(e.pictures).all() and e.pictures.min() >= 0 and e.pictures.max() <= 1
    if method.attribution:
        assert e.heatmaps.shape == (n, h, w) and np.isfinite(e.heatmaps).all()
    if fmt in ("torchscript", "export"):   # the same network as the built-in one: the same result
        ref = E.run(name, formats["builtin"][0], x, y, params)
        np.testing.assert_allclose(e.maps, ref.maps, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref.maps).max())))


def test_scripted_models_size_their_batches_without_hooks(formats):
    """TorchScript takes no forward hooks: batch sizing falls back to an estimate."""
    from worker.explain.context import auto_batch_size

    model, x, _, _, _ = formats["torchscript"]
    assert auto_batch_size(model, x[0], grad=True) >= 1
    assert all(not m._forward_hooks for m in formats["builtin"][0].modules())
