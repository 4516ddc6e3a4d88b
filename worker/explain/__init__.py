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
from .filters import FilterExplanation, filter_explanation
from .gradcam import gradcam
from .integrated_gradients import integrated_gradients
from .lime import LimeExplanation, lime, lime_many
from .saliency import saliency
from .smoothgrad import smoothgrad

__all__ = ["DEFAULT", "Explanation", "RunContext", "FilterExplanation", "LimeExplanation", "filter_explanation", "gradcam",
           "integrated_gradients", "lime", "lime_many", "run", "saliency", "smoothgrad"]


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
