"""LIME per image: xaiq's `lime` vs the seed's pipeline (the `lime` package, batch_size=10)
and vs the floor (the same number of forward passes at the best batch size + one SLIC).

Targets: xaiq within 1.10x of the floor; >= 20x faster than the seed on a GPU.
    .venv/bin/python bench/lime_bench.py [--quick] [--device cuda]
"""
from __future__ import annotations

import contextlib
import io

from _common import args, food11, header, median, photo, timed

import numpy as np
import torch

import worker.explain as E
from worker.explain.lime import slic_segments


def main() -> None:
    a = args(__doc__, samples=1000, size=128, seed_repeats=1)
    if a.quick:
        a.samples = min(a.samples, 250)
    dev = a.device
    model = food11(dev, a.size)
    hwc = photo(a.size)
    x = torch.tensor(hwc).permute(2, 0, 1).to(dev)
    seg = lambda img: slic_segments(img, 100, 1, 1)  # noqa: E731  the same segmentation for all
    header("lime", a, model="food11-cnn (random weights)", size=a.size, samples=a.samples)

    def predict(inp):   # the seed's classifier_fn (it returned logits; lime's cost is the same)
        with torch.no_grad():
            return model(torch.FloatTensor(inp).permute(0, 3, 1, 2).to(dev)).detach().cpu().numpy()

    def seed_pipeline():
        from lime.lime_image import LimeImageExplainer
        with contextlib.redirect_stderr(io.StringIO()):
            LimeImageExplainer().explain_instance(hwc.astype(np.double), predict, segmentation_fn=seg,
                                                  num_samples=a.samples, batch_size=10)

    def best_batch():
        speed = {}
        with torch.inference_mode():
            for fmt in [torch.contiguous_format, torch.channels_last]:
                for b in [1, 2, 4, 8, 16, 32, 64, 128, 256]:
                    if b > a.samples:
                        break
                    xb = x[None].repeat(b, 1, 1, 1).contiguous(memory_format=fmt)
                    model(xb)
                    n = max(1, 48 // b) if dev == "cpu" else max(2, 2048 // b)
                    speed[b, fmt] = n * b / timed(lambda: [model(xb) for _ in range(n)], dev)
        return max(speed, key=speed.get), speed

    (bs, fmt), speed = best_batch()
    print("forward images/s by (batch size, NHWC):",
          {(k[0], k[1] == torch.channels_last): round(v, 1) for k, v in speed.items()},
          "-> floor batch", bs, fmt)

    def floor():
        seg(hwc)
        xb = x[None].repeat(bs, 1, 1, 1).contiguous(memory_format=fmt)
        with torch.inference_mode():
            outs = [model(xb[:min(bs, a.samples - i)]).softmax(1) for i in range(0, a.samples, bs)]
            torch.cat(outs).cpu()

    def ours():
        E.lime(model, x, num_samples=a.samples, seed=0, segmentation_fn=seg)

    ours()   # warm up (and size the batches)
    t = {"floor": [], "xaiq": [], "seed": []}
    for r in range(a.repeats):
        t["floor"].append(timed(floor, dev))
        t["xaiq"].append(timed(ours, dev))
        if r < a.seed_repeats:
            t["seed"].append(timed(seed_pipeline, dev))
    m = {k: median(v) for k, v in t.items()}
    for k, v in t.items():
        print(f"{k:6s} s/image: median {m[k]:.3f}  runs {[round(s, 3) for s in v]}")
    print(f"xaiq / floor = {m['xaiq'] / m['floor']:.3f}   (target <= 1.10)")
    print(f"seed / xaiq  = {m['seed'] / m['xaiq']:.2f}x  (target >= 20x on a GPU)")


if __name__ == "__main__":
    main()
