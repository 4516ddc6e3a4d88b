"""torch.export programs: the digits CNN and a tiny HF ViT exported with a dynamic batch,
saved to bytes and loaded back; every method gives the original module's results through
the unflattened module paths; programs that would run code while loading, or that hold a
forbidden operator, are refused before torch reads them."""
from __future__ import annotations

import io
import json
import types
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import worker.explain as E
from shared.methods import METHODS
from tests.zoo import digits_cnn
from tests.zoo import exported as export_program
from worker.models import exported
from worker.models.loading import build_model, layers
from worker.models.opcheck import ForbiddenOperator

torch.set_num_threads(2)
_save, _digits = export_program, digits_cnn


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, num_labels=4)).eval()
    vit.forward = types.MethodType(lambda self, x: type(self).forward(self, pixel_values=x).logits, vit)
    return vit


@pytest.fixture(scope="module")
def programs():
    """{name: (original module, saved program bytes, loaded module, a layer path)}."""
    out = {}
    for name, model, shape, layer in [("digits", _digits(), (1, 32, 32), "cnn.4"),
                                      ("vit", _vit(), (3, 32, 32), "vit.layers.1.layernorm_before")]:
        data = _save(model, torch.randn(2, *shape))
        info = {"format": "export", "input": dict(zip(("channels", "height", "width"), shape))}
        out[name] = (model, data, build_model(info, data), layer)
    return out


def _inputs(name, n=3):
    shape = (1, 32, 32) if name == "digits" else (3, 32, 32)
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 3, 0][:n])


@pytest.mark.slow
@pytest.mark.parametrize("program", ["digits", "vit"])
def test_loaded_program_keeps_paths_and_outputs(programs, program):
    original, _, model, layer = programs[program]
    x, _ = _inputs(program, 1)   # the program was exported with a batch of 2: any batch runs
    torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-6)
    paths = {p for p, _ in model.named_modules()}
    assert layer in paths and paths <= {p for p, _ in original.named_modules()}
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert model.xaiq_hooks and model.xaiq_input == tuple(x.shape[1:])
    ours = {entry["path"]: entry for entry in layers(model)}
    assert ours[layer]["conv"]
    if program == "digits":
        builtin = {entry["path"]: entry for entry in layers(original)}
        for p in builtin:   # types and widths as the built-in model lists them (the probe adds containers' widths)
            assert ours[p]["type"] == builtin[p]["type"] and ours[p]["conv"] >= builtin[p]["conv"], p
            assert builtin[p]["out_channels"] in (None, ours[p]["out_channels"]), p
    else:
        assert ours[layer]["tokens"] and ours[layer]["type"] == "LayerNorm"
    x, y = _inputs(program)   # Grad-CAM's default layer: the last Conv2d (cnn.8) or the ViT's last block's first norm
    default = "cnn.8" if program == "digits" else layer
    np.testing.assert_array_equal(E.gradcam(model, x, y), E.gradcam(model, x, y, layer=default))


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("program", ["digits", "vit"])
def test_every_method_equals_the_original(programs, program, name):
    original, _, model, layer = programs[program]
    if METHODS[name].refusal({"format": "export", "hooks": True}):
        pytest.skip("refused at submit for exported programs (tests/worker/explain/test_methods_formats.py)")
    x, y = _inputs(program)
    params = METHODS[name].example_params(layer)
    a = E.run(name, original, x, y, params)
    b = E.run(name, model, x, y, params)
    tol = 1e-5 if name == "saliency" else 1e-4
    np.testing.assert_allclose(b.maps, a.maps, rtol=tol, atol=tol * max(1.0, float(np.abs(a.maps).max())))
    np.testing.assert_allclose(b.pictures, a.pictures, atol=1e-4)
    for k in a.extras:
        np.testing.assert_allclose(b.extras[k], a.extras[k], rtol=1e-4, atol=1e-4)
    if name == "gradcam":   # the default layer too
        np.testing.assert_allclose(E.gradcam(model, x, y), E.gradcam(original, x, y), rtol=1e-4, atol=1e-6)


class EmptyLike(nn.Module):
    """Uses torch.empty_like: uninitialised memory, which opcheck refuses."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc((x + torch.empty_like(x).zero_()).flatten(1))


def test_a_forbidden_operator_is_refused():
    data = _save(EmptyLike().eval(), torch.randn(2, 1, 4, 4))
    with pytest.raises(ForbiddenOperator, match="empty_like"):
        exported.load(data)


def _edit(data: bytes, model_json=None, replace: dict | None = None, add: dict | None = None) -> bytes:
    """The archive with models/model.json edited, members replaced or added (names below the root)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    root = src.namelist()[0].split("/")[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            body, name = src.read(info), info.filename.split("/", 1)[1]
            if name == "models/model.json" and model_json:
                j = json.loads(body)
                model_json(j)
                body = json.dumps(j).encode()
            z.writestr(info.filename, (replace or {}).get(name, body))
        for name, body in (add or {}).items():
            z.writestr(f"{root}/{name}", body)
    return out.getvalue()


def _node(j, suffix):
    return next(n for n in j["graph_module"]["graph"]["nodes"] if n["target"].endswith(suffix))


class Marker:
    """Unpickling it creates a file: shows whether a pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_what_torch_would_execute_is_refused_first(programs, tmp_path, monkeypatch):
    _, data, _, _ = programs["digits"]
    marker = tmp_path / "ran"
    pickled = io.BytesIO()
    torch.save(Marker(marker), pickled)

    def sym(j):   # sympify is eval: this would open the marker while loading
        text = json.dumps(j).replace("integer=True)", f"integer=True) + 0*len(open('{marker}','w').name)", 1)
        j.clear()
        j.update(json.loads(text))

    def carriage_return(j):   # a stack trace line that would end a `#` comment in generated code
        _node(j, "relu.default")["metadata"]["stack_trace"] = 'File "a.py", line 1, in f\n  x\rimport os'

    def quote(j):   # a module path pasted into getattr(self, "...")
        node = _node(j, "relu.default")
        node["metadata"]["nn_module_stack"] = node["metadata"]["nn_module_stack"].replace("cnn.2", 'cnn.2")+("')

    def load_target(j):   # any attribute of torch can become a node target
        _node(j, "relu.default")["target"] = "torch.load"

    archive = zipfile.ZipFile(io.BytesIO(data))
    weights = json.loads(archive.read(next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))))
    next(iter(weights["config"].values()))["use_pickle"] = True
    cases = {
        "sympy expression": (_edit(data, sym), "symbolic shape"),
        "stack trace": (_edit(data, carriage_return), "control characters"),
        "quoted path": (_edit(data, quote), "quote"),
        "torch.load target": (_edit(data, load_target), "torch::load is not allowed"),
        "pickled sample inputs": (_edit(data, replace={"data/sample_inputs/model.pt": pickled.getvalue()}), "sample inputs"),
        "pickled weight": (_edit(data, replace={"data/weights/model_weights_config.json": json.dumps(weights).encode()}),
                           "pickled"),
        "legacy weights file": (_edit(data, add={"data/weights/model.pt": pickled.getvalue()}), "not a plain tensor"),
        "AOTInductor library": (_edit(data, add={"data/aotinductor/model/model.so": b"\x7fELF"}), "AOTInductor"),
        "a second program": (_edit(data, add={"models/other.json": b"{}"}), "not a plain tensor"),
        "an extra file named ..": (_edit(data, add={"extra/..": b"x"}), "leaves the archive"),
        "a ../ name": (_edit(data, add={"extra/../../x": b"x"}), "leaves the archive"),
    }
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("torch.export.load was reached"))
    for case, (bad, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            exported.load(bad)
        assert not marker.exists(), case


def test_the_sympy_payload_is_real(programs, tmp_path):
    """Without the checks, torch.export.load itself runs the sympy payload: the check guards a real hole."""
    _, data, _, _ = programs["digits"]
    marker = tmp_path / "ran"

    def sym(j):
        text = json.dumps(j).replace("integer=True)", f"integer=True) + 0*len(open('{marker}','w').name)", 1)
        j.clear()
        j.update(json.loads(text))

    torch.export.load(io.BytesIO(_edit(data, sym)))
    assert marker.exists()


def test_a_static_batch_is_refused_with_the_way_to_export():
    data = _save(_digits(), torch.randn(1, 1, 32, 32), dynamic=False)
    with pytest.raises(ValueError, match="dynamic_shapes"):
        exported.load(data)
    with pytest.raises(ValueError, match="not a torch.export.save file"):
        exported.load(b"PK\x05\x06" + b"\0" * 18)


@pytest.mark.slow
def test_without_module_paths_hook_methods_are_refused(programs):
    """A program without nn_module_stack metadata cannot be unflattened: it runs as one flat
    graph, the manifest says hooks=False, and the API refuses filters and gradcam."""
    from worker.explain.hooks import hooks_available

    original, data, _, _ = programs["digits"]

    def strip(j):
        for node in j["graph_module"]["graph"]["nodes"]:
            node["metadata"].pop("nn_module_stack", None)
        j["graph_module"]["module_call_graph"] = j["graph_module"]["module_call_graph"][:1]

    model = exported.load(_edit(data, strip))
    assert not hooks_available(model)
    manifest = {"name": "flat", "format": "export", "layers": layers(model), "hooks": hooks_available(model)}
    x, y = _inputs("digits")
    np.testing.assert_allclose(E.saliency(model, x, y), E.saliency(original, x, y), atol=1e-5)
    for method in METHODS.values():
        if method.uses_hooks:
            with pytest.raises(ValueError, match="hook"):
                method.check(method.example_params("cnn.4"), manifest)
        else:
            method.check(method.example_params("cnn.4"), manifest)
