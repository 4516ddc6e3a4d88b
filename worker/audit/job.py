"""Audits inside the service, as the compute process runs them (model passes only: the
broker reads and stores). Per unit: deletion/insertion and the quality metrics per method,
the methods' agreement, correctness and a partial (`audit_unit`); at the end: merge, sanity
check, shortcut candidates tested on the model, the report (`build_report`), with the images
they need fetched by index through the broker."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from worker import explain, images
from worker.audit import finalize, run_sanity, unit_partial
from worker.audit.causal import ShortcutParams
from worker.audit.aggregate import FAITH_KEYS
from worker.audit.faithfulness import choose_for_curves
from worker.audit.metrics import QualityParams, sensitivity_sample
from worker.audit.sanity import randomisable_layers
from worker.explain.batching import predicted
from worker.explain.context import RunContext

Fetch = Callable[[list[int]], tuple[np.ndarray, list[int]]]   # indices -> (pixels in [0, 1], indices read)


def _rounded(v: float) -> float | None:
    return round(float(v), 5) if np.isfinite(v) else None


def quality_fields(partial, j: int) -> dict:
    """One image's metric values and the methods' agreement, for its record (null: not computed)."""
    return {"quality": {m: {k: _rounded(v[j]) for k, v in partial.unit_quality[m].items()} for m in partial.methods},
            "agreement": [{"methods": list(pair), "spearman": _rounded(v[j])}
                          for pair, v in partial.unit_agreement.items()]}


def quality_inputs(lm, x: torch.Tensor, methods: dict, opts: dict, indices: list[int], n_images: int,
                   run: RunContext) -> dict:
    """unit_partial's arguments for the quality metrics: fp32 logits (in the run's batches), the
    methods as explainers for max-sensitivity, and which of the unit's images are in its sample."""
    model, device = lm.model, lm.device
    fp32 = run.forward(model, torch.float32)
    chunk = run.batch_size(model, x[0], "faithfulness", torch.float32)

    def logits(z):
        return torch.cat([fp32(c) for c in z.to(device).split(chunk)])

    def explainer(m):
        return lambda xs, ys: explain.run(m, model, xs, ys, methods[m], run).heatmaps

    sample = set(sensitivity_sample(n_images, opts.get("sensitivity_sample", 0)).tolist())
    return {"quality": QualityParams.from_options(opts), "logits": logits,
            "explainers": {m: explainer(m) for m in methods},
            "sensitive": np.array([i in sample for i in indices], bool)}


def audit_unit(lm, x: torch.Tensor, probs: torch.Tensor, heatmaps: dict[str, np.ndarray], truth: list[int],
               indices: list[int], opts: dict, methods: dict, n_images: int,
               run: RunContext) -> tuple[bytes, list[dict]]:
    """The audit's addition to a unit: deletion/insertion and the quality metrics per method,
    the methods' agreement, correctness, a partial (bytes) and per image its record's fields."""
    model, device = lm.model, lm.device
    with torch.inference_mode():   # the curves' passes at the audit's precision, guarded on their ends
        forward, dtype = choose_for_curves(model, opts.get("precision", "auto"), x[:16], run)
        partial = unit_partial(x, truth, indices, heatmaps, lambda z: forward(z.to(device)).softmax(1),
                               n_classes=len(lm.classes), steps=opts["faithfulness_steps"], seed=opts["seed"],
                               probs=probs, batch_size=run.batch_size(model, x[0], "faithfulness", dtype),
                               **quality_inputs(lm, x, methods, opts, indices, n_images, run))
    preds = partial.preds
    fields = [{
        "label": int(truth[j]), "label_class": lm.classes[truth[j]], "correct": bool(preds[j] == truth[j]),
        "faithfulness": {m: {k: round(float(partial.faith[m][j, c]), 5) for c, k in enumerate(FAITH_KEYS)}
                         for m in partial.methods},
        **quality_fields(partial, j),
    } for j in range(len(truth))]
    return partial.to_bytes(), fields


def sanity(lm, methods: dict, opts: dict, n_images: int, fetch: Fetch, run: RunContext
           ) -> tuple[list[dict], str | None]:
    """The weight-randomisation check on a sample, or why it was not run."""
    n = min(opts["sanity_sample"], n_images)
    if not n:
        return [], "not run: sanity_sample is 0"
    if not randomisable_layers(lm.model):
        return [], "not run: the model's layers cannot be re-initialised (no reset_parameters, e.g. TorchScript)"
    pixels, read = fetch(list(range(n)))
    if not read:
        return [], "not run: no readable image in the sample"
    x = torch.from_numpy(images.standardize(pixels, lm.info)).to(lm.device)
    y = predicted(lm.model, x, run=run)
    attributes = {m: (lambda model, xs, ys, m=m: explain.run(m, model, xs, ys, methods[m]).heatmaps)
                  for m in methods}
    try:
        return run_sanity(lm.model, x, y, attributes, seed=opts["seed"]), None
    except Exception as e:  # noqa: BLE001 - a model that cannot be copied or randomised: report it, keep the rest
        return [], f"not run: randomising the model failed ({type(e).__name__})"


def predictor(lm, run: RunContext) -> Callable[[np.ndarray], np.ndarray]:
    """pixels (n, C, H, W) in [0, 1] -> the model's probabilities (n, K), in the run's batches."""
    fwd = run.forward(lm.model)

    def predict(pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images.standardize(np.asarray(pixels, np.float32), lm.info)).to(lm.device)
        size = run.batch_size(lm.model, x[0], "predict")
        with torch.no_grad():
            return torch.cat([fwd(c).float().softmax(1).cpu() for c in x.split(size)]).numpy()
    return predict


def reader(fetch: Fetch, limit: int = 4096) -> Fetch:
    """fetch in asks of at most `limit` indices (the broker's limit per ask)."""
    def sample(indices: list[int]) -> tuple[np.ndarray, list[int]]:
        parts = [fetch(indices[i:i + limit]) for i in range(0, len(indices), limit)]
        parts = [(p, r) for p, r in parts if r]
        if not parts:
            return np.zeros((0,)), []
        return np.concatenate([p for p, _ in parts]), [i for _, r in parts for i in r]
    return sample


def build_report(lm, partials: list[bytes], meta: dict, opts: dict, methods: dict, n_images: int, fetch: Fetch,
                 run: RunContext) -> tuple[dict, str]:
    """Merge the partials, check the maps' sanity on a sample, find shortcut candidates and
    test them on the model (reading their images by index): (report.json, report.html)."""
    t0 = time.perf_counter()
    checks, why_not = sanity(lm, methods, opts, n_images, fetch, run)
    meta = {**meta, "methods": list(methods), "images": n_images, "options": opts}
    if why_not:
        meta["sanity"] = why_not
    params = ShortcutParams.from_options(opts) if opts.get("shortcuts", True) else None
    report, html = finalize(partials, class_names=lm.classes, sanity=checks, meta=meta, shortcuts=params,
                            predict=predictor(lm, run), sample=reader(fetch))
    report.setdefault("meta", {})["report_seconds"] = round(time.perf_counter() - t0, 2)
    return report, html
