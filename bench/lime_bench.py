"""LIME: xaiq vs the `lime` package loop (the seed's pipeline) in the same run, on the same
briefly trained food-11 CNN, images, num_samples, seed and segmentation (skimage SLIC,
n_segments=100, compactness=1, sigma=1), at each precision (fp32, bf16, auto).

The `lime` loop is `LimeImageExplainer(random_state=seed).explain_instance(..., batch_size=10,
top_labels=5)` per image, its classifier the model under autocast for bf16; xaiq is
`lime_many` with the service's run context (prepared forwards, measured batch sizes, filed
before the timings as the service files them once per model). `auto` is compared with the
`lime` loop in fp32 (the seed's). Repeats are interleaved; medians of wall seconds (and of
the process's CPU seconds, steadier on a busy machine) and the ratios xaiq / lime.
Agreement: the top regions (`--top` superpixels by |weight|, the top label) of each run
against `lime` in fp32 with the same seed, beside `lime` against itself with another seed.

    .venv/bin/python bench/lime_bench.py            # 1 image x 1,000 samples, 3 repeats (~5 min, 2 cores)
    .venv/bin/python bench/lime_bench.py --short    # 1 image x 250 samples, 2 repeats (~1.5 min)
"""
from __future__ import annotations

from _common import args, cpu_timed, crop, median, seed_lime, trained_food11

import numpy as np
import torch

import worker.explain as E
from worker.explain.calibrate import MeasuredSizes, MemoryStore
from worker.explain.context import RunContext
from worker.explain.lime import slic_segments
from worker.explain.precision import DTYPES, NAMES, resolve
from worker.models.prepare import prepare


def weights(e, label: int) -> np.ndarray:
    """Superpixel weights of `label`, from a `lime` package explanation or xaiq's."""
    w = np.zeros(int(e.segments.max()) + 1)
    for s, v in e.local_exp[label]:
        w[s] = v
    return w


def overlap(a, b, label: int, k: int) -> float:
    """Share of the k regions with the largest |weight| that two explanations have in common."""
    top = lambda e: set(np.argsort(-np.abs(weights(e, label)))[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def main() -> None:
    a = args(__doc__, samples=1000, images=1, top=10, train_steps=40, budget=4.0)
    if a.quick:
        a.samples, a.repeats = min(a.samples, 250), min(a.repeats, 2)
    dev = a.device
    model = trained_food11(a.train_steps, dev)
    hwcs = [crop(k) for k in range(a.images)]
    x = torch.tensor(np.stack(hwcs)).permute(0, 3, 1, 2).to(dev)
    seg = lambda img: slic_segments(img, 100, 1, 1)  # noqa: E731  the same segmentation for both
    prepared = RunContext(prepared=prepare(model))
    run = RunContext(sizes=MeasuredSizes(MemoryStore(), "food11", budget_s=a.budget, run=prepared),
                     prepared=prepared.prepared)
    auto = NAMES[resolve("auto", dev)]
    print(f"# LIME on {dev} x{torch.get_num_threads()} threads; food-11 CNN trained {a.train_steps} steps; "
          f"{a.images} image(s) 128x128, {a.samples} samples, repeats={a.repeats}; 'auto' resolves to {auto} here")

    out: dict = {}

    def xaiq(p):
        def go():
            out["xaiq", p] = E.lime_many(model, x, None, num_samples=a.samples, seed=0, segmentation_fn=seg,
                                         precision=p, run=run)
        return go

    def package(p):
        def go():
            out["lime", p] = [seed_lime(model, h, a.samples, dev, seg, DTYPES[p], random_state=0) for h in hwcs]
        return go

    for p in ("fp32", "bf16", "auto"):   # warm-up: the batch sizes are measured and filed once, as in the service
        xaiq(p)()
    print("batch sizes filed:", dict(run.sizes.store))
    pairs = {"fp32": ("fp32", "fp32"), "bf16": ("bf16", "bf16"), "auto": ("auto", "fp32")}
    fns = {}
    for p, (ours, theirs) in pairs.items():
        fns[f"xaiq {p}"] = xaiq(ours)
        if f"lime {theirs}" not in fns:
            fns[f"lime {theirs}"] = package(theirs)
    times: dict[str, list] = {k: [] for k in fns}
    for r in range(a.repeats):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]   # alternate the order: drift hits both alike
        for k in order:
            times[k].append(cpu_timed(fns[k], dev))
    other = [seed_lime(model, h, a.samples, dev, seg, torch.float32, random_state=1) for h in hwcs]

    wall = {k: median([t[0] for t in v]) / a.images for k, v in times.items()}
    cpu = {k: median([t[1] for t in v]) / a.images for k, v in times.items()}
    print(f"\n{'run':10s} {'s/image wall':>13s} {'CPU s/image':>12s}   runs (wall s)")
    for k in fns:
        print(f"{k:10s} {wall[k]:13.2f} {cpu[k]:12.2f}   {[round(t[0], 2) for t in times[k]]}")
    print(f"\n{'precision':10s} {'scored in':10s} {'vs':10s} {'xaiq/lime wall':>15s} {'CPU':>6s} "
          f"{'top-' + str(a.top) + ' overlap with lime fp32':>28s}")
    ref = out["lime", "fp32"]
    floor = np.mean([overlap(r, o, r.top_labels[0], a.top) for r, o in zip(ref, other)])
    for p, (ours, theirs) in pairs.items():
        res = out["xaiq", ours]
        ov = np.mean([overlap(e, r, r.top_labels[0], a.top) for e, r in zip(res, ref)])
        print(f"{p:10s} {res[0].precision:10s} {'lime ' + theirs:10s} {wall['xaiq ' + p] / wall['lime ' + theirs]:15.2f} "
              f"{cpu['xaiq ' + p] / cpu['lime ' + theirs]:6.2f} {ov:28.2f}")
        print(f"{'':10s} guard: {res[0].guard}")
    lb = np.mean([overlap(e, r, r.top_labels[0], a.top) for e, r in zip(out["lime", "bf16"], ref)])
    print(f"{'lime bf16':10s} {'bf16':10s} {'':10s} {'':15s} {'':6s} {lb:28.2f}")
    print(f"{'lime seed1':10s} {'fp32':10s} {'':10s} {'':15s} {'':6s} {floor:28.2f}   (lime with itself, another seed)")


if __name__ == "__main__":
    main()
