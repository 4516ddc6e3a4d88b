"""The registry's checks at submit, without torch: parameter errors that name the method, the
parameter and what it takes; what a model's format allows, with advice that a user can
follow; filter indices checked against the layer's output shape; occlusion windows against
the input; costs from the model's input size."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.methods import METHODS, occlusion_positions
from shared.schemas import AuditSpec, JobSpec, validate_methods

DIGITS = {"name": "digits", "format": "safetensors", "hooks": True, "input": {"channels": 1, "height": 32, "width": 32},
          "layers": [{"path": "cnn", "type": "Sequential", "out_channels": None, "conv": False, "shape": [64, 4, 4]},
                     {"path": "cnn.4", "type": "Conv2d", "out_channels": 32, "conv": True, "shape": [32, 16, 16]},
                     {"path": "fc.0", "type": "Linear", "out_channels": 128, "conv": False, "shape": [128]}]}
VIT = {"name": "vit", "format": "huggingface", "hooks": True, "input": {"channels": 3, "height": 32, "width": 32},
       "layers": [{"path": "vit.layers.1", "type": "ViTLayer", "out_channels": None, "conv": True, "tokens": True,
                   "shape": [17, 32]}]}
SCRIPTED = {"name": "scripted", "format": "torchscript", "hooks": False, "layers": []}


def test_an_unknown_parameter_names_the_method_the_closest_and_all_valid_ones():
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate({"model": "m", "methods": {"saliency": {}, "lime": {"num_sample": 100}}})
    (err,) = e.value.errors()
    assert err["loc"] == ("methods", "lime", "num_sample")
    assert "lime has no parameter 'num_sample'; did you mean 'num_samples'?" in err["msg"]
    assert "its parameters: num_samples, n_segments, compactness" in err["msg"] and "precision" in err["msg"]
    with pytest.raises(ValidationError, match="saliency has no parameter 'bogus'; it takes no parameters"):
        validate_methods({"saliency": {"bogus": 1}})
    with pytest.raises(ValidationError) as e:   # nothing close: no guess, still the list
        validate_methods({"occlusion": {"xyz": 1}})
    assert "did you mean" not in str(e.value) and "its parameters: window, stride, baseline, precision" in str(e.value)
    with pytest.raises(ValidationError) as e:   # audits check their methods the same way
        AuditSpec.model_validate({"model": "m", "dataset": "d", "methods": {"lrp": {"rules": "epsilon"}}})
    assert "did you mean 'rule'" in str(e.value)


def test_other_parameter_errors_are_located_under_the_method():
    for methods, loc, words in [({"lime": {"num_samples": -3}}, ("methods", "lime", "num_samples"), "greater than"),
                                ({"lrp": {"rule": "alpha"}}, ("methods", "lrp", "rule"), "'alpha2beta1'"),
                                ({"occlusion": {"window": 4, "stride": 8}}, ("methods", "occlusion"), "stride 8")]:
        with pytest.raises(ValidationError) as e:
            JobSpec.model_validate({"model": "m", "methods": methods})
        (err,) = e.value.errors()
        assert err["loc"] == loc and words in err["msg"] and "Value error" not in err["msg"], err


def test_hook_methods_on_torchscript_advise_torch_export():
    for name in ("gradcam", "filters", "guided_backprop", "deeplift"):
        with pytest.raises(ValueError) as e:
            METHODS[name].check(METHODS[name].example_params("cnn.4"), SCRIPTED)
        msg = str(e.value)
        assert msg.startswith(f"methods.{name}: ") and "register the architecture" not in msg
        assert "torchscript models take none" in msg and "torch.export.export(model, (x,)" in msg
    with pytest.raises(ValueError, match="export models are compiled graphs") as e:
        METHODS["lrp"].check({}, {**DIGITS, "format": "export"})
    assert "safetensors, state_dict, huggingface." in str(e.value)
    for name in ("input_x_gradient", "gradient_shap", "occlusion"):
        METHODS[name].check({**METHODS[name].example_params(""), "window": 12}
                            if name == "occlusion" else {}, {**SCRIPTED, "input": DIGITS["input"]})


def test_filter_indices_are_checked_against_the_layer_output_shape():
    filters = METHODS["filters"]
    with pytest.raises(ValueError, match="1000 is out of range; layer 'cnn' has 64 filters"):
        filters.check({"layer": "cnn", "filters": [1000]}, DIGITS)     # a container: out_channels unknown
    filters.check({"layer": "cnn", "filters": [0, 63]}, DIGITS)
    with pytest.raises(ValueError, match="layer 'cnn.4' has 32 filters"):
        filters.check({"layer": "cnn.4", "filters": [32]}, DIGITS)
    with pytest.raises(ValueError, match="layer 'vit.layers.1' has 32 filters"):
        filters.check({"layer": "vit.layers.1", "filters": [40]}, VIT)  # tokens: the last dim
    filters.check({"layer": "vit.layers.1", "filters": [31]}, VIT)


def test_occlusion_windows_fit_the_input_and_cost_a_forward_per_position():
    occ = METHODS["occlusion"]
    with pytest.raises(ValueError, match="window: 40 pixels do not fit the model's 32x32 input; at most 32"):
        occ.check({"window": 40, "stride": 8}, DIGITS)
    occ.check({"window": 32, "stride": 8}, DIGITS)
    p = {"window": 12, "stride": 8}
    assert occlusion_positions(p, DIGITS) == 4 * 4                       # offsets 0, 8, 16, 24 per side
    assert occlusion_positions({"window": 16, "stride": 8}, {"input": {"height": 224, "width": 200}}) == 27 * 24
    assert occ.cost(p, 10, 1, DIGITS) == 10 * (1 + 16)


def test_every_cost_is_a_positive_count_of_passes():
    for name, m in METHODS.items():
        p = m.params.model_validate(m.example_params("cnn.4")).model_dump()
        assert m.cost(p, 8, 2, DIGITS) > 0, name
    assert METHODS["deeplift"].cost({}, 5, 1, DIGITS) == 30
    assert [METHODS["lrp"].cost({"rule": r}, 1, 1, DIGITS) for r in ("epsilon", "zplus", "alpha2beta1")] == [4, 7, 13]
