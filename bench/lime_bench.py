"""LIME per image: xaiq's `lime` vs the seed's pipeline (the `lime` package, batch_size=10)
and vs the floor (the same number of forward passes at the best batch size + one SLIC).

Targets: xaiq within 1.10x of the floor; >= 20x faster than the seed on a GPU.
    .venv/bin/python bench/lime_bench.py [--quick] [--device cuda]
"""
from __future__ import annotations

from _common import args, food11, header, interleaved, median, photo, seed_lime, timed

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

    def seed_pipeline():
        seed_lime(model, hwc, a.samples, dev, seg)

    t = interleaved({"floor": floor, "xaiq": ours, "seed": seed_pipeline}, a.repeats, dev,
                    warm=("xaiq",), limits={"seed": a.seed_repeats})   # the warm-up sizes the batches
    m = {k: median(v) for k, v in t.items()}
    for k, v in t.items():
        print(f"{k:6s} s/image: median {m[k]:.3f}  runs {[round(s, 3) for s in v]}")
    print(f"xaiq / floor = {m['xaiq'] / m['floor']:.3f}   (target <= 1.10)")
    print(f"seed / xaiq  = {m['seed'] / m['xaiq']:.2f}x  (target >= 20x on a GPU)")


if __name__ == "__main__":
    main()
