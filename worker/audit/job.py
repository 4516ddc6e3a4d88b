"""Audits inside the service: the glue between a work unit, storage and the pure audit
modules. Per unit: faithfulness, quality metrics and a partial; at the end: merge, sanity check,
shortcuts, the report (report.json and report.html)."""
from __future__ import annotations

import time

import numpy as np
import torch

from shared.storage import Keys
from worker import explain, images, render
from worker.audit import finalize, run_sanity, unit_partial
from worker.audit.sanity import randomisable_layers
from worker.audit.aggregate import FAITH_KEYS
from worker.audit.faithfulness import choose_for_curves
from worker.audit.metrics import QualityParams, sensitivity_sample
from worker.context import WorkerContext
from worker.explain.batching import predicted
from worker.unit import Explained, read_batch


def _rounded(v: float) -> float | None:
    return round(float(v), 5) if np.isfinite(v) else None


def quality_fields(partial, j: int) -> dict:
    """One image's metric values and the methods' agreement, for its item.json (null: not computed)."""
    return {"quality": {m: {k: _rounded(v[j]) for k, v in partial.unit_quality[m].items()} for m in partial.methods},
            "agreement": [{"methods": list(pair), "spearman": _rounded(v[j])}
                          for pair, v in partial.unit_agreement.items()]}


def quality_inputs(manifest: dict, e: Explained) -> dict:
    """unit_partial's arguments for the quality metrics: fp32 logits (in the run's batches), the
    methods as explainers for max-sensitivity, and which of the unit's images are in its sample."""
    opts, model, device = manifest["options"], e.model.model, e.model.device
    fp32 = e.run.forward(model, torch.float32)
    chunk = e.run.batch_size(model, e.inputs[0], "faithfulness", torch.float32)

    def logits(x):
        return torch.cat([fp32(c) for c in x.to(device).split(chunk)])

    def explainer(m):
        return lambda xs, ys: explain.run(m, model, xs, ys, manifest["methods"][m], e.run).heatmaps

    sample = set(sensitivity_sample(len(manifest["inputs"]), opts.get("sensitivity_sample", 0)).tolist())
    return {"quality": QualityParams.from_options(opts), "logits": logits,
            "explainers": {m: explainer(m) for m in e.results},
            "sensitive": np.array([i in sample for i in e.batch.indices], bool)}


def on_batch(manifest: dict, keys: Keys, job: str, unit: int):
    """The audit's addition to a unit: deletion/insertion and the quality metrics per method,
    the methods' agreement, correctness, a partial."""
    opts = manifest["options"]

    def add(e: Explained):
        truth = [manifest["truth"][i] for i in e.batch.indices]
        heatmaps = {m: r.heatmaps for m, r in e.results.items()}
        model, device = e.model.model, e.model.device
        with torch.inference_mode():   # the curves' passes at the audit's precision, guarded on their ends
            forward, dtype = choose_for_curves(model, opts.get("precision", "auto"), e.inputs[:16], e.run)
            partial = unit_partial(e.inputs, truth, e.batch.indices, heatmaps,
                                   lambda x: forward(x.to(device)).softmax(1), n_classes=len(e.model.classes),
                                   steps=opts["faithfulness_steps"], seed=opts["seed"], probs=e.probabilities,
                                   batch_size=e.run.batch_size(model, e.inputs[0], "faithfulness", dtype),
                                   **quality_inputs(manifest, e))
        preds = partial.preds
        fields = [{
            "label": int(truth[j]), "label_class": e.model.classes[truth[j]], "correct": bool(preds[j] == truth[j]),
            "faithfulness": {m: {k: round(float(partial.faith[m][j, c]), 5) for c, k in enumerate(FAITH_KEYS)}
                             for m in partial.methods},
            **quality_fields(partial, j),
        } for j in range(len(truth))]
        return [(keys.audit_partial(job, unit), partial.to_bytes())], fields

    return add


def sanity(ctx: WorkerContext, manifest: dict, lm) -> tuple[list[dict], str | None]:
    """The weight-randomisation check on a sample, or why it was not run."""
    n = min(manifest["options"]["sanity_sample"], len(manifest["inputs"]))
    if not n:
        return [], "not run: sanity_sample is 0"
    if not randomisable_layers(lm.model):
        return [], "not run: the model's layers cannot be re-initialised (no reset_parameters, e.g. TorchScript)"
    batch = read_batch(ctx, manifest, lm.info, 0, n)
    if not batch.indices:
        return [], "not run: no readable image in the sample"
    x = torch.from_numpy(images.standardize(batch.pixels, lm.info)).to(lm.device)
    y = predicted(lm.model, x, run=lm.run())
    attributes = {m: (lambda model, xs, ys, m=m: explain.run(m, model, xs, ys, manifest["methods"][m]).heatmaps)
                  for m in manifest["methods"]}
    try:
        return run_sanity(lm.model, x, y, attributes, seed=manifest["options"]["seed"]), None
    except Exception as e:  # noqa: BLE001 - a model that cannot be copied or randomised: report it, keep the rest
        return [], f"not run: randomising the model failed ({type(e).__name__})"


def write_report(ctx: WorkerContext, tenant: str, job: str) -> dict:
    """Merge the partials, check the maps' sanity on a sample, find shortcuts, store the report."""
    t0 = time.perf_counter()
    st, keys = ctx.storage, Keys(tenant)
    manifest = ctx.manifest(tenant, job)
    lm = ctx.model(manifest)
    partials = (st.get(k) for k in sorted(st.list(keys.audit_partials(job))))
    checks, why_not = sanity(ctx, manifest, lm)

    def examples(indices: list[int]) -> dict[int, np.ndarray]:
        out = {}
        for i in indices:
            pixels, _ = images.decode(st.get(manifest["inputs"][i]["key"]), lm.info, ctx.settings.max_image_pixels)
            out[i] = render.input_pictures(pixels[None])[0]
        return out

    meta = {"audit": job, "model": manifest["model"], "model_version": manifest.get("model_version"),
            "methods": list(manifest["methods"]), "images": len(manifest["inputs"]),
            "options": manifest["options"], "name": manifest.get("name")}
    if why_not:
        meta["sanity"] = why_not
    report, html = finalize(partials, class_names=lm.classes, sanity=checks, examples=examples, meta=meta,
                            shortcuts=manifest["options"]["shortcuts"])
    report.setdefault("meta", {})["report_seconds"] = round(time.perf_counter() - t0, 2)
    st.put_json(keys.report(job, "json"), report)
    st.put(keys.report(job, "html"), html.encode(), "text/html; charset=utf-8")
    return report
