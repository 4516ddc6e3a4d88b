"""The one list of explanation methods.

The API validates a job's `methods` against it (`Method.check`), the worker dispatches
from it (`worker.explain.<name>.explain`), the tests parametrize over it (with each
entry's `example` parameters) and the README's methods table is generated from it.

Adding a method touches two places: a module `worker/explain/<name>.py` with
`explain(model, images, labels, params, run) -> Explanation`, and one `Method` entry here
(its parameter schema, what it needs of a model format, its cost and small example
parameters). Then regenerate the README table (`python -m shared.methods`); the registry
tests fail until both exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.formats import MODEL_FORMATS, formats_with


SEED = Field(default=0, ge=0, lt=2**32, description="random seed (0 .. 2**32 - 1)")
Precision = Literal["auto", "fp32", "bf16", "fp16"]
FORWARD_PRECISION = Field(
    default="auto", description="of the forward-only passes: 'fp32', 'bf16' or 'fp16' runs as asked; 'auto' picks "
    "bf16/fp16 only where the device runs it fast (CUDA tensor cores, CPUs with AMX or AVX512-BF16) and the model's "
    "outputs in it agree with fp32 on a probe of the method's own inputs, else fp32. The guard's verdict is in each "
    "item's `precision_guard`")
GRADIENT_PRECISION = Field(
    default="fp32", description="of the forward passes under the gradients: fp32 unless asked ('auto' as for LIME)")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SaliencyParams(Params):
    """|d CrossEntropy / d input|, each image's map min-max normalised on its own."""


class FiltersParams(Params):
    """Activations of filters of one layer, and one picture that maximises each filter."""

    layer: str = Field(description="module path of the layer, e.g. 'cnn.15' (see GET /v1/models/{name})")
    filters: list[Annotated[int, Field(ge=0, lt=1 << 20)]] = Field(
        default=[0], min_length=1, max_length=64, description="filter (channel) indices")
    iterations: int = Field(default=100, ge=1, le=2000, description="gradient-ascent steps")
    lr: float = Field(default=1.0, gt=0, le=100, description="Adam learning rate")
    style: Literal["readable", "seed"] = Field(
        default="readable",
        description="'seed': start from the first image, plain Adam, no regulariser; "
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
        description="what the surrogate fits: the model's raw outputs (min_weight=0.05 is on "
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


class InputXGradientParams(Params):
    """Input times the gradient of log p(target) (Shrikumar et al. 2016)."""


class GuidedBackpropParams(Params):
    """Gradient of log p(target) with only positive gradients passed back through ReLUs (Springenberg et al. 2015)."""


class GradientShapParams(Params):
    """Expected gradient x (input - baseline) over random baselines and path points (Lundberg & Lee 2017)."""

    samples: int = Field(default=20, ge=1, le=500, description="baselines drawn (with path points) per image")
    baseline: Literal["noise", "zeros", "mean"] = Field(
        default="noise", description="the distribution drawn from: 'noise' (Gaussian images with the image's "
        "per-channel mean and std), 'zeros' or 'mean' (one flat image of its mean colour)")
    baselines: int = Field(default=10, ge=1, le=1000, description="size of the 'noise' distribution")
    noise: float = Field(default=0.0, ge=0, le=1, description="input noise std as a fraction of each image's range")
    seed: int = SEED
    precision: Precision = GRADIENT_PRECISION


class DeepLiftParams(Params):
    """DeepLIFT's rescale rule from a baseline, of the target's logit less the mean logit (Shrikumar et al. 2017)."""

    baseline: Literal["zeros", "mean"] = "zeros"


class OcclusionParams(Params):
    """Drop of log p(target) when a sliding square window is replaced by a baseline (Zeiler & Fergus 2014)."""

    window: int = Field(default=16, ge=1, le=4096, description="side of the square window, in input pixels")
    stride: int = Field(default=8, ge=1, le=4096, description="pixels between window positions (at most window)")
    baseline: Literal["zeros", "mean"] = "zeros"
    precision: Precision = FORWARD_PRECISION

    @model_validator(mode="after")
    def _covers(self):
        if self.stride > self.window:
            raise ValueError(f"stride {self.stride} is larger than window {self.window}: pixels between "
                             "windows would get no attribution")
        return self


class LrpParams(Params):
    """Layer-wise relevance propagation of the target's logit, rules by layer kind (Bach et al. 2015)."""

    rule: Literal["zplus", "epsilon", "alpha2beta1"] = Field(
        default="zplus", description="rule of the convolutions (linear layers take epsilon): 'zplus', 'epsilon', "
        "'alpha2beta1' (alpha=2, beta=1)")
    first_layer: Literal["flat", "rule"] = Field(
        default="flat", description="the first layer the image meets: 'flat' spreads relevance evenly over its "
        "receptive field (zplus + flat: zennit's EpsilonPlusFlat), 'rule' takes its kind's rule")
    epsilon: float = Field(default=1e-6, gt=0, le=1e3, description="stabiliser of the epsilon rule")


HOW = {   # what a method that needs a capability does with it, what a format without it is, what to do instead
    "hooks": ("needs forward hooks on the model's layers", "take none",
              ("export the model with torch.export (torch.export.export(model, (x,), dynamic_shapes=({0: "
               "torch.export.Dim('batch')},)), then torch.export.save) and register the .pt2 file")),
    "modules": ("changes the backward pass of the model's torch.nn modules through hooks",
                "are compiled graphs, not torch.nn modules",
                "register a built-in architecture's weights or a Hugging Face model"),
}
UNKNOWN_INPUT = (224, 224)   # (height, width) a cost assumes for a manifest without an input size


def input_size(model: dict) -> tuple[int, int]:
    size = model.get("input") or {}
    return int(size.get("height") or UNKNOWN_INPUT[0]), int(size.get("width") or UNKNOWN_INPUT[1])


def occlusion_positions(p: dict, model: dict) -> int:
    """Window positions per image (Captum's: ceil((side - window) / stride) + 1 per side)."""
    return math.prod(math.ceil(max(0, side - p["window"]) / p["stride"]) + 1 for side in input_size(model))


LRP_TERMS = {"epsilon": 1, "zplus": 2, "alpha2beta1": 4}   # layer evaluations a rule adds per conv/linear layer


def channels(layer: dict) -> int | None:
    """Filters readable at a layer: a feature map's channels (its output shape (C, h, w)), a token
    layer's width (the last dim), else what the module declares (`out_channels`)."""
    shape = layer.get("shape") or []
    if layer.get("tokens") and shape:
        return int(shape[-1])
    if len(shape) == 3:
        return int(shape[0])
    return layer.get("out_channels")


@dataclass(frozen=True)
class Method:
    name: str
    params: type[Params]
    attribution: bool          # yields a per-pixel importance map (used by audits)
    needs: tuple[str, ...] = ()   # capabilities of the model's format it needs (shared.formats: 'hooks', 'modules')
    layer_kind: str = "any"    # what `params.layer` may name: "any" layer, a "conv" layer, or a "spatial"
    #                            one (output (C, h, w) or tokens that fold into a grid)
    example: dict = field(default_factory=dict)  # small, fast parameters; "{layer}": a conv layer's path
    # forward passes (a backward counts as two) for (params, images, units, model manifest): the job's cost estimate
    cost: Callable[[dict, int, int, dict], float] = lambda p, images, units, model: 3 * images

    @property
    def module(self) -> str:
        return f"worker.explain.{self.name}"

    @property
    def summary(self) -> str:
        return (self.params.__doc__ or "").strip().splitlines()[0]

    @property
    def formats(self) -> list[str]:
        """The model formats whose mechanics allow it (what it needs, each format has)."""
        return [f.name for f in MODEL_FORMATS.values() if all(getattr(f, need) for need in self.needs)]

    @property
    def uses_hooks(self) -> bool:
        """Whether it registers hooks on the model's modules (it needs 'hooks' or 'modules')."""
        return bool(self.needs)

    def example_params(self, layer: str) -> dict:
        return {k: (layer if v == "{layer}" else v) for k, v in self.example.items()}

    def refusal(self, model: dict) -> str | None:
        """Why this model's format (its manifest) cannot run the method, or None."""
        fmt = model.get("format")
        for need in self.needs:
            if fmt in MODEL_FORMATS and not getattr(MODEL_FORMATS[fmt], need):
                does, lacks, advice = HOW[need]
                return (f"methods.{self.name}: {does}; {fmt} models {lacks}. Formats that can: "
                        f"{', '.join(formats_with(need))}. To use it, {advice}")
        if self.needs and not model.get("hooks", True):
            return (f"methods.{self.name}: {HOW[self.needs[0]][0]}, and no hook reaches this model's layers (a "
                    "program without module paths); export the nn.Module itself with torch.export.export so that "
                    "its module paths survive")
        return None

    def check(self, params: dict, model: dict) -> None:
        """Raise ValueError unless these (validated) parameters fit the model's manifest: its
        format has what the method needs, the layer exists and is of the right kind, filter
        indices are in range, an occlusion window fits the input."""
        refusal = self.refusal(model)
        if refusal:
            takes = [m.name for m in METHODS.values() if m.refusal(model) is None]
            raise ValueError(f"{refusal}; this model takes: {', '.join(takes)}")
        if "window" in params and model.get("input") and params["window"] > min(input_size(model)):
            h, w = input_size(model)
            raise ValueError(f"methods.{self.name}.window: {params['window']} pixels do not fit the model's "
                             f"{h}x{w} input; at most {min(h, w)}")
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
        width = channels(layer)
        for k in params.get("filters", []):
            if width is not None and not 0 <= k < width:
                raise ValueError(f"methods.{self.name}.filters: {k} is out of range; layer {path!r} has {width} filters")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("saliency", SaliencyParams, attribution=True),
    Method("filters", FiltersParams, attribution=False, needs=("hooks",), layer_kind="spatial",
           example={"layer": "{layer}", "filters": [0, 2, 5], "iterations": 3},
           cost=lambda p, images, units, model: images + units * 3 * p["iterations"] * len(p["filters"])),
    Method("lime", LimeParams, attribution=True, example={"num_samples": 60, "n_segments": 20, "seed": 3},
           cost=lambda p, images, units, model: images * p["num_samples"]),
    Method("smoothgrad", SmoothGradParams, attribution=True, example={"samples": 4, "seed": 1},
           cost=lambda p, images, units, model: 3 * images * p["samples"]),
    Method("integrated_gradients", IntegratedGradientsParams, attribution=True, example={"steps": 5},
           cost=lambda p, images, units, model: 3 * images * p["steps"]),
    Method("gradcam", GradCamParams, attribution=True, needs=("hooks",), layer_kind="conv",
           example={"layer": "{layer}"}),
    Method("input_x_gradient", InputXGradientParams, attribution=True),
    Method("guided_backprop", GuidedBackpropParams, attribution=True, needs=("hooks",)),
    Method("gradient_shap", GradientShapParams, attribution=True, example={"samples": 4, "baselines": 3, "seed": 2},
           cost=lambda p, images, units, model: 3 * images * p["samples"]),
    Method("deeplift", DeepLiftParams, attribution=True, needs=("hooks",),
           cost=lambda p, images, units, model: 6 * images),          # image and baseline: forward + backward
    Method("occlusion", OcclusionParams, attribution=True, example={"window": 12, "stride": 8},
           cost=lambda p, images, units, model: images * (1 + occlusion_positions(p, model))),
    Method("lrp", LrpParams, attribution=True, needs=("modules",), example={"rule": "alpha2beta1"},
           cost=lambda p, images, units, model: images * (1 + 3 * LRP_TERMS[p["rule"]])),
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
