"""GET /v1/methods: the registry as JSON. Its parameter schemas accept what the API accepts
and refuse what it refuses (checked with an independent JSON Schema validator, jsonschema-rs), and the
formats it lists are the ones a job is accepted for."""
from __future__ import annotations

import jsonschema_rs
import pytest

from shared.methods import METHODS


@pytest.fixture()
def listed(http) -> dict:
    r = http.get("/v1/methods")
    assert r.status_code == 200
    return {m["name"]: m for m in r.get_json()["methods"]}


def test_every_registered_method_is_listed_with_its_summary(listed):
    assert list(listed) == list(METHODS)
    for name, m in listed.items():
        assert m["summary"] == METHODS[name].summary and m["summary"]
        assert m["attribution"] == METHODS[name].attribution
        assert m["layer_kind"] in ("any", "conv", "spatial")
    assert listed["lime"]["parameters"]["properties"]["num_samples"]["default"] == 1000
    assert listed["filters"]["parameters"]["required"] == ["layer"]


def test_the_schemas_agree_with_the_api(listed):
    """Each method's example parameters pass its served schema; an unknown parameter, a
    value out of range or of the wrong type fails both the schema and the API's model."""
    for name, m in listed.items():
        schema = m["parameters"]
        example = METHODS[name].example_params("cnn.4")
        assert jsonschema_rs.is_valid(schema, example), (name, example)
        METHODS[name].params.model_validate(example)
        bad = {**example, "no_such_parameter": 1}
        assert not jsonschema_rs.is_valid(schema, bad), name
        with pytest.raises(ValueError):
            METHODS[name].params.model_validate(bad)
    for name, param, value in (("lime", "num_samples", 5), ("lime", "num_samples", "many"),
                               ("integrated_gradients", "baseline", "ones"), ("smoothgrad", "noise", 2)):
        assert not jsonschema_rs.is_valid(listed[name]["parameters"], {param: value}), (name, param, value)
        with pytest.raises(ValueError):
            METHODS[name].params.model_validate({param: value})


def test_formats_are_those_a_job_is_accepted_for(listed):
    layer = {"path": "cnn.4", "type": "Conv2d", "conv": True, "out_channels": 8, "shape": [8, 16, 16]}
    for name, m in listed.items():
        assert {"safetensors", "state_dict", "huggingface"} <= set(m["formats"])   # the nn.Module formats: all
        for fmt in ("safetensors", "state_dict", "torchscript", "huggingface", "export"):
            model = {"name": "m", "format": fmt, "hooks": fmt != "torchscript", "layers": [layer]}
            try:
                METHODS[name].check(METHODS[name].example_params("cnn.4"), model)
                accepted = True
            except ValueError:
                accepted = False
            assert accepted == (fmt in m["formats"]), (name, fmt)
    assert "torchscript" not in listed["gradcam"]["formats"] and "torchscript" in listed["saliency"]["formats"]


def test_methods_need_a_key(app):
    r = app.test_client().get("/v1/methods")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == 401
