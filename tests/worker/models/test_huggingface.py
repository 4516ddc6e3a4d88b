"""Hugging Face image classifiers: tiny ViT, ResNet and ConvNeXt built from configs with
seeded random weights (nothing downloaded), saved with save_pretrained and zipped as users
upload them; safe unpacking, loading, the spec read from the configs, preprocessing equal
to HF's PIL processors, and every method of the registry on each family."""
from __future__ import annotations

import io
import json
import stat
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import worker.explain as E
from shared.huggingface import read_configs, spec_from_configs
from shared.methods import METHODS
from tests.zoo import CLASSES, build, processor, zip_folder
from worker.images import decode, standardize
from worker.models import huggingface
from worker.models.loading import layers

torch.set_num_threads(2)


_processor, _build, _zip = processor, build, zip_folder


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """{kind: (original HF model in eval mode, zip bytes, loaded model)}."""
    out = {}
    for kind in ("vit", "resnet", "convnext"):
        model = _build(kind).eval()
        folder = tmp_path_factory.mktemp(f"{kind}-saved")
        model.save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(_processor(kind)))
        data = _zip(folder, nested=f"{kind}-model/")
        loaded = huggingface.load(huggingface.unpack(data, tmp_path_factory.mktemp(f"{kind}-unpacked")))
        for p in loaded.parameters():
            p.requires_grad_(False)   # as the worker loads it
        out[kind] = (model, data, loaded)
    return out


def _images(n=3, seed=1):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


DEFAULTS = {"vit": "vit.layers.1.layernorm_before", "resnet": "resnet.encoder.stages.1",
            "convnext": "convnext.encoder.stages.1"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DEFAULTS))
def test_unpack_and_load_round_trip(zoo, kind):
    model, _, loaded = zoo[kind]
    x = _images()
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(pixel_values=x).logits.numpy(), rtol=1e-5, atol=1e-6)
    assert [p for p, _ in loaded.named_modules()] == [p for p, _ in model.named_modules()]   # HF's own paths
    assert not loaded.training and loaded.config.id2label[1] == "dog"
    assert huggingface.default_layer(loaded) == loaded.xaiq_default_layer == DEFAULTS[kind]
    seen = []
    handle = loaded.get_submodule(DEFAULTS[kind]).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        loaded(x)
    finally:
        handle.remove()
    assert seen and seen[0][0] == 3


def test_spec_from_the_configs(zoo):
    spec = spec_from_configs(*read_configs(zoo["vit"][1]))
    assert spec["classes"] == CLASSES
    assert spec["input"] == {"channels": 3, "height": 32, "width": 32}
    np.testing.assert_allclose(spec["mean"], [0.5] * 3)
    np.testing.assert_allclose(spec["std"], [0.5] * 3)
    assert spec["preprocess"] == {"resize": {"height": 32, "width": 32}, "crop": None, "resample": "bilinear"}
    spec = spec_from_configs(*read_configs(zoo["convnext"][1]))
    assert spec["input"] == {"channels": 3, "height": 32, "width": 32}
    assert spec["preprocess"] == {"resize": {"shortest_edge": 36}, "crop": {"height": 32, "width": 32},
                                  "resample": "bicubic"}   # int(32 / 0.875)
    np.testing.assert_allclose(spec["std"], [0.229, 0.224, 0.225])
    config = {"id2label": {"1": "b", "0": "a"}, "image_size": 24, "num_channels": 1}
    assert spec_from_configs(config, None) == {
        "input": {"channels": 1, "height": 24, "width": 24}, "mean": [0.0], "std": [1.0], "classes": ["a", "b"],
        "preprocess": {"resize": {"height": 24, "width": 24}, "crop": None, "resample": "bilinear"}}
    # EfficientNet-style rescale to [-1, 1] folds into mean/std exactly: x*2-1 == (x - 0.5) / 0.5
    pre = {"size": {"height": 24, "width": 24}, "rescale_factor": 1 / 127.5, "rescale_offset": True,
           "do_normalize": False, "resample": 0}
    s = spec_from_configs(config, pre)
    np.testing.assert_allclose([s["mean"][0], s["std"][0]], [0.5, 0.5])
    assert s["preprocess"]["resample"] == "nearest"
    with pytest.raises(ValueError, match="fixed input size"):
        spec_from_configs(config, {"size": {"shortest_edge": 24}, "do_center_crop": False})


@pytest.mark.parametrize("kind", ["vit", "convnext"])
@pytest.mark.parametrize("wh", [(45, 37), (30, 50)])
def test_decode_equals_the_hf_pil_processor(kind, wh):
    from transformers import ConvNextImageProcessorPil, ViTImageProcessorPil

    pre = _processor(kind)
    processor = (ViTImageProcessorPil if kind == "vit" else ConvNextImageProcessorPil)(**pre)
    img = Image.fromarray((np.random.default_rng(0).random((wh[1], wh[0], 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    spec = spec_from_configs({"id2label": {"0": "a", "1": "b"}}, pre)
    arr, size = decode(buf.getvalue(), spec, max_pixels=10_000)
    ours = standardize(arr[None], spec)[0]
    theirs = processor(img, return_tensors="np")["pixel_values"][0]
    assert size == wh and ours.shape == theirs.shape == (3, 32, 32)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def _zip_of(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            if name in links:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, content)
    return buf.getvalue()


CONFIG = json.dumps({"model_type": "vit", "id2label": {"0": "a", "1": "b"}, "image_size": 32}).encode()


@pytest.mark.parametrize("files, links, message", [
    ({"config.json": CONFIG, "pytorch_model.bin": b"x"}, (), "weights must be safetensors"),
    ({"m/config.json": CONFIG, "m/model.safetensors": b"x", "m/weights.pth": b"x"}, (), "weights must be safetensors"),
    ({"config.json": CONFIG, "../model.safetensors": b"x"}, (), "names a file outside itself"),
    ({"config.json": CONFIG, "/tmp/model.safetensors": b"x"}, (), "names a file outside itself"),
    ({"config.json": CONFIG, "model.safetensors": b"/etc/passwd"}, ("model.safetensors",), "names a file outside"),
    ({"config.json": CONFIG, "model.safetensors": b"x", "m/../model.safetensors": b"x"}, (), "outside itself"),
    ({"config.json": CONFIG, "model.safetensors": b"x", "c:model.safetensors": b"x"}, (), "outside itself"),
    ({"config.json": CONFIG, "README.md": b"x"}, (), "no \\*.safetensors"),
    ({"a/config.json": CONFIG, "b/config.json": CONFIG, "a/model.safetensors": b"x"}, (), "one config.json"),
])
def test_unsafe_or_pickled_uploads_are_refused(tmp_path, files, links, message):
    data = _zip_of(files, links)
    with pytest.raises(ValueError, match=message):
        read_configs(data)
    with pytest.raises(ValueError, match=message):
        huggingface.unpack(data, tmp_path / "out")
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_unpack_counts_the_bytes_it_writes(zoo, tmp_path):
    with pytest.raises(ValueError, match="larger than"):
        huggingface.unpack(zoo["vit"][1], tmp_path, max_bytes=10_000)
    folder = huggingface.unpack(zoo["vit"][1], tmp_path / "ok")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]


def test_layers_describe_tokens_and_stages(zoo):
    from shared.methods import METHODS

    vit = {layer["path"]: layer for layer in layers(zoo["vit"][2])}
    norm = vit["vit.layers.1.layernorm_before"]
    assert norm["tokens"] and norm["out_channels"] == 32 and norm["conv"] and norm["type"] == "LayerNorm"
    assert vit["vit.layers.0.mlp.fc1"]["out_channels"] == 64 and vit["vit.layers.0.mlp.fc1"]["tokens"]
    assert vit["vit.embeddings.patch_embeddings.projection"]["conv"]
    assert "tokens" not in vit["classifier"] and not vit["classifier"]["conv"]
    resnet = {layer["path"]: layer for layer in layers(zoo["resnet"][2])}
    assert resnet["resnet.encoder.stages.1"]["conv"] and resnet["resnet.encoder.stages.1"]["out_channels"] == 16
    for kind, (_, _, model) in zoo.items():
        manifest = {"name": kind, "format": "huggingface", "layers": layers(model), "hooks": True}
        for method in METHODS.values():
            method.check(method.example_params(DEFAULTS[kind]), manifest)   # the API accepts the default layers


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("kind", list(DEFAULTS))
def test_every_method_on_every_family(zoo, kind, name):
    _, _, model = zoo[kind]
    x = _images(2)
    y = torch.tensor([1, 3])
    e = E.run(name, model, x, y, METHODS[name].example_params(DEFAULTS[kind]))
    assert e.maps.dtype == np.float32 and len(e.maps) == 2 and np.isfinite(e.maps).all()
    assert e.pictures.shape[0] == 2 and e.pictures.shape[-1] == 3 and np.isfinite(e.pictures).all()
    if METHODS[name].attribution:
        assert e.heatmaps.shape == (2, 32, 32) and np.isfinite(e.heatmaps).all()
    if name == "filters":
        assert e.maps.shape[:2] == (2, 3) and e.extras["visualizations"].shape == (3, 3, 32, 32)
    if name == "gradcam":
        assert e.maps.shape == (2, 4, 4)   # ViT: 32/8 patches; the CNNs: their last stage at stride 8
    assert all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("kind", list(DEFAULTS))
def test_saliency_is_the_course_formula(zoo, kind):
    original, _, loaded = zoo[kind]
    x, y = _images(3), torch.tensor([0, 2, 3])
    xg = x.clone().requires_grad_(True)
    loss = nn.CrossEntropyLoss()(original(pixel_values=xg).logits, y)
    (g,) = torch.autograd.grad(loss, xg)
    g = g.abs()
    lo, hi = g.amin(dim=(1, 2, 3), keepdim=True), g.amax(dim=(1, 2, 3), keepdim=True)
    np.testing.assert_allclose(E.saliency(loaded, x, y), ((g - lo) / (hi - lo)).numpy(), atol=1e-5)


class ToGrid(nn.Module):
    """ViT tokens (N, 1 + h*w, D) -> patch grid (N, D, h, w): the layer Captum reads."""

    def forward(self, t):
        n, count, d = t.shape
        s = round((count - 1) ** 0.5)
        return t[:, 1:].reshape(n, s, s, d).permute(0, 3, 1, 2)


class FromGrid(nn.Module):
    """Back to tokens, class token first: ToGrid then FromGrid is the identity."""

    def forward(self, grid, cls):
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], 1)


class GridWrapped(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.to_grid, self.from_grid = model, ToGrid(), FromGrid()

    def forward(self, x):
        return self.model(x)


def test_vit_gradcam_equals_captum_on_the_token_grid(zoo):
    from captum.attr import LayerAttribution, LayerGradCam

    _, _, model = zoo["vit"]
    x, y = _images(3, seed=5), torch.tensor([0, 1, 3])
    wrapped = GridWrapped(model)
    layer = model.get_submodule(DEFAULTS["vit"])
    handle = layer.register_forward_hook(lambda m, i, o: wrapped.from_grid(wrapped.to_grid(o), o[:, :1]))
    try:
        cam = LayerGradCam(wrapped, wrapped.to_grid).attribute(x, target=y, relu_attributions=True).detach()
    finally:
        handle.remove()
    up = LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear")
    assert cam.abs().max() > 0   # the comparison can fail
    ours = E.gradcam(model, x, y, upsampled=False)
    np.testing.assert_allclose(ours, cam[:, 0].numpy(), rtol=1e-4, atol=1e-4 * float(cam.abs().max()))
    np.testing.assert_allclose(E.gradcam(model, x, y), up[:, 0].numpy(), rtol=1e-4, atol=1e-4 * float(up.abs().max()))
    np.testing.assert_array_equal(E.gradcam(model, x, y, layer=DEFAULTS["vit"]), E.gradcam(model, x, y))
    assert F.relu(torch.from_numpy(ours)).equal(torch.from_numpy(ours))


@pytest.fixture(scope="module")
def escapes(tmp_path_factory):
    from tests.worker.models.attacks import attacks

    return attacks(tmp_path_factory.mktemp("escapes"))


def test_file_references_stay_inside_the_archive(escapes, tmp_path):
    """Each attack is refused by the API's reading (`read_configs`), by the worker's unpacking
    and by its loading, with one text that is the same whether the named outside file
    exists or not and that names nothing outside the archive."""
    from shared.huggingface import OUTSIDE
    from tests.worker.models.attacks import EXISTING, MISSING
    from worker.models.loading import build_model

    info = {"format": "huggingface", "input": {"channels": 3, "height": 32, "width": 32}}
    steps = (lambda data, out: read_configs(data), huggingface.unpack,   # the API's reading, the worker's two
             lambda data, out: build_model(info, data, scratch=str(tmp_path)))
    texts = set()
    for attack, variants in escapes.items():
        for n, data in enumerate(variants):
            for step in steps:
                with pytest.raises(ValueError) as e:
                    step(data, tmp_path / f"{attack}{n}")
                texts.add(str(e.value))
    assert texts == {OUTSIDE}
    assert "etc" not in OUTSIDE and EXISTING not in OUTSIDE and MISSING not in OUTSIDE
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]   # nothing was written either


def test_a_sharded_index_of_the_archives_own_shards_loads(tmp_path):
    """The check refuses only what leaves the archive: an index naming its own shard loads."""
    from tests.worker.models.attacks import SHARD, _sharded, resnet_parts
    from worker.models.loading import build_model

    config, weights, names = resnet_parts(tmp_path / "saved")
    data = _sharded(config, weights, names, SHARD)
    model = build_model({"format": "huggingface", "input": {"channels": 3, "height": 32, "width": 32}}, data)
    reference = _build("resnet").eval()
    x = _images(2)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), reference(pixel_values=x).logits.numpy(), rtol=1e-5, atol=1e-6)


def test_the_spec_fills_in_where_the_configs_are_silent(tmp_path):
    """A ResNet from save_pretrained has no preprocessor_config.json and no image_size: the
    spec's input, mean and std are used, the classes still come from id2label, and the
    model loads and runs at that size."""
    from shared.huggingface import spec_from_upload
    from tests.worker.models.attacks import resnet_parts
    from worker.models.loading import build_model

    config, weights, _ = resnet_parts(tmp_path)
    data = _zip_of({"config.json": config, "model.safetensors": weights})
    with pytest.raises(ValueError, match="neither preprocessor_config.json nor config.json gives the input size"):
        spec_from_upload(data, {})
    given = {"input": {"channels": 3, "height": 40, "width": 48}, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    spec = spec_from_upload(data, given)
    assert spec == {**given, "classes": CLASSES, "preprocess": {"resize": {"height": 40, "width": 48}, "crop": None,
                                                                "resample": "bilinear"}}
    model = build_model({**spec, "format": "huggingface"}, data)
    assert model.xaiq_input == (3, 40, 48)
    assert model(torch.zeros(2, 3, 40, 48)).shape == (2, len(CLASSES))
    with pytest.raises(ValueError, match="1 channels; config.json's num_channels is 3"):
        spec_from_upload(data, {**given, "input": {"channels": 1, "height": 40, "width": 48}})


def test_the_spec_wins_where_both_speak(zoo):
    """A ViT's preprocessor says 32x32, mean and std 0.5: the spec's mean, std and classes
    replace them; the same input size keeps the configs' resizing, another one resizes
    straight to the spec's size (also over ConvNeXt's shortest edge and crop)."""
    from shared.huggingface import spec_from_upload

    vit, convnext = zoo["vit"][1], zoo["convnext"][1]
    given = {"input": {"channels": 3, "height": 32, "width": 32}, "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1],
             "classes": ["w", "x", "y", "z"]}
    spec = spec_from_upload(vit, given)
    assert {k: spec[k] for k in given} == given
    assert spec["preprocess"] == spec_from_upload(vit, {})["preprocess"]
    assert spec_from_upload(vit, {"mean": [0.0] * 3})["std"] == pytest.approx([0.5] * 3)   # only the mean given
    kept = spec_from_upload(convnext, {"input": given["input"]})
    assert kept["preprocess"]["crop"] == {"height": 32, "width": 32} and "shortest_edge" in kept["preprocess"]["resize"]
    other = spec_from_upload(convnext, {"input": {"channels": 3, "height": 40, "width": 40}})
    assert other["input"] == {"channels": 3, "height": 40, "width": 40}
    assert other["preprocess"] == {"resize": {"height": 40, "width": 40}, "crop": None, "resample": "bicubic"}
    assert other["mean"] == pytest.approx([0.485, 0.456, 0.406])   # silent in the spec: the configs'
