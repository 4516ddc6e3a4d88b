"""Which model formats each method runs on, checked on models loaded as the worker loads them
(the fixtures of test_formats.py): the registry refuses exactly what a format's mechanics do
not allow, says which formats can and what to do, and what it refuses really cannot run
there (test_formats.py runs everything it allows, on every format, against the built-in
model's maps)."""
from __future__ import annotations

import numpy as np
import pytest

import worker.explain as E
from shared.formats import MODEL_FORMATS
from shared.methods import METHODS
from tests.worker.explain.test_formats import FORMATS, formats  # noqa: F401 - the fixture

REFUSED = {
    "builtin": set(),
    "huggingface": set(),
    "export": {"lrp"},
    "torchscript": {"filters", "gradcam", "guided_backprop", "deeplift", "lrp"},
}


@pytest.mark.slow
def test_each_format_refuses_exactly_what_it_cannot_run(formats):  # noqa: F811
    for fmt in FORMATS:
        manifest = formats[fmt][4]
        refused = {name for name, m in METHODS.items() if m.refusal(manifest)}
        assert refused == REFUSED[fmt], fmt
    assert not any(m.refusal({"format": "state_dict", "hooks": True}) for m in METHODS.values())
    assert set(MODEL_FORMATS) == {"safetensors", "state_dict", "huggingface", "export", "torchscript"}


def test_refusals_say_which_formats_can_and_what_to_do(formats):  # noqa: F811
    scripted, exported = formats["torchscript"][4], formats["export"][4]
    for name in ("gradcam", "filters", "guided_backprop", "deeplift"):
        with pytest.raises(ValueError) as e:
            METHODS[name].check(METHODS[name].example_params("cnn.4"), scripted)
        msg = str(e.value)
        assert "torchscript" in msg and "hook" in msg and "register the architecture" not in msg
        assert "Formats that can: safetensors, state_dict, huggingface, export. To use it, export the model" in msg
        assert "torch.export.export(model" in msg and "torch.export.save" in msg
        assert "this model takes: saliency, lime, smoothgrad, integrated_gradients, input_x_gradient, " \
               "gradient_shap, occlusion" in msg
    with pytest.raises(ValueError, match="Formats that can: safetensors, state_dict, huggingface. To use it, register a built-in") as e:
        METHODS["lrp"].check({}, exported)
    assert "export models are compiled graphs" in str(e.value)
    flat = {**exported, "hooks": False}   # a program whose module paths did not survive
    with pytest.raises(ValueError, match="module paths"):
        METHODS["guided_backprop"].check({}, flat)


def test_what_is_refused_cannot_run_there(formats):  # noqa: F811
    """TorchScript takes no hooks at all; an exported program has no torch.nn layers for LRP's
    rules (run anyway, it stops rather than return a map that is no LRP)."""
    scripted, x, y = formats["torchscript"][:3]
    for name in ("guided_backprop", "deeplift", "lrp"):
        with pytest.raises((RuntimeError, ValueError)):
            E.run(name, scripted, x, y)
    exported, x, y = formats["export"][:3]
    with pytest.raises(ValueError, match="no torch.nn convolution"):
        E.run("lrp", exported, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["guided_backprop", "deeplift"])
def test_hook_methods_on_an_exported_program_equal_the_module(formats, name):  # noqa: F811
    """Found by class name, the exported ReLUs and max pools take the same rules as the
    nn.Module's: the same maps, and not the plain gradients'."""
    model, x, y = formats["export"][:3]
    builtin = formats["builtin"][0]
    ours = E.run(name, model, x, y).maps
    np.testing.assert_allclose(ours, E.run(name, builtin, x, y).maps, rtol=1e-4, atol=1e-6)
    plain = E.run("input_x_gradient", model, x, y).maps
    assert not np.allclose(ours, plain, atol=1e-4 * np.abs(plain).max())
