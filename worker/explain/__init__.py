"""Explanation methods for PyTorch image classifiers: pure torch, batched on the model's device.

Each method is a module here with a public function and `explain(model, images, labels,
params) -> Explanation`; `shared.methods` lists them. Usable in a notebook:

    from worker.explain import saliency, lime
    maps = saliency(model, images)            # (N,C,H,W) in [0, 1]
"""
from __future__ import annotations

import importlib

from .context import DEFAULT, RunContext
from .result import Explanation
from .deeplift import deeplift
from .filters import FilterExplanation, filter_explanation
from .gradcam import gradcam
from .gradient_shap import gradient_shap
from .guided_backprop import guided_backprop
from .input_x_gradient import input_x_gradient
from .integrated_gradients import integrated_gradients
from .lime import LimeExplanation, lime, lime_many
from .lrp import lrp
from .occlusion import occlusion
from .saliency import saliency
from .smoothgrad import smoothgrad

__all__ = ["DEFAULT", "Explanation", "RunContext", "FilterExplanation", "LimeExplanation", "deeplift",
           "filter_explanation", "gradcam", "gradient_shap", "guided_backprop", "input_x_gradient",
           "integrated_gradients", "lime", "lime_many", "lrp", "occlusion", "run", "saliency", "smoothgrad"]


def run(method_name: str, model, images, labels, params=None, context: RunContext = DEFAULT) -> Explanation:
    """Dispatch through the registry: `shared.methods.get(name)` -> worker.explain.<module>.explain.

    params: the method's pydantic parameter model, a dict of its fields, or None (defaults).
    labels: LongTensor (N,) of target classes (resolve them before; e.g. the predictions).
    context: how the batch runs (batch sizes, where it may stop, prepared forwards, side threads).
    """
    from shared.methods import get

    method = get(method_name)
    if not isinstance(params, method.params):
        params = method.params.model_validate(params or {})
    module = importlib.import_module(method.module)
    return module.explain(model, images, labels, params, context)
