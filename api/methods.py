"""/v1/methods: the registry of explanation methods (`shared.methods.METHODS`) as JSON, for
clients and pages that build a job's parameters: each method's summary, the JSON Schema
of its parameters and the model formats it runs on."""
from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, Field

from api.openapi import doc
from shared.methods import METHODS, Method

bp = Blueprint("methods", __name__, url_prefix="/v1/methods")


class MethodInfo(BaseModel):
    name: str
    summary: str
    parameters: dict[str, Any] = Field(description="JSON Schema of the method's parameters")
    formats: list[str] = Field(description="model formats it runs on")
    attribution: bool = Field(description="gives a per-pixel importance map (audits take only these)")
    uses_hooks: bool = Field(description="reads a layer through a hook: refused for a model whose `hooks` is false")
    layer_kind: Literal["any", "conv", "spatial"] = Field(
        description="what its `layer` parameter may name: any layer, a convolutional one (or tokens) "
                    "or one with feature maps")


class MethodList(BaseModel):
    methods: list[MethodInfo]


def describe(m: Method) -> dict:
    return {"name": m.name, "summary": m.summary, "parameters": m.params.model_json_schema(),
            "formats": m.formats,
            "attribution": m.attribution, "uses_hooks": m.uses_hooks, "layer_kind": m.layer_kind}


@bp.get("")
@doc(resp={"HTTP_200": MethodList}, tags=["methods"])
def list_methods():
    """The explanation methods: name, summary, JSON Schema of the parameters, model formats.
    A model exported with `torch.export` whose module paths did not survive (its `hooks` is
    false) also refuses the methods with `uses_hooks`."""
    return {"methods": [describe(m) for m in METHODS.values()]}
