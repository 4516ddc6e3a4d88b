"""Audits inside the service: the glue between a work unit, storage and the pure audit
modules. Per unit: faithfulness and a partial; at the end: merge, sanity check,
shortcuts, the report (report.json and report.html)."""
from __future__ import annotations

import time

import numpy as np
import torch

from shared.storage import keys
from worker import explain, images, render
from worker.audit import finalize, run_sanity, unit_partial
from worker.audit.aggregate import FAITH_KEYS
from worker.audit.faithfulness import predict_fn
from worker.context import WorkerContext
from worker.explain.batching import predicted
from worker.unit import Explained, read_batch


def on_batch(manifest: dict, job: str, unit: int):
    """The audit's addition to a unit: deletion/insertion per method, correctness, a partial."""
    opts = manifest["options"]

    def add(e: Explained):
        truth = [manifest["truth"][i] for i in e.batch.indices]
        heatmaps = {m: r.heatmaps for m, r in e.results.items()}
        partial = unit_partial(e.inputs, truth, e.batch.indices, heatmaps, predict_fn(e.model.model, e.model.device),
                               n_classes=len(e.model.classes), steps=opts["faithfulness_steps"], seed=opts["seed"],
                               probs=e.probabilities)
        preds = partial.preds
        fields = [{
            "label": int(truth[j]), "label_class": e.model.classes[truth[j]], "correct": bool(preds[j] == truth[j]),
            "faithfulness": {m: {k: round(float(partial.faith[m][j, c]), 5) for c, k in enumerate(FAITH_KEYS)}
                             for m in partial.methods},
        } for j in range(len(truth))]
        return [(keys.audit_partial(job, unit), partial.to_bytes())], fields

    return add


def write_report(ctx: WorkerContext, job: str) -> dict:
    """Merge the partials, check the maps' sanity on a sample, find shortcuts, store the report."""
    t0 = time.perf_counter()
    st = ctx.storage
    manifest = ctx.manifest(job)
    opts = manifest["options"]
    lm = ctx.model(manifest["model"])
    partials = (st.get(k) for k in sorted(st.list(keys.audit_partials(job))))

    sanity = []
    n = min(opts["sanity_sample"], len(manifest["inputs"]))
    if n:
        batch = read_batch(ctx, manifest, lm.info, 0, n)
        if batch.indices:
            x = torch.from_numpy(images.standardize(batch.pixels, lm.info)).to(lm.device)
            y = predicted(lm.model, x)
            attributes = {m: (lambda model, xs, ys, m=m: explain.run(m, model, xs, ys, manifest["methods"][m]).heatmaps)
                          for m in manifest["methods"]}
            sanity = run_sanity(lm.model, x, y, attributes, seed=opts["seed"])

    def examples(indices: list[int]) -> dict[int, np.ndarray]:
        out = {}
        for i in indices:
            pixels, _ = images.decode(st.get(manifest["inputs"][i]["key"]), lm.info, ctx.settings.max_image_pixels)
            out[i] = render.input_pictures(pixels[None])[0]
        return out

    meta = {"audit": job, "model": manifest["model"], "methods": list(manifest["methods"]),
            "images": len(manifest["inputs"]), "options": opts, "name": manifest.get("name")}
    report, html = finalize(partials, class_names=lm.classes, sanity=sanity, examples=examples, meta=meta,
                            shortcuts=opts["shortcuts"])
    report.setdefault("meta", {})["report_seconds"] = round(time.perf_counter() - t0, 2)
    st.put_json(keys.report(job, "json"), report)
    st.put(keys.report(job, "html"), html.encode(), "text/html; charset=utf-8")
    return report
