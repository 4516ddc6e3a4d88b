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
                            examples=load(example_indices_for(...)))
`finalize` merges the partials one by one (bytes are decoded lazily, so a generator
of downloads keeps one serialised partial in memory at a time).
"""
from __future__ import annotations

__all__ = ["Partial", "QualityParams", "ShortcutParams", "cascading_randomisation", "deletion_insertion",
           "detect_shortcuts", "finalize", "find_shortcuts", "merge", "run_sanity", "summarise", "unit_partial"]

from typing import Callable, Iterable

import numpy as np
import torch

from . import report as report_mod
from .aggregate import Partial, merge, summarise
from .faithfulness import deletion_insertion
from .metrics import QualityParams, unit_quality
from .sanity import cascading_randomisation
from .shortcuts import ShortcutParams, detect_shortcuts


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


def find_shortcuts(merged: Partial, *, class_names: list[str] | None = None,
                   params: ShortcutParams = ShortcutParams()) -> list[dict]:
    """Shortcut flags of every method of a merged partial."""
    flags = []
    for m in merged.methods:
        flags += detect_shortcuts(merged.thumbs[m].astype(np.float32), merged.labels, merged.indices,
                                  input_size=merged.input_size, params=params, method=m, class_names=class_names)
    return flags


def finalize(partials: Iterable[Partial | bytes], *, class_names: list[str] | None = None,
             sanity: list[dict] | None = None, examples: dict[int, np.ndarray] | Callable | None = None,
             shortcut_params: ShortcutParams = ShortcutParams(), meta: dict | None = None,
             shortcuts: bool = True) -> tuple[dict, str]:
    """Merge, summarise, detect shortcuts, build report.json (dict) and report.html (str).
    examples: index -> image, or a callable(list of indices) -> that dict, called with
    `report.example_indices(flags)` (load only the thumbnails the page shows)."""
    merged = merge(partials)
    summary = summarise(merged, class_names)
    flags = find_shortcuts(merged, class_names=summary["classes"], params=shortcut_params) if shortcuts else []
    rep = report_mod.build_report(summary, flags, sanity or [], meta=meta)
    if callable(examples):
        examples = examples(report_mod.example_indices(flags))
    return rep, report_mod.render_html(rep, examples)
