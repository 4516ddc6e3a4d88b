"""Pydantic schemas of the HTTP API (the OpenAPI document is generated from them)."""
from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from shared import methods as registry
from shared.contracts import Progress, Skipped
from shared.formats import ARCHITECTURES, MODEL_FORMATS, architectures_text, reads_configs

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A path below the tenant's uploads: folders and a file name of letters, digits, '.', '_', '-'.
SEGMENT = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,128}$")
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Text = Annotated[str, Field(max_length=200)]


def valid_path(path: str, max_parts: int = 16) -> bool:
    """A relative path below the tenant's uploads: no '..', '.', empty parts, backslashes or NUL."""
    parts = path.split("/") if isinstance(path, str) and len(path) <= 1024 else []
    return 0 < len(parts) <= max_parts and all(SEGMENT.match(p) for p in parts)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def validate_methods(methods: dict[str, Any], attribution_only: bool = False) -> dict[str, dict]:
    """Each method name must be registered; its parameters are checked by its schema, and an
    error names the method, the parameter and what the method takes."""
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
        try:
            out[name] = method.params.model_validate({} if params is None else params).model_dump()
        except ValidationError as e:
            raise _about(name, method.params, e) from None
    return out


def _about(name: str, params: type[BaseModel], e: ValidationError) -> ValidationError:
    """The method's parameter errors, located under its name; an unknown parameter's message
    names the closest valid one and all of them."""
    valid = list(params.model_fields)
    errors = []
    for err in e.errors():
        loc = (name, *err["loc"])
        if err["type"] == "extra_forbidden":
            bad = str(err["loc"][-1])
            close = difflib.get_close_matches(bad, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            takes = f"its parameters: {', '.join(valid)}" if valid else "it takes no parameters"
            msg = f"{name} has no parameter {bad!r}; {hint}{takes}"
            errors.append({"type": PydanticCustomError("unknown_parameter", msg), "loc": loc, "input": err["input"]})
        else:
            msg = err["msg"].removeprefix("Value error, ")
            errors.append({"type": PydanticCustomError(err["type"], msg), "loc": loc, "input": err.get("input")})
    return ValidationError.from_exception_data(name, errors)


class JobSpec(Strict):
    """What to explain: a registered model, the methods and (optionally) the target classes."""

    model: str = Field(max_length=64, description="name of a registered model (GET /v1/models)")
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"saliency": {}},
        description="method name -> its parameters, e.g. {\"saliency\": {}, \"lime\": {\"num_samples\": 500}}",
    )
    labels: list[StrictInt | Text] | None = Field(
        default=None, description="target class per image (index or class name); default: the predicted class")
    inputs: list[str] | None = Field(
        default=None, description="JSON body only: paths of images stored with POST /v1/uploads, e.g. 'set1/a.png'")
    name: str | None = Field(default=None, max_length=200, description="a label for the job")
    unit_size: int | None = Field(default=None, ge=1, le=4096,
                                  description="images per work unit (default: sized by the job's cost)")
    pictures: bool = Field(default=True, description="write each image's pictures (false: raw maps only)")
    skip_invalid: bool = Field(default=False, description="leave unreadable or unaccepted files out (listed in the "
                                                          "answer's `skipped`) instead of refusing the job")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return validate_methods(v)


class Links(BaseModel):
    self: str
    results: str | None = None
    page: str | None = None
    report: str | None = None


class Cost(BaseModel):
    estimate: float = Field(description="estimated cost in GFLOP (forward passes of one image x the model's GFLOP)")
    limit: float = Field(description="the most one job may cost for this tenant")
    unit: Literal["GFLOP"] = "GFLOP"


class JobCreated(BaseModel):
    id: str
    status: JobStatusName
    links: Links
    cost: Cost
    skipped: list[Skipped] = Field(default=[], description="files left out (with `skip_invalid`), with why")


class JobView(BaseModel):
    id: str
    kind: Literal["job", "audit"] = "job"
    name: str | None = None
    status: JobStatusName
    model: str
    model_version: str | None = Field(default=None, description="the model version the job is bound to")
    methods: dict[str, dict[str, Any]]
    progress: Progress
    created: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    cost: float = Field(default=0.0, description="the job's estimated cost in GFLOP")
    links: Links


class JobList(BaseModel):
    jobs: list[JobView]


class Prediction(BaseModel):
    label: int
    class_name: str = Field(alias="class")
    probabilities: dict[str, float]

    model_config = ConfigDict(populate_by_name=True)


class MethodResult(BaseModel):
    png: str | None = Field(description="signed link of the picture (None when the job asked for no pictures)")
    npy: str = Field(description="signed link of the raw float32 map")


class ResultItem(BaseModel):
    index: int
    name: str
    status: Literal["done", "failed", "pending", "cancelled"]
    target: int | None = None
    prediction: Prediction | None = None
    methods: dict[str, MethodResult] = {}
    error: str | None = None
    timings: dict[str, float] = {}
    precision: dict[str, str] = Field(default={}, description="method -> the dtype its passes ran in "
                                      "('fp32', 'bf16', 'fp16'): the one asked for, or under 'auto' the guard's choice")
    precision_guard: dict[str, str] = Field(
        default={}, description="method -> the precision guard's verdict in words: how far the reduced dtype's "
        "outputs were from fp32 on a probe, whether that decided the precision ('auto') or not (an explicit one)")
    input: str | None = Field(default=None, description="signed link of the image as it was given")
    unit: int | None = None


class ResultsPage(BaseModel):
    job: str
    status: JobStatusName
    name: str | None = None
    model: str
    model_version: str
    methods: dict[str, dict[str, Any]]
    page: int
    per_page: int
    total: int
    items: list[ResultItem]
    extras: dict[str, str] = Field(default={}, description="per-unit pictures of this page's units (figures, filter "
                                                           "visualisations), `{unit}/{name}` -> signed link")
    next: str | None = None


class InputSize(Strict):
    channels: int = Field(ge=1, le=16)
    height: int = Field(ge=4, le=4096)
    width: int = Field(ge=4, le=4096)


class ModelSpec(Strict):
    """A model to register: a built-in architecture + weights, or a format that holds its
    network (`shared.formats.MODEL_FORMATS`). A format whose upload carries configs (a
    Hugging Face `save_pretrained` folder, zipped) may leave out `input`, `mean`, `std` and
    `classes`: its configs give them. Where both speak, the spec wins: its mean, std and
    classes replace the configs', and an `input` size other than the configs' (or one they do
    not give, as a ResNet saved without preprocessor_config.json) means inputs are resized
    straight to it; the configs fill in whatever the spec leaves out."""

    name: str = Field(description="letters, digits, '.', '_', '-'")
    architecture: str = Field(description=architectures_text())
    input: InputSize | None = None
    mean: list[float] | None = Field(default=None, max_length=16,
                                     description="per-channel normalisation mean, in [0, 1] pixel units")
    std: list[float] | None = Field(default=None, max_length=16, description="per-channel normalisation std")
    classes: list[Text] | None = Field(default=None, min_length=2, max_length=100000)

    @field_validator("architecture")
    @classmethod
    def _architecture(cls, v):
        if v not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {v!r}; take {architectures_text()}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not NAME.match(v):
            raise ValueError("name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _complete(self):
        if not reads_configs(self.architecture) and None in (self.input, self.mean, self.std, self.classes):
            raise ValueError("input, mean, std and classes are required (only the configs of "
                             f"{', '.join(f.name for f in MODEL_FORMATS.values() if f.configs)} uploads can give them)")
        c = self.input.channels if self.input else None
        if c is not None and self.mean is not None and self.std is not None and (len(self.mean) != c or len(self.std) != c):
            raise ValueError(f"mean and std need one value per input channel ({c})")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class Layer(BaseModel):
    path: str
    type: str
    out_channels: int | None = None
    conv: bool = False
    tokens: bool = False
    shape: list[int] | None = Field(default=None, description="output shape of one image, when known")


class Version(BaseModel):
    version: str
    status: Literal["registering", "ready", "invalid"]
    created: float
    error: str | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    architecture: str
    input: InputSize
    mean: list[float]
    std: list[float]
    classes: list[str]
    format: Literal[tuple(MODEL_FORMATS)] = Field(description="how the file is read (shared.formats)")
    status: Literal["registering", "ready", "invalid"]
    version: str = Field(description="content hash of the weights and the spec; jobs bind it at submit")
    versions: list[Version] = []
    shared: bool = Field(default=False, description="a built-in model every tenant may use (read-only)")
    layers: list[Layer] = []
    hooks: bool = Field(default=True, description="layers can be read through forward hooks (filters, gradcam)")
    parameters: int | None = None
    gflops: float | None = Field(default=None, description="GFLOP of one forward pass of one image")
    error: str | None = None
    created: float


class ModelList(BaseModel):
    models: list[ModelInfo]


class ModelDeleted(BaseModel):
    deleted: str = Field(description="the model's name")
    shared: bool = Field(description="it was a shared model")


SHORTCUT_POOL = 128      # other classes' images at most that a shortcut test pastes into


def shortcut_passes(candidates: int, images: int, controls: int, n_images: int, pool: int = SHORTCUT_POOL) -> int:
    """Forward passes of an audit's shortcut tests, at most (exact when every candidate has
    `images` images of its class and the pool enough of the others): each tested image once
    as it is, once changed at the region and once at each control region."""
    k, others = min(images, n_images), min(2 * images, pool, n_images)
    return candidates * (k + others) * (2 + controls)


class AuditOptions(Strict):
    faithfulness_steps: int = Field(default=16, ge=2, le=256, description="deletion/insertion steps")
    sanity_sample: int = Field(default=16, ge=0, le=512, description="images in the weight-randomisation check")
    shortcuts: bool = Field(default=True, description="find shortcuts: regions the methods' maps propose (per class "
                            "and cluster of maps), each tested on the model by removing and pasting it")
    shortcut_candidates: int = Field(default=12, ge=0, le=64, description="shortcuts: regions tested (the best of "
                                     "each class first, round robin)")
    shortcut_images: int = Field(default=64, ge=4, le=512, description="shortcuts: the class's images the region is "
                                 "removed from, per candidate; it is pasted into twice as many others (at most 128)")
    shortcut_controls: int = Field(default=4, ge=1, le=32, description="shortcuts: same-size control regions "
                                   "elsewhere per image, changed alike")
    shortcut_fill: Literal["swap", "blur", "mean"] = Field(
        default="swap", description="shortcuts: what replaces a removed region: the same region of an image of "
        "another class ('swap'), the image blurred ('blur') or its mean colour ('mean')")
    shortcut_alpha: float = Field(default=0.05, gt=0, lt=1, description="shortcuts: family-wise error rate; "
                                  "intervals at confidence 1 - alpha / tests (Bonferroni)")
    shortcut_min_effect: float = Field(default=0.25, ge=0, le=1, description="shortcuts: flag when pasting the region "
                                       "moves at least this share of other images to the class (interval's low end)")
    shortcut_min_removal: float = Field(default=0.5, ge=0, le=1, description="shortcuts: ... or when removing it "
                                        "loses the class in at least this share of its images (low end) ...")
    shortcut_min_transfer: float = Field(default=0.1, ge=0, le=1, description="shortcuts: ... and pasting it moves "
                                         "at least this share (low end); else a near-miss ('may be the object itself')")
    seed: int = registry.SEED
    precision: registry.Precision = Field(
        default="auto", description="of the deletion/insertion passes: 'auto' picks bf16/fp16 only where the device "
        "runs it fast (else fp32); a reduced one that disagrees with fp32 on the unit's images falls back to fp32")
    # explanation-quality metrics (worker/audit/metrics.py); `seed` seeds their random draws too
    correlation_runs: int = Field(
        default=32, ge=0, le=1000, description="faithfulness correlation (Bhatt et al. 2020): random feature subsets "
        "per image and method, each one fp32 forward pass (Quantus's default: 100); 0 turns it off, else at least 2")
    correlation_subset: int = Field(
        default=224, ge=1, le=1_000_000, description="faithfulness correlation: input features (channel-pixels) set "
        "to the baseline per subset; capped at the image's features - 1")
    correlation_baseline: Literal["black", "white", "mean", "zeros"] = Field(
        default="black", description="faithfulness correlation: what removed features become: each image's minimum "
        "('black'), maximum ('white'), mean, or 0 in model-input space ('zeros')")
    sensitivity_sample: int = Field(
        default=8, ge=0, le=512, description="max-sensitivity (Yeh et al. 2019): images it runs on, spread evenly over "
        "the dataset; each is explained again `sensitivity_perturbations` times by every method; 0 turns it off")
    sensitivity_perturbations: int = Field(default=10, ge=1, le=200,
                                           description="max-sensitivity: noisy copies per image (Quantus's default: 200)")
    sensitivity_radius: float = Field(
        default=0.2, gt=0, le=10, description="max-sensitivity: the noise is uniform in [-radius, radius] per input "
        "value, in model-input (standardised) units")

    @field_validator("correlation_runs")
    @classmethod
    def _correlation_runs(cls, v):
        if v == 1:
            raise ValueError("correlation_runs: a correlation needs at least 2 runs (or 0 to turn it off)")
        return v


class AuditSpec(Strict):
    """Audit a dataset: a folder of your uploads laid out `{folder}/{class}/{file}`, or an uploaded zip."""

    model: str = Field(max_length=64)
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"saliency": {}})
    dataset: str | None = Field(default=None, description="folder of your uploads, one sub-folder per class (JSON body)")
    options: AuditOptions = Field(default_factory=AuditOptions)
    name: str | None = Field(default=None, max_length=200)
    unit_size: int | None = Field(default=None, ge=1, le=4096)
    pictures: bool = Field(default=True, description="write each image's pictures (false: maps and metrics only, "
                                                     "which is all an audit's report needs)")
    skip_invalid: bool = Field(default=False, description="leave unreadable files out (listed in `skipped`)")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        return validate_methods(v, attribution_only=True)


class Uploaded(BaseModel):
    stored: list[str] = Field(description="paths to name in a job's `inputs` or an audit's `dataset`")


class UploadList(BaseModel):
    paths: list[str]
    next: str | None = None


class KeyRequest(Strict):
    tenant: str = Field(description="1-63 lowercase letters, digits, '_' or '-'")
    name: str = Field(default="", max_length=100, description="a note, e.g. who uses the key")


class KeyInfo(BaseModel):
    id: str
    tenant: str
    name: str = ""
    created: float
    key: str | None = Field(default=None, description="the key itself: shown once, when it is made")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class Limits(Strict):
    max_job_gflop: float | None = Field(default=None, gt=0)
    max_tenant_gflop: float | None = Field(default=None, gt=0)
    max_tenant_units: int | None = Field(default=None, ge=1)
    max_tenant_jobs: int | None = Field(default=None, ge=1)


class TenantInfo(BaseModel):
    tenant: str
    limits: dict[str, float]
    usage: dict[str, float]


class ListQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


class PurgeQuery(BaseModel):
    purge: Literal["0", "1", "true", "false"] = Field(default="0", description="1: delete an ended job's objects")


class ResultsQuery(BaseModel):
    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=50, ge=1, le=500)


class UploadsQuery(BaseModel):
    folder: str = Field(default="", max_length=1024, pattern=r"^[A-Za-z0-9._/-]*$",
                        description="list below this folder of your uploads")
    limit: int = Field(default=1000, ge=1, le=10000)


class PageQuery(BaseModel):
    page: int = Field(default=1, ge=1, le=100_000)


class RegisterQuery(BaseModel):
    replace: Literal["0", "1", "true", "false"] = Field(default="0", description="1: register a new version")
    shared: Literal["0", "1", "true", "false"] = Field(default="0", description="1: a shared model (admin key)")


class DeleteQuery(BaseModel):
    shared: Literal["0", "1", "true", "false"] = Field(
        default="0", description="1: the shared model of that name (admin key), also when you have one too")


class NextQuery(BaseModel):
    next: str = Field(default="/ui", max_length=2048, description="the page to open after signing in")


class ErrorBody(BaseModel):
    code: int
    message: str
    details: Any = None


class Error(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
