"""Pydantic schemas of the HTTP API (the OpenAPI document is generated from them)."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import methods as registry

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Names of the architectures the worker builds (worker/models/architectures.py; a test keeps them equal).
BUILTIN_ARCHITECTURES = ("food11-cnn", "digits-cnn")
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def validate_methods(methods: dict[str, Any], attribution_only: bool = False) -> dict[str, dict]:
    """Each method name must be registered; its parameters are checked by its schema."""
    if not methods:
        raise ValueError("methods: name at least one method, e.g. {\"saliency\": {}}")
    out = {}
    for name, params in methods.items():
        try:
            method = registry.get(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        if attribution_only and not method.attribution:
            raise ValueError(f"method {name!r} gives no attribution map; audits take: "
                             + ", ".join(m.name for m in registry.METHODS.values() if m.attribution))
        out[name] = method.params.model_validate(params or {}).model_dump()
    return out


class JobSpec(Strict):
    """What to explain: a registered model, the methods and (optionally) the target classes."""

    model: str = Field(description="name of a registered model (GET /v1/models)")
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"saliency": {}},
        description="method name -> its parameters, e.g. {\"saliency\": {}, \"lime\": {\"num_samples\": 500}}",
    )
    labels: list[int | str] | None = Field(
        default=None, description="target class per image (index or class name); default: the predicted class")
    inputs: list[str] | None = Field(
        default=None, description="JSON body only: keys of images already in the bucket")
    name: str | None = Field(default=None, max_length=200, description="a label for the job")
    unit_size: int | None = Field(default=None, ge=1, le=4096, description="images per work unit")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return validate_methods(v)


class Links(BaseModel):
    self: str
    results: str | None = None
    page: str | None = None
    report: str | None = None


class JobCreated(BaseModel):
    id: str
    status: JobStatusName
    links: Links


class Progress(BaseModel):
    total: int
    done: int
    failed: int


class JobStatus(BaseModel):
    id: str
    kind: Literal["job", "audit"] = "job"
    name: str | None = None
    status: JobStatusName
    model: str
    methods: dict[str, dict[str, Any]]
    progress: Progress
    created: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    links: Links


class JobList(BaseModel):
    jobs: list[JobStatus]


class Prediction(BaseModel):
    label: int
    class_name: str = Field(alias="class")
    probabilities: dict[str, float]

    model_config = ConfigDict(populate_by_name=True)


class MethodResult(BaseModel):
    png: str
    npy: str


class ResultItem(BaseModel):
    index: int
    name: str
    status: Literal["done", "failed", "pending"]
    target: int | None = None
    prediction: Prediction | None = None
    methods: dict[str, MethodResult] = {}
    error: str | None = None
    timings: dict[str, float] = {}


class ResultsPage(BaseModel):
    job: str
    status: JobStatusName
    page: int
    per_page: int
    total: int
    items: list[ResultItem]
    extras: dict[str, str] = Field(default={}, description="per-job pictures (filter visualizations, figures)")
    next: str | None = None


class InputSize(Strict):
    channels: int = Field(ge=1, le=16)
    height: int = Field(ge=4, le=4096)
    width: int = Field(ge=4, le=4096)


class ModelSpec(Strict):
    """A model to register: a built-in architecture + weights, or TorchScript."""

    name: str = Field(description="letters, digits, '.', '_', '-'")
    architecture: str = Field(description="built-in architecture (e.g. 'food11-cnn', 'digits-cnn') or 'torchscript'")
    input: InputSize
    mean: list[float] = Field(description="per-channel normalisation mean, in [0, 1] pixel units")
    std: list[float] = Field(description="per-channel normalisation std")
    classes: list[str] = Field(min_length=2)

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, v):
        if v not in (*BUILTIN_ARCHITECTURES, "torchscript"):
            raise ValueError(f"unknown architecture {v!r}; built in: {', '.join(BUILTIN_ARCHITECTURES)}, "
                             "or 'torchscript' for a scripted model")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not NAME.match(v):
            raise ValueError("name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _channels(self):
        c = self.input.channels
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean and std need one value per input channel ({c})")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class Layer(BaseModel):
    path: str
    type: str
    out_channels: int | None = None
    conv: bool = False


class ModelInfo(ModelSpec):
    model_config = ConfigDict(extra="ignore")

    format: Literal["safetensors", "state_dict", "torchscript"]
    status: Literal["registering", "ready", "invalid"]
    layers: list[Layer] = []
    hooks: bool = Field(default=True, description="layers can be read through forward hooks (filters, gradcam)")
    parameters: int | None = None
    error: str | None = None
    created: float


class ModelList(BaseModel):
    models: list[ModelInfo]


class AuditOptions(Strict):
    faithfulness_steps: int = Field(default=16, ge=2, le=256, description="deletion/insertion steps")
    sanity_sample: int = Field(default=16, ge=0, le=512, description="images in the weight-randomisation check")
    shortcuts: bool = Field(default=True, description="cluster each class's maps to find shortcuts")
    seed: int = 0


class AuditSpec(Strict):
    """Audit a dataset: a prefix of images in the bucket laid out `{prefix}/{class}/{file}`, or an uploaded zip."""

    model: str
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"saliency": {}})
    dataset: str | None = Field(default=None, description="bucket prefix, one folder per class (JSON body)")
    options: AuditOptions = AuditOptions()
    name: str | None = None
    unit_size: int | None = Field(default=None, ge=1, le=4096)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return validate_methods(v, attribution_only=True)


class ErrorBody(BaseModel):
    code: int
    message: str
    details: Any = None


class Error(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
