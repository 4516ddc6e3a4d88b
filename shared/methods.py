"""The one list of explanation methods.

The API validates a job's `methods` against it (`Method.check`), the worker dispatches
from it (`worker.explain.<name>.explain`), the tests parametrize over it (with each
entry's `example` parameters) and the README's methods table is generated from it.

Adding a method touches two places: a module `worker/explain/<name>.py` with
`explain(model, images, labels, params) -> Explanation`, and one `Method` entry here
(its parameter schema, flags and small example parameters). Then regenerate the
README table (`python -m shared.methods`); the registry tests fail until both exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field


SEED = Field(default=0, ge=0, lt=2**32, description="random seed (0 .. 2**32 - 1)")
Precision = Literal["auto", "fp32", "bf16", "fp16"]
FORWARD_PRECISION = Field(
    default="auto", description="of the forward-only passes: 'auto' picks bf16/fp16 only where the device runs it "
    "fast (CUDA tensor cores, CPUs with AMX or AVX512-BF16), else fp32; a reduced one that disagrees with fp32 on "
    "the images themselves falls back to fp32")
GRADIENT_PRECISION = Field(
    default="fp32", description="of the forward passes under the gradients: fp32 unless asked ('auto' as for LIME)")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SaliencyParams(Params):
    """|d CrossEntropy / d input|, each image's map min-max normalised (as in the course exercise)."""


class FiltersParams(Params):
    """Activations of filters of one layer, and one picture that maximises each filter."""

    layer: str = Field(description="module path of the layer, e.g. 'cnn.15' (see GET /v1/models/{name})")
    filters: list[Annotated[int, Field(ge=0, lt=1 << 20)]] = Field(
        default=[0], min_length=1, max_length=64, description="filter (channel) indices")
    iterations: int = Field(default=100, ge=1, le=2000, description="gradient-ascent steps")
    lr: float = Field(default=1.0, gt=0, le=100, description="Adam learning rate")
    style: Literal["readable", "seed"] = Field(
        default="readable",
        description="'seed': start from the first image, plain Adam (the course exercise); "
        "'readable': start from noise with jitter and a smoothness penalty",
    )
    seed: int = SEED


class LimeParams(Params):
    """LIME on SLIC superpixels, the `lime` package's algorithm, batched on the device."""

    num_samples: int = Field(default=1000, ge=10, le=20000)
    n_segments: int = Field(default=100, ge=2, le=2000)
    compactness: float = Field(default=1.0, gt=0, le=1e6)
    sigma: float = Field(default=1.0, ge=0, le=1e3)
    num_features: int = Field(default=11, ge=1, le=100000, description="superpixels shown in the picture")
    min_weight: float = Field(default=0.05, ge=0, le=1e12, description="smallest |weight| shown in the picture")
    positive_only: bool = False
    seed: int = SEED
    outputs: Literal["logits", "probabilities"] = Field(
        default="logits",
        description="what the surrogate fits: the model's raw outputs (the course exercise's; min_weight=0.05 is on "
        "that scale) or softmax probabilities (the lime package's convention)",
    )
    precision: Precision = FORWARD_PRECISION


class SmoothGradParams(Params):
    """Mean |gradient| over noisy copies of the input (Smilkov et al. 2017)."""

    samples: int = Field(default=25, ge=1, le=500)
    noise: float = Field(default=0.15, ge=0, le=1, description="noise std as a fraction of each image's value range")
    seed: int = SEED
    precision: Precision = GRADIENT_PRECISION


class IntegratedGradientsParams(Params):
    """Path integral of gradients from a baseline to the input (Sundararajan et al. 2017)."""

    steps: int = Field(default=50, ge=2, le=1000)
    baseline: Literal["zeros", "mean"] = "zeros"
    precision: Precision = GRADIENT_PRECISION


class GradCamParams(Params):
    """Grad-CAM (Selvaraju et al. 2017) on a convolutional layer."""

    layer: str | None = Field(default=None, description="module path; default: the last Conv2d")


@dataclass(frozen=True)
class Method:
    name: str
    params: type[Params]
    attribution: bool          # yields a per-pixel importance map (used by audits)
    uses_hooks: bool = False   # reads a layer through a forward hook (needs a model that allows hooks)
    layer_kind: str = "any"    # what `params.layer` may name: "any" layer, a "conv" layer, or a "spatial"
    #                            one (output (C, h, w) or tokens that fold into a grid)
    example: dict = field(default_factory=dict)  # small, fast parameters; "{layer}": a conv layer's path
    # forward passes (a backward counts as two) for (params, images, units): the job's cost estimate
    cost: Callable[[dict, int, int], float] = lambda p, images, units: 3 * images

    @property
    def module(self) -> str:
        return f"worker.explain.{self.name}"

    @property
    def summary(self) -> str:
        return (self.params.__doc__ or "").strip().splitlines()[0]

    def example_params(self, layer: str) -> dict:
        return {k: (layer if v == "{layer}" else v) for k, v in self.example.items()}

    def check(self, params: dict, model: dict) -> None:
        """Raise ValueError unless these (validated) parameters fit the model's manifest:
        hooks allowed, the layer exists and is of the right kind, filter indices in range."""
        if self.uses_hooks and not model.get("hooks", True):
            raise ValueError(f"methods.{self.name}: reads a layer through a hook, which this model ({model['format']}) "
                             "does not allow; register the architecture with its weights instead")
        path = params.get("layer")
        if path is None:
            return
        layers = {layer["path"]: layer for layer in model.get("layers", [])}
        if path not in layers:
            convs = [p for p, layer in layers.items() if layer.get("conv")]
            raise ValueError(f"methods.{self.name}.layer: model {model['name']!r} has no layer {path!r}; "
                             f"convolutional layers: {', '.join(convs) or 'none'}")
        layer = layers[path]
        if self.layer_kind == "conv" and not (layer.get("conv") or layer.get("tokens")):
            raise ValueError(f"methods.{self.name}.layer: {path!r} is not a convolutional layer")
        shape = layer.get("shape")
        if self.layer_kind == "spatial" and shape is not None and len(shape) != 3 and not layer.get("tokens"):
            raise ValueError(f"methods.{self.name}.layer: {path!r} gives {len(shape)}-d outputs {shape}; "
                             "filters need a layer with feature maps (channels x height x width)")
        width = layers[path].get("out_channels")
        for k in params.get("filters", []):
            if width is not None and not 0 <= k < width:
                raise ValueError(f"methods.{self.name}.filters: {k} is out of range; layer {path!r} has {width} filters")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("saliency", SaliencyParams, attribution=True),
    Method("filters", FiltersParams, attribution=False, uses_hooks=True, layer_kind="spatial",
           example={"layer": "{layer}", "filters": [0, 2, 5], "iterations": 3},
           cost=lambda p, images, units: images + units * 3 * p["iterations"] * len(p["filters"])),
    Method("lime", LimeParams, attribution=True, example={"num_samples": 60, "n_segments": 20, "seed": 3},
           cost=lambda p, images, units: images * p["num_samples"]),
    Method("smoothgrad", SmoothGradParams, attribution=True, example={"samples": 4, "seed": 1},
           cost=lambda p, images, units: 3 * images * p["samples"]),
    Method("integrated_gradients", IntegratedGradientsParams, attribution=True, example={"steps": 5},
           cost=lambda p, images, units: 3 * images * p["steps"]),
    Method("gradcam", GradCamParams, attribution=True, uses_hooks=True, layer_kind="conv",
           example={"layer": "{layer}"}),
]}


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def markdown_table() -> str:
    """The README's table of methods and their parameters (defaults), from the registry."""
    rows = ["| method | what | parameters (default) |", "|---|---|---|"]
    for m in METHODS.values():
        params = []
        for pname, f in m.params.model_fields.items():
            default = "required" if f.is_required() else repr(f.default)
            choices = getattr(f.annotation, "__args__", ()) if "Literal" in str(f.annotation) else ()
            params.append(f"`{pname}` ({default}{' of ' + ', '.join(map(repr, choices)) if choices else ''})")
        rows.append(f"| `{m.name}` | {m.summary.replace('|', chr(92) + '|')} | {', '.join(params) or '—'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
