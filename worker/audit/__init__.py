"""Dataset audits: faithfulness (deletion/insertion), explanation-quality metrics and the
methods' agreement, sanity checks (MPRT), shortcut detection, streaming aggregation and
the report. Pure numpy/torch, no I/O; the service's glue is `worker.audit.job`, the report
schema REPORT.md.

Per work unit (~32 images):
    partial = unit_partial(images, labels, indices, heatmaps, predict, n_classes=K)
    storage.put(key, partial.to_bytes())
Final task:
    sanity = run_sanity(model, sample_images, sample_labels, {"saliency": attribute_fn, ...})
    report, html = finalize(storage blobs..., class_names=names, sanity=sanity,
                            predict=probabilities_of_pixels, sample=read_pixels_by_index)
`finalize` merges the partials one by one (bytes are decoded lazily, so a generator
of downloads keeps one serialised partial in memory at a time). Shortcuts: every method's
maps propose regions (`shortcuts`), each is tested on the model (`causal`).
"""
from __future__ import annotations

__all__ = ["Partial", "ProposalParams", "QualityParams", "ShortcutParams", "cascading_randomisation",
           "deletion_insertion", "finalize", "find_shortcuts", "merge", "propose", "run_sanity", "select", "summarise",
           "unit_partial"]

from typing import Callable, Iterable

import numpy as np
import torch

from . import report as report_mod
from .aggregate import Partial, merge, summarise
from .faithfulness import deletion_insertion
from .metrics import QualityParams, unit_quality
from .sanity import cascading_randomisation
from . import causal
from .causal import ShortcutParams
from .shortcuts import ProposalParams, propose, select


def unit_partial(images, labels, indices, heatmaps: dict[str, np.ndarray], predict: Callable, *,
                 n_classes: int, faithfulness: bool = True, steps: int = 16, seed: int = 0,
                 batch_size: int = 512, map_size: int = 32, thumb_size: int = 16, probs=None,
                 quality: QualityParams = QualityParams(), logits: Callable | None = None,
                 explainers: dict[str, Callable] | None = None, sensitive=None) -> Partial:
    """One unit: forward pass, deletion/insertion per method (target = predicted class),
    normalised/downsampled maps, the quality metrics and the methods' agreement
    (`metrics.unit_quality`: faithfulness correlation if `logits(x) -> logits` is given,
    max-sensitivity for the images of the bool mask `sensitive` with `explainers` method ->
    explain(x, y) -> (B, H, W) maps). images (N, C, H, W) model input; heatmaps method ->
    (N, H, W); predict(x) -> probabilities. The random seeds are derived from
    (seed, first index), so a redelivered unit gives the same numbers. `probs`: the
    images' probabilities if the caller has them (saves a forward pass)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if probs is None:
        with torch.no_grad():
            probs = torch.cat([torch.as_tensor(predict(b)).float().cpu() for b in x.split(batch_size)])
    probs = np.asarray(torch.as_tensor(probs).float().cpu())
    preds = probs.argmax(1)
    unit_seed = int(np.random.SeedSequence([seed, int(np.min(indices))]).generate_state(1)[0])
    faith = None
    if faithfulness:
        faith = {m: deletion_insertion(x, h, predict, preds, steps=steps, seed=unit_seed, batch_size=batch_size,
                                       return_curves=True)
                 for m, h in heatmaps.items()}
    scores, agree = unit_quality(x, heatmaps, preds, params=quality, seed=unit_seed, logits=logits,
                                 explainers=explainers, sensitive=sensitive, batch_size=batch_size)
    return Partial.from_batch(indices, labels, probs, heatmaps, n_classes=n_classes, faithfulness=faith,
                              map_size=map_size, thumb_size=thumb_size, quality=scores, agreement=agree)


def run_sanity(model: torch.nn.Module, images, labels, attributes: dict[str, Callable], **kw) -> list[dict]:
    """Cascading randomisation for each method; attributes: name -> attribute(model, x, y) -> (N, H, W)."""
    return [cascading_randomisation(model, images, labels, fn, method=name, **kw) for name, fn in attributes.items()]


def find_shortcuts(merged: Partial, predict: Callable, sample: Callable, *, class_names: list[str] | None = None,
                   params: ShortcutParams = ShortcutParams()) -> tuple[list[dict], dict, list[dict]]:
    """Candidates from every method's maps (`shortcuts.propose`/`select`), tested on the
    model (`causal.run_tests`): (flags, the report's `shortcuts` section, evidence images
    per flag). predict(pixels) -> probabilities; sample(indices) -> (pixels (n, C, H, W) in
    [0, 1], indices read) reads up to `params.images` of each candidate's images and a
    pool of `params.pool` others."""
    maps = {m: merged.thumbs[m].astype(np.float32) for m in merged.methods}
    chosen = select(propose(maps, merged.labels, merged.indices, input_size=merged.input_size,
                            params=ProposalParams(seed=params.seed)), params.candidates)
    rng = np.random.default_rng(params.seed)
    for cand in chosen:
        idx = cand["image_indices"]
        if len(idx) > params.images:
            cand["image_indices"] = sorted(int(i) for i in rng.choice(idx, params.images, replace=False))
    pool = rng.choice(merged.indices, min(params.pool, len(merged.indices)), replace=False)
    wanted = sorted({int(i) for c in chosen for i in c["image_indices"]} | {int(i) for i in pool})
    pixels, read = sample(wanted) if chosen else (np.zeros((0,)), [])
    by_index = dict(zip(merged.indices.tolist(), merged.labels.tolist()))
    flags, near, evidence, summary = causal.run_tests(
        predict, chosen, dict(zip(read, pixels)), {i: by_index[i] for i in read}, params, class_names)
    return flags, {"run": True, **summary, "near_misses": near}, evidence


def finalize(partials: Iterable[Partial | bytes], *, class_names: list[str] | None = None,
             sanity: list[dict] | None = None, meta: dict | None = None,
             shortcuts: ShortcutParams | None = ShortcutParams(), predict: Callable | None = None,
             sample: Callable | None = None) -> tuple[dict, str]:
    """Merge, summarise, find and test shortcut candidates, build report.json (dict) and
    report.html (str). `shortcuts` None: not searched; the tests need `predict` (pixels in
    [0, 1] -> probabilities) and `sample` (see `find_shortcuts`)."""
    merged = merge(partials)
    summary = summarise(merged, class_names)
    flags, section, evidence = [], {"run": False, "why": "turned off (shortcuts: false)"}, []
    if shortcuts is not None and (predict is None or sample is None):
        section["why"] = "no model to test candidates on"
    elif shortcuts is not None:
        flags, section, evidence = find_shortcuts(merged, predict, sample, class_names=summary["classes"],
                                                  params=shortcuts)
    rep = report_mod.build_report(summary, flags, sanity or [], meta=meta, shortcuts=section)
    return rep, report_mod.render_html(rep, evidence)
