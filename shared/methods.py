"""The one list of explanation methods.

The API validates a job's `methods` against it, the worker dispatches from it
(`worker.explain.<module>.explain`) and the tests parametrize over it. Adding a
method = one module in `worker/explain/` plus one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SaliencyParams(Params):
    """|d CrossEntropy / d input|, each image's map min-max normalised (the seed's)."""


class FiltersParams(Params):
    """Activations of filters of one layer, and one picture that maximises each filter."""

    layer: str = Field(description="module path of the layer, e.g. 'cnn.15' (see GET /v1/models/{name})")
    filters: list[int] = Field(default=[0], min_length=1, max_length=64, description="filter (channel) indices")
    iterations: int = Field(default=100, ge=1, le=2000, description="gradient-ascent steps")
    lr: float = Field(default=1.0, gt=0, le=100, description="Adam learning rate")
    style: Literal["readable", "seed"] = Field(
        default="readable",
        description="'seed': start from the first image, plain Adam (the course exercise); "
        "'readable': start from noise with jitter and a smoothness penalty",
    )
    seed: int = Field(default=0, description="random seed of the 'readable' start and jitter")


class LimeParams(Params):
    """LIME on SLIC superpixels, the `lime` package's algorithm, batched on the device."""

    num_samples: int = Field(default=1000, ge=10, le=20000)
    n_segments: int = Field(default=100, ge=2, le=2000)
    compactness: float = Field(default=1.0, gt=0)
    sigma: float = Field(default=1.0, ge=0)
    num_features: int = Field(default=11, ge=1, description="superpixels shown in the picture")
    min_weight: float = Field(default=0.05, ge=0, description="smallest |weight| shown in the picture")
    positive_only: bool = False
    seed: int = Field(default=0, description="random seed of the perturbations")
    outputs: Literal["logits", "probabilities"] = Field(
        default="logits",
        description="what the surrogate fits: the model's raw outputs (the seed's; min_weight=0.05 is on "
        "that scale) or softmax probabilities (the lime package's convention)",
    )


class SmoothGradParams(Params):
    """Mean |gradient| over noisy copies of the input (Smilkov et al. 2017)."""

    samples: int = Field(default=25, ge=1, le=500)
    noise: float = Field(default=0.15, ge=0, le=1, description="noise std as a fraction of each image's value range")
    seed: int = 0


class IntegratedGradientsParams(Params):
    """Path integral of gradients from a baseline to the input (Sundararajan et al. 2017)."""

    steps: int = Field(default=50, ge=2, le=1000)
    baseline: Literal["zeros", "mean"] = "zeros"


class GradCamParams(Params):
    """Grad-CAM (Selvaraju et al. 2017) on a convolutional layer."""

    layer: str | None = Field(default=None, description="module path; default: the last Conv2d")


@dataclass(frozen=True)
class Method:
    name: str
    module: str            # worker.explain.<module>
    params: type[Params]
    attribution: bool      # yields a per-pixel importance map (used by audits)
    needs_layer: bool = False


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("saliency", "saliency", SaliencyParams, attribution=True),
    Method("filters", "filters", FiltersParams, attribution=False, needs_layer=True),
    Method("lime", "lime", LimeParams, attribution=True),
    Method("smoothgrad", "smoothgrad", SmoothGradParams, attribution=True),
    Method("integrated_gradients", "integrated_gradients", IntegratedGradientsParams, attribution=True),
    Method("gradcam", "gradcam", GradCamParams, attribution=True, needs_layer=True),
]}


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
